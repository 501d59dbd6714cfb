"""Time to 0.95 test accuracy on a GPU: native_28px.py, the strongest small recipe here, with 16
steps to a compiled call (one dispatch for 16 steps of a net whose GPU step is tiny; the same
steps and values as one to a call). results.json's `time_to_target` gives the training seconds
(compile and evaluation apart) to the first epoch at 0.95; benchmarks/gpu_session.sh's
`time_to_95` stage runs three seeds and reports their mean.
"""

import ml_collections

from vgg_flax import config_utils


def get_config() -> ml_collections.ConfigDict:
    config = config_utils.experiment_config(__file__, 'native_28px')
    config.train.steps_per_call = 16
    return config
