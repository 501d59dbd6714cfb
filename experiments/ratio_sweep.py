"""What does width buy? The lesson's recipe at width ratios 1, 2, 4, 8 and 16, 3 seeds each.

  python -m vgg_flax.sweep --config=experiments/ratio_sweep.py --workdir=runs/ratio

Each point is a full run of d2l_vgg11.py's recipe with `model.width_ratio` and `seed` set; the
report gives each ratio's mean test accuracy with its spread over the seeds (a gap smaller than
the confidence intervals is not a finding) against parameters, FLOPs, step memory and throughput.
"""

import ml_collections

from vgg_flax import config_schema, hyper


def get_config() -> ml_collections.ConfigDict:
    return config_schema.default_config()


def get_sweep() -> list[hyper.Point]:
    return hyper.product(
        hyper.axis('model.width_ratio', [1, 2, 4, 8, 16]), hyper.axis('seed', range(3))
    )
