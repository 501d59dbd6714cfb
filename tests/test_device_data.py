"""The splits and batches on the devices: each member of a population its own shuffle, the
held-out examples never in a train batch, and every evaluation example exactly once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vgg_flax import device_data, distributed, population

from conftest import tiny_config


def test_each_member_draws_its_own_epochs_and_never_the_held_out_examples():
    config = tiny_config('unread')
    config.population_size, config.data.validation_examples = 2, 40
    config.train.batch_size = 32
    mesh = distributed.create_mesh()
    _, _, shuffle_keys = population.run_keys(config)
    epoch_batches = device_data.epoch_batches_fn(config, mesh, shuffle_keys, num_loaded=200)
    first, second = np.asarray(epoch_batches(1)), np.asarray(epoch_batches(2))
    assert first.shape == (2, 160 // 32, 32)  # Members, steps, batch: of the 160 kept.
    assert first.max() < 160 and second.max() < 160  # The last 40 are held out.
    assert not np.array_equal(first[0], first[1])  # Each member its own shuffle...
    assert not np.array_equal(first, second)  # ...and each epoch its own.
    np.testing.assert_array_equal(first, np.asarray(epoch_batches(1)))  # A function of both.
    for member in first:
        assert len(np.unique(member)) == member.size  # No example twice in an epoch.


def test_an_evaluation_set_covers_each_of_its_examples_once():
    config = tiny_config('unread')
    config.train.eval_batch_size = 16
    mesh = distributed.create_mesh()
    images, labels = jnp.zeros((100, 28, 28, 1), jnp.uint8), jnp.arange(100, dtype=jnp.int32)
    held_out = device_data.eval_data(config, images, labels, mesh, start=60)
    indices, masks = np.asarray(held_out.batches), np.asarray(held_out.masks)
    assert sorted(indices[masks > 0].tolist()) == list(range(60, 100))
    assert jax.device_get(held_out.labels).shape == (100,)  # The whole split, indexed.
