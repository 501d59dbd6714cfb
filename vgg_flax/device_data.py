"""The splits on the devices, and the batches the compiled steps read from them: `TrainData`
and `EvalData`, the steps' inputs.

Each process reads only its share of a split; one all-gather then puts the whole split on every
device, and an epoch's shuffle is drawn there too, so the steps never wait on the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import ml_collections
import numpy as np

from vgg_flax import distributed, input_pipeline
from vgg_flax.population import per_member


@flax.struct.dataclass
class TrainData:
    """What the train step reads, on the devices: the split, the epoch's batches, a key."""

    images: jax.Array  # uint8 (N, 28, 28, C)
    labels: jax.Array  # int32 (N,)
    # int32 (steps, batch_size), or (members, steps, batch_size) for a population: the epoch's
    # shuffle, each batch split over the devices.
    batches: jax.Array
    dropout_key: jax.Array  # One key, or one per member.


@flax.struct.dataclass
class EvalData:
    """What the eval step reads: the split, and every example once in padded, masked batches."""

    images: jax.Array
    labels: jax.Array
    batches: jax.Array  # int32 (steps, batch_size)
    masks: jax.Array  # float32 (steps, batch_size): 0 for the padding of the last batch


def load_on_devices(
    config: ml_collections.ConfigDict, split: str, mesh: jax.sharding.Mesh
) -> tuple[jax.Array, jax.Array]:
    """Images and labels of `split` on every device; each process reads only its share."""
    share = input_pipeline.load_split(
        config.data,
        split,
        config.model.num_classes,
        shard=(jax.process_index(), jax.process_count()),
    )
    return (
        distributed.replicate_from_processes(share.images, mesh),
        distributed.replicate_from_processes(share.labels, mesh),
    )


def batches_sharding(
    mesh: jax.sharding.Mesh, population: bool = False, members_over_devices: bool = False
) -> jax.sharding.NamedSharding:
    """Where an epoch's batches go: each batch split over the devices, or with
    `members_over_devices` each member's batches on the device that trains it."""
    return distributed.split_along(mesh, 0 if members_over_devices else 2 if population else 1)


def batch_maker(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> Callable[..., jax.Array]:
    """`input_pipeline.epoch_batches`, compiled, each batch split over the devices of `mesh`;
    for a population, the batches of each member's shuffle key (`batches_sharding` places
    them)."""
    batches = per_member(
        input_pipeline.epoch_batches, config.population_size, in_axes=(0, None, None, None)
    )
    return jax.jit(
        batches,
        static_argnums=(2, 3),
        out_shardings=batches_sharding(
            mesh, config.population_size > 1, config.members_over_devices
        ),
    )


def epoch_batches_fn(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    shuffle_key: jax.Array,
    num_loaded: int,
) -> Callable[[int], jax.Array]:
    """The batches of epoch N (from 1) of the `num_loaded` train examples less the held-out
    ones, drawn on the devices with `shuffle_key` (one per member for a population)."""
    batches = batch_maker(config, mesh)
    num_train = num_train_examples(config, num_loaded)
    return lambda epoch: batches(shuffle_key, epoch, num_train, config.train.batch_size)


def num_train_examples(config: ml_collections.ConfigDict, num_loaded: int) -> int:
    """How many of the `num_loaded` train examples are trained on: all but the held-out
    validation set."""
    return num_loaded - config.data.validation_examples


def load_data(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, dropout_key: jax.Array
) -> tuple[TrainData, dict[str, EvalData]]:
    """Both splits on the devices, and the sets each epoch is evaluated on: 'val' (the last
    `config.data.validation_examples` of the train split, which training never sees) where
    there is one, and 'test'. The train batches are a placeholder until an epoch sets its own
    (`batch_maker`)."""
    images, labels = load_on_devices(config, 'train', mesh)
    test_images, test_labels = load_on_devices(config, 'test', mesh)
    batch_size = config.train.batch_size
    num_train = num_train_examples(config, images.shape[0])
    if num_train <= 0:
        raise ValueError(
            f'config.data.validation_examples={config.data.validation_examples} '
            f'would hold out all {images.shape[0]} training examples; hold out '
            'fewer.'
        )
    num_steps = input_pipeline.steps_per_epoch(num_train, batch_size)
    if not num_steps:
        raise ValueError(
            f'{num_train} training examples make no full batch of '
            f'config.train.batch_size={batch_size}; lower the batch size or raise '
            'config.data.max_train_examples.'
        )
    members = (config.population_size,) if config.population_size > 1 else ()
    batches = distributed.put(
        np.zeros((*members, num_steps, batch_size), np.int32),
        batches_sharding(mesh, bool(members), config.members_over_devices),
    )
    eval_sets = {'test': eval_data(config, test_images, test_labels, mesh)}
    if config.data.validation_examples:
        eval_sets = {'val': eval_data(config, images, labels, mesh, start=num_train), **eval_sets}
    return TrainData(images, labels, batches, dropout_key), eval_sets


def eval_data(
    config: ml_collections.ConfigDict,
    images: jax.Array,
    labels: jax.Array,
    mesh: jax.sharding.Mesh,
    start: int = 0,
) -> EvalData:
    """Every example of `images` from index `start` on, once, in padded and masked batches."""
    # Members over devices: each device evaluates its members on every example.
    split = (
        distributed.replicated(mesh)
        if config.members_over_devices
        else distributed.split_along(mesh, 1)
    )
    indices, masks = input_pipeline.eval_batches(
        images.shape[0] - start, config.train.eval_batch_size
    )
    return EvalData(
        images, labels, distributed.put(indices + start, split), distributed.put(masks, split)
    )


def data_fingerprints(train_data: TrainData, eval_sets: dict[str, EvalData]) -> dict[str, Any]:
    """What the run records of its data (`run_dir.check_data`): the train split, held-out
    part included, and the test split."""
    return {
        'train': input_pipeline.fingerprint(train_data.images, train_data.labels),
        'test': input_pipeline.fingerprint(eval_sets['test'].images, eval_sets['test'].labels),
    }


def check_fits_devices(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """Raises ValueError unless what is split over the devices splits evenly: the batches, or
    with `config.members_over_devices` the population's members."""
    split = (
        {'population_size': config.population_size}
        if config.members_over_devices
        else {f'train.{field}': config.train[field] for field in ('batch_size', 'eval_batch_size')}
    )
    for field, value in split.items():
        distributed.check_divisible(field, value, mesh)
