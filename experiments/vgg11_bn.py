"""The lesson's VGG-11 (ratio 4, 224 px) with BatchNorm after every convolution.

BatchNorm makes the plain-SGD recipe insensitive to the initialisation and allows a larger step;
compare with d2l_vgg11.py.
"""

import ml_collections

from vgg_flax import config_schema


def get_config() -> ml_collections.ConfigDict:
    config = config_schema.default_config()
    config.model.use_bn = True
    config.train.learning_rate = 0.1
    return config
