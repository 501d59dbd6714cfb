"""The lesson's network family sized for a first run on a CPU: 32 px images, width ratio 8.

Same VGG-11 blocks, head and SGD recipe as d2l_vgg11.py; minutes on a laptop instead of hours.
"""

import ml_collections

from vgg_flax import config_utils


def get_config() -> ml_collections.ConfigDict:
    config = config_utils.default_config()
    config.model.width_ratio = 8
    config.data.image_size = 32
    config.train.num_epochs = 3
    return config
