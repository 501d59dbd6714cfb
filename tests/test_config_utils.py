"""Configs survive JSON, and resume checks name exactly the fields that changed."""

from __future__ import annotations

from vgg_flax import config_utils


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
