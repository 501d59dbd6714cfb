"""The search for experiments/best.py: native_28px.py's recipe trained longer or wider, each
point trained on the first 55,000 training images and compared by its accuracy on the last 5,000
(config.data.validation_examples), never by the test set's (times in the README's search table):

  python -m vgg_flax.sweep --config=experiments/best_search.py --workdir=runs/best_search \
      --config.data.source=idx --config.data.idx_dir=DIR

The baseline is native_28px.py itself (30 epochs); the others spend about twice its time on
more epochs, on 1.5x the channels, or on 60 epochs with random erasing against the overfitting
that 60 epochs show: at Zhong et al.'s Fashion-MNIST setting (probability 0.5), and at 0.2,
between that and none.
"""

import ml_collections

from vgg_flax import config_utils, hyper

WIDE = ((2, 96), (2, 192), (2, 384))  # 1.5x native_28px.py's channels: 2.2x its FLOPs.


def get_config() -> ml_collections.ConfigDict:
    config = config_utils.experiment_config(__file__, 'native_28px')
    config.data.validation_examples = 5000
    return config


def get_sweep() -> list[hyper.Point]:
    return [
        hyper.named('60-epochs', {'train.num_epochs': 60}),
        hyper.named('wide-36-epochs', {'model.conv_arch': WIDE, 'train.num_epochs': 36}),
        hyper.named('30-epochs', {}),
        hyper.named('60-epochs-erasing', {'train.num_epochs': 60, 'augment.erase_prob': 0.5}),
        hyper.named('60-epochs-erasing-0.2', {'train.num_epochs': 60, 'augment.erase_prob': 0.2}),
    ]
