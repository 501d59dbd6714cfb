"""What each part of best_32px.py's recipe adds, one at a time, at a budget a 2-core CPU runs in
about an hour (7 runs of 10 epochs at width ratio 8; the README's ablation table):

  python -m vgg_flax.sweep --config=experiments/ablation.py --workdir=runs/ablation \
      --config.data.source=idx --config.data.idx_dir=DIR

The base is the lesson's recipe at 32 px (plain SGD, lr 0.05, no BatchNorm, dropout 0.5) with a
head of 512 units (at 32 px a 4096-unit head costs more than the convolutions); every later point
keeps the earlier points' changes; BatchNorm comes in place of the head's dropout. The last point
is best_32px.py's recipe at ratio 8 and 10 epochs: the points take their values from it.
"""

import ml_collections

from vgg_flax import config_schema, config_utils, hyper

# Each part of the recipe, by the fields it sets to best_32px.py's values.
PARTS = (
    ('1-lesson', ()),
    ('2-batchnorm', ('model.use_bn', 'model.dropout_rate', 'train.learning_rate')),
    (
        '3-momentum-cosine',
        (
            'train.momentum',
            'train.nesterov',
            'train.weight_decay',
            'train.lr_schedule',
            'train.warmup_epochs',
        ),
    ),
    ('4-augmentation', ('augment.translate', 'augment.flip')),
    ('5-label-smoothing', ('train.label_smoothing',)),
    ('6-weight-average', ('train.ema_decay',)),
    ('7-test-time-flips', ('eval.tta',)),
)


def best_recipe() -> dict:
    return config_schema.flatten(
        config_schema.to_plain(config_utils.experiment_config(__file__, 'best_32px'))
    )


def get_config() -> ml_collections.ConfigDict:
    """The lesson's recipe at the best recipe's image size and head, at the ablation's budget."""
    best = best_recipe()
    config = config_schema.default_config()
    config.model.width_ratio = 8
    config.model.dense_features = best['model.dense_features']
    config.data.image_size = best['data.image_size']
    config.train.num_epochs = 10
    config.train.log_every_steps = best['train.log_every_steps']
    return config


def get_sweep() -> list[hyper.Point]:
    best = best_recipe()
    return hyper.cumulative(
        *((name, {field: best[field] for field in fields}) for name, fields in PARTS)
    )
