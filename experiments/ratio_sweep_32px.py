"""What does dividing the widths cost? ratio_sweep.py's question at a size a 2-core CPU answers
in hours: quick.py's recipe (VGG-11 at 32 px, BatchNorm, Nesterov momentum, cosine decay,
5 epochs) at width ratios 1, 2, 4, 8 and 16, 3 seeds each, on all 60,000 training images.

  DATA=/path/to/fashion-mnist
  python -m vgg_flax.sweep --config=experiments/ratio_sweep_32px.py --workdir=runs/ratio_32px \
      --config.data.source=idx --config.data.idx_dir=$DATA

Separate runs, not populations: on a 2-core CPU a population trains no faster than its members
one after another (benchmarks/README.md).
"""

import ml_collections

from vgg_flax import config_utils, hyper


def get_config() -> ml_collections.ConfigDict:
    return config_utils.experiment_config(__file__, 'quick')


def get_sweep() -> list[hyper.Point]:
    return hyper.product(
        hyper.axis('model.width_ratio', [1, 2, 4, 8, 16]), hyper.axis('seed', range(3))
    )
