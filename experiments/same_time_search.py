"""best.py's wall time spent another way, chosen on the validation split as best_search.py chose
best.py: each point trains on the first 55,000 training images and is compared by its accuracy
on the last 5,000, never by the test set's:

  python -m vgg_flax.sweep --config=experiments/same_time_search.py --workdir=runs/same_time \
      --config.data.source=idx --config.data.idx_dir=DIR

On a 2-core CPU the step of best.py's network runs about 1.18x as many images a second at batch
64 as at 128 (measured in benchmarks/README.md), so in best.py's time it trains 70 epochs
instead of 60. The batch-64 points keep what an epoch does to the weights:
half the learning rate (the linear scaling rule, so weight decay acts per epoch as before) and a
weight average over as many epochs (0.9995 a step at twice the steps). One point keeps lr 0.1
instead, to see whether the smaller batch wants the larger steps. The last point is best.py itself
on the same machine, the one to beat.

Test-time views need no training: each point's checkpoint is evaluated on the same validation set
with its images shifted by up to N pixels (config.eval.tta_translate) as well as mirrored,

  python -m vgg_flax.evaluate --workdir=runs/same_time/POINT --split=validation --tta_translate=N

and the point and views of the highest validation accuracy are the recipe.
"""

import ml_collections

from vgg_flax import config_utils, hyper

SMALL_BATCH = {'train.batch_size': 64, 'train.ema_decay': 0.9995, 'train.num_epochs': 70}


def get_config() -> ml_collections.ConfigDict:
    config = config_utils.experiment_config(__file__, 'best')
    config.data.validation_examples = 5000
    return config


def get_sweep() -> list[hyper.Point]:
    return [
        hyper.named('batch-64-70-epochs', {**SMALL_BATCH, 'train.learning_rate': 0.05}),
        hyper.named('batch-64-70-epochs-lr-0.1', SMALL_BATCH),
        hyper.named('best', {}),
    ]
