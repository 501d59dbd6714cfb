"""What each part of best_32px.py's recipe adds, one at a time, at a budget a 2-core CPU runs in
about an hour (7 runs of 10 epochs at width ratio 8):

  python -m vgg_flax.sweep --config=experiments/ablation.py --workdir=runs/ablation \
      --config.data.source=idx --config.data.idx_dir=DIR

The base is the lesson's recipe at 32 px (plain SGD, lr 0.05, no BatchNorm, dropout 0.5) with a
head of 512 units (at 32 px a 4096-unit head costs more than the convolutions); every later point
keeps the earlier points' changes; BatchNorm comes in place of the head's dropout. The last point
is best_32px.py's recipe at ratio 8 and 10 epochs (a test keeps the two in step).
"""

import ml_collections

from vgg_flax import config_utils, hyper


def get_config() -> ml_collections.ConfigDict:
    config = config_utils.default_config()
    config.model.width_ratio = 8
    config.model.dense_features = (512, 512)
    config.data.image_size = 32
    config.train.num_epochs = 10
    config.train.log_every_steps = 200
    return config


def get_sweep() -> list[hyper.Point]:
    return hyper.cumulative(
        ('1-lesson', {}),
        ('2-batchnorm', {'model.use_bn': True, 'model.dropout_rate': 0.0,
                         'train.learning_rate': 0.1}),
        ('3-momentum-cosine', {'train.momentum': 0.9, 'train.nesterov': True,
                               'train.weight_decay': 5e-4, 'train.lr_schedule': 'cosine',
                               'train.warmup_epochs': 1}),
        ('4-augmentation', {'augment.translate': 2, 'augment.flip': True}),
        ('5-label-smoothing', {'train.label_smoothing': 0.1}),
        ('6-weight-average', {'train.ema_decay': 0.999}),
        ('7-test-time-flips', {'eval.tta': True}),
    )
