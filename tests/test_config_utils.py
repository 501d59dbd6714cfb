"""Configs survive JSON, and resume checks name exactly the fields that changed."""

from __future__ import annotations

import pytest

from vgg_flax import config_utils, train_steps


def test_json_round_trip_gives_an_equal_config():
    config = config_utils.default_config()
    config.train.lr_decay_epochs = (2, 4)
    restored = config_utils.from_plain(config_utils.to_plain(config))
    assert restored.to_dict() == config.to_dict()
    assert restored.model.dense_features == (4096, 4096)


def test_resume_conflicts_ignore_only_harmless_fields():
    saved = config_utils.to_plain(config_utils.default_config())
    changed = config_utils.default_config()
    changed.train.num_epochs = 10
    changed.data.idx_dir = '/elsewhere'
    assert config_utils.resume_conflicts(saved, config_utils.to_plain(changed)) == []
    changed.model.width_ratio = 8
    changed.seed = 3
    conflicts = config_utils.resume_conflicts(saved, config_utils.to_plain(changed))
    assert conflicts == ['model.width_ratio: 4 in the run, 8 now', 'seed: 0 in the run, 3 now']


@pytest.mark.parametrize(
    'schedule,warmup,refused',
    [
        ('constant', 0, False),
        ('constant', 2, False),
        ('step', 1, False),
        ('cosine', 0, True),
        ('cosine', 1, True),
    ],
)
def test_growing_num_epochs_is_refused_only_where_the_schedule_spans_the_run(
    schedule, warmup, refused
):
    config = config_utils.default_config()
    config.train.lr_schedule, config.train.warmup_epochs = schedule, warmup
    config.train.lr_decay_epochs = (3,)
    saved = config_utils.to_plain(config)
    config.train.num_epochs = 10
    conflicts = config_utils.resume_conflicts(saved, config_utils.to_plain(config))
    assert conflicts == (
        [
            "train.num_epochs: 5 in the run, 10 now (the cosine schedule spans the run's epochs, "
            'so every step still to come would change)'
        ]
        if refused
        else []
    )
    # Where it is allowed, the schedule's first epochs are those of the shorter run.
    short = train_steps.create_learning_rate_fn(config_utils.from_plain(saved).train, 10)
    long = train_steps.create_learning_rate_fn(config.train, 10)
    assert refused or all(short(step) == long(step) for step in range(50))
