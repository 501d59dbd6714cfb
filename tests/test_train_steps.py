"""The train step learns and runs alike under a compiled loop; the moving average."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_flax import device_data, input_pipeline, train_state, train_steps

from conftest import tiny_config


@pytest.mark.slow
def test_steps_lower_the_loss(idx_dir):
    config = tiny_config(str(idx_dir))
    split = input_pipeline.load_split(config.data, 'train')
    state = train_state.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
    data = device_data.TrainData(
        *jax.device_put((split.images, split.labels)),
        input_pipeline.epoch_batches(jax.random.key(1), 0, len(split), 32)[:1],
        jax.random.key(2),
    )
    step = jax.jit(train_steps.train_step, static_argnums=2)
    options = train_steps.step_options(config)
    losses = []
    for _ in range(15):  # The same batch again and again: its loss must fall.
        state = step(state.replace(sums=train_state.zero_sums()), data, options)
        losses.append(train_state.mean_metrics(state.sums)[0])
    assert int(state.step) == 15
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_steps_under_one_compiled_loop_equal_the_steps_one_by_one(idx_dir):
    config = tiny_config(str(idx_dir))
    split = input_pipeline.load_split(config.data, 'train')
    data = device_data.TrainData(
        *jax.device_put((split.images, split.labels)),
        input_pipeline.epoch_batches(jax.random.key(1), 0, len(split), 32),
        jax.random.key(2),
    )
    results = []
    for num_steps, calls in ((1, 3), (3, 1)):
        state = train_state.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
        fn = train_steps.lower_train_step(
            state, data, train_steps.step_options(config), num_steps
        ).compile()
        for _ in range(calls):
            state = fn(state, data)
        results.append(state)
    one_by_one, looped = results
    assert int(looped.step) == int(one_by_one.step) == 3  # Three batches, in the same order...
    assert int(looped.sums['count']) == 3 * 32
    np.testing.assert_allclose(looped.sums['loss_sum'], one_by_one.sums['loss_sum'], rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves((looped.params, looped.batch_stats)),
        jax.tree.leaves((one_by_one.params, one_by_one.batch_stats)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # ...to the same parameters.


def test_the_moving_average_ramps_its_decay_up_from_the_first_update():
    ema, value = {'w': jnp.zeros(3)}, {'w': jnp.ones(3)}
    for updates, rate in ((1, 2 / 11), (100, 0.9)):
        np.testing.assert_allclose(
            train_steps.update_ema(ema, value, 0.9, jnp.asarray(updates))['w'], 1 - rate, rtol=1e-6
        )
