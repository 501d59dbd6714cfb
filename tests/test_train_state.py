"""The learning-rate schedules and the optimiser's weight decay."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from vgg_flax import train_state

from conftest import tiny_config


def test_learning_rate_schedules():
    config = tiny_config()
    config.train.num_epochs = 10
    config.train.warmup_epochs = 2
    config.train.lr_schedule = 'cosine'
    lr = train_state.create_learning_rate_fn(config.train, 100)
    assert float(lr(0)) == 0.0
    assert float(lr(200)) == pytest.approx(0.05)
    assert float(lr(1000)) == pytest.approx(0.0, abs=1e-6)
    config.train.warmup_epochs = 0
    config.train.lr_schedule = 'step'
    config.train.lr_decay_epochs = (3, 6)
    lr = train_state.create_learning_rate_fn(config.train, 100)
    assert [float(lr(s)) for s in (299, 300, 600)] == pytest.approx([0.05, 0.005, 0.0005])


def test_weight_decay_skips_biases():
    config = tiny_config()
    config.train.weight_decay = 0.5
    tx = train_state.create_optimizer(
        config.train, train_state.create_learning_rate_fn(config.train, 1)
    )
    params = {'kernel': np.ones((2, 2), np.float32), 'bias': np.ones((2,), np.float32)}
    zero = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(updates['bias'].sum()) == 0.0
    assert float(updates['kernel'][0, 0]) == pytest.approx(-0.05 * 0.5)
