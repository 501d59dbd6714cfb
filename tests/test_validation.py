"""A bad config value is one line naming the field and what it must be."""

from __future__ import annotations

import pytest

from vgg_flax import validation

from conftest import tiny_config


@pytest.mark.parametrize(
    'field,value,message',
    [
        ('batch_size', 0, 'config.train.batch_size=0 must be a positive integer'),
        ('learning_rate', 0.0, 'config.train.learning_rate=0.0 must be > 0'),
        ('momentum', -0.5, 'config.train.momentum=-0.5 must be a finite number >= 0'),
        ('lr_schedule', 'linear', "config.train.lr_schedule='linear' is not supported"),
        ('num_epochs', -1, 'config.train.num_epochs=-1 must be a positive integer'),
        ('steps_per_call', 0, 'config.train.steps_per_call=0 must be a positive integer'),
        ('ema_decay', 1.0, 'config.train.ema_decay=1.0 must be in [0, 1)'),
        ('label_smoothing', -0.1, 'config.train.label_smoothing=-0.1 must be in [0, 1)'),
    ],
)
def test_invalid_train_config(field, value, message):
    config = tiny_config('unread')
    config.train[field] = value
    with pytest.raises(ValueError) as error:
        validation.validate_config(config)
    assert message in str(error.value)
