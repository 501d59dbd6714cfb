"""Records of a run: a population's values become their mean with each member's beside them, and
the time to a target accuracy counts training only."""

from __future__ import annotations

import numpy as np

from vgg_flax import records


def test_a_population_record_is_the_mean_with_each_members_values():
    record = records.to_record({'step': 3, 'test_accuracy': np.array([0.5, 0.7])})
    assert record['step'] == 3 and record['test_accuracy'] == 0.6
    assert record['members'] == [{'test_accuracy': 0.5}, {'test_accuracy': 0.7}]


def test_time_to_accuracy_sums_training_up_to_the_first_epoch_at_the_target():
    history = [
        {'epoch': e, 'test_accuracy': a, 'train_seconds': 2.0, 'epoch_seconds': 2.5}
        for e, a in ((1, 0.90), (2, 0.951), (3, 0.94), (4, 0.96))
    ]
    assert records.time_to_accuracy(history) == {
        'target': 0.95,
        'epoch': 2,
        'train_seconds': 4.0,
        'wall_seconds': 5.0,
    }
    assert records.time_to_accuracy(history, target=0.97) is None
    # Epochs between evaluations (`eval.every_epochs`) count their time, never the target.
    del history[1]['test_accuracy']
    assert records.time_to_accuracy(history) == {
        'target': 0.95,
        'epoch': 4,
        'train_seconds': 8.0,
        'wall_seconds': 10.0,
    }
    assert records.model_results(history)['best_epoch'] == 4
