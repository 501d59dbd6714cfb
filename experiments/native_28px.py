"""best_32px.py's recipe on Fashion-MNIST's own 28 px, without resizing: three VGG blocks of two
convolutions each (28 -> 14 -> 7 -> 3), width ratio 4, 30 epochs (see the README's results).

Five blocks need 32 px at least; three fit the 28x28 images as they are, for about the same
forward FLOPs and a faster step (the README's results table). Everything else is best_32px.py's,
which it starts from.
"""

import ml_collections

from vgg_flax import config_utils


def get_config() -> ml_collections.ConfigDict:
    config = config_utils.experiment_config(__file__, 'best_32px')
    config.model.conv_arch = ((2, 64), (2, 128), (2, 256))
    config.data.image_size = 28
    config.train.num_epochs = 30
    return config
