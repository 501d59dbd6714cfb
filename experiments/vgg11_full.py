"""VGG-11 at full width (ratio 1): the network of the paper, on the lesson's data and SGD recipe.

About 16x the conv FLOPs of d2l_vgg11.py; a GPU job.
"""

import ml_collections

from vgg_flax import config_schema


def get_config() -> ml_collections.ConfigDict:
    config = config_schema.default_config()
    config.model.width_ratio = 1
    return config
