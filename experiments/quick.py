"""A first run on a laptop: VGG-11 at 32 px, width ratio 8, 5 epochs, minutes on a 2-core CPU
(the README's results table has its time and accuracy).

What differs from the lesson (d2l_vgg11.py), and why:
- 32 px images instead of 224, width ratio 8 instead of 4: about 200x fewer FLOPs per image;
- a head of 512 units instead of 4096: at 32 px the blocks end at 1x1, and a 4096-unit head
  would cost 9 times what all the convolutions cost;
- BatchNorm after every convolution, SGD with Nesterov momentum 0.9, lr 0.1 with cosine decay
  and weight decay 5e-4: the lesson's plain SGD needs many more epochs to get as far.
"""

import ml_collections

from vgg_flax import config_schema


def get_config() -> ml_collections.ConfigDict:
    config = config_schema.default_config()
    config.model.width_ratio = 8
    config.model.dense_features = (512, 512)
    config.model.use_bn = True
    config.data.image_size = 32
    config.train.num_epochs = 5
    config.train.learning_rate = 0.1
    config.train.momentum = 0.9
    config.train.nesterov = True
    config.train.weight_decay = 5e-4
    config.train.lr_schedule = 'cosine'
    config.train.log_every_steps = 200
    return config
