"""D2L's recipe: VGG-11 at width ratio 4 on Fashion-MNIST resized to 224, SGD lr 0.05, 5 epochs.

The package defaults are this recipe (Xavier init, batch 128, dropout 0.5, data from TFDS);
tests/test_experiments.py pins it. Offline, read the IDX files instead:
  --config.data.source=idx --config.data.idx_dir=DIR
"""

import ml_collections

from vgg_flax import config_schema


def get_config() -> ml_collections.ConfigDict:
    return config_schema.default_config()
