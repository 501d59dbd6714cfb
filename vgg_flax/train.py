"""Training and evaluation: the train state, the compiled steps and the epoch loop.

`train_step` gathers its batch from the on-device dataset by the step number, preprocesses it,
runs forward and backward and updates the parameters and the epoch's running sums, all in one
compiled function; the host only dispatches it. `train_and_evaluate` is the resumable loop.

With `config.num_seeds` = N > 1 a run is a population: N copies of the model, member i with
seed `config.seed + i` (its own initialisation, dropout and shuffle), trained by one `jax.vmap`
of the same step over a train state stacked along a leading axis, on the one shared dataset.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import threading
import time
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.experimental import multihost_utils
from tqdm import tqdm

from vgg_flax import (augment, checkpointing, config_utils, distributed, input_pipeline,
                      metric_writers, models)

LR_SCHEDULES = ('constant', 'cosine', 'step')
Sums = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """What the train step updates: parameters, optimiser state, BatchNorm statistics, the
    running sums of the epoch in progress (loss, correct predictions, examples) and how many
    steps gave a non-finite loss (counted on the device, checked on the host, never saved).

    `ema` is None, or with `config.train.ema_decay` the exponential moving average of the
    model's variables ({'params', 'batch_stats'}), which evaluation then uses.

    A population's state has a leading member axis on every array but `step`, which the
    members share.
    """

    batch_stats: Any
    sums: Sums
    nonfinite_steps: jax.Array
    ema: Any = None

    def eval_variables(self) -> dict[str, Any]:
        """The variables to predict with: the moving average where there is one."""
        if self.ema is not None:
            return self.ema
        return {'params': self.params, 'batch_stats': self.batch_stats}


@flax.struct.dataclass
class TrainData:
    """What the train step reads, on the devices: the split, the epoch's batches, a key."""

    images: jax.Array  # uint8 (N, 28, 28, C)
    labels: jax.Array  # int32 (N,)
    # int32 (steps, batch_size), or (members, steps, batch_size) for a population: the epoch's
    # shuffle, each batch split over the devices.
    batches: jax.Array
    dropout_key: jax.Array  # One key, or one per member.
    image_size: int = flax.struct.field(pytree_node=False)
    augment: augment.Augment = flax.struct.field(pytree_node=False, default=augment.Augment())
    label_smoothing: float = flax.struct.field(pytree_node=False, default=0.0)
    ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)


@flax.struct.dataclass
class EvalData:
    """What the eval step reads: the split, and every example once in padded, masked batches."""

    images: jax.Array
    labels: jax.Array
    batches: jax.Array  # int32 (steps, batch_size)
    masks: jax.Array  # float32 (steps, batch_size): 0 for the padding of the last batch
    image_size: int = flax.struct.field(pytree_node=False)
    tta: bool = flax.struct.field(pytree_node=False, default=False)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after it saved a checkpoint."""

    def __init__(self, signum: int, step: int):
        super().__init__(f'{signal.Signals(signum).name} stopped the run at step {step}, after '
                         'it saved a checkpoint there; run the same command again to resume.')
        self.signum = signum


def validate_train_config(train_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the field and the allowed values for a bad `config.train`."""
    for field in ('batch_size', 'eval_batch_size', 'num_epochs', 'checkpoint_every_epochs',
                  'keep_checkpoints', 'log_every_steps', 'steps_per_call'):
        config_utils.check_positive_int(f'train.{field}', train_config[field])
    for field in ('learning_rate', 'momentum', 'weight_decay', 'lr_decay_factor'):
        value = train_config[field]
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f'config.train.{field}={value!r} must be a finite number >= 0.')
    for field in ('label_smoothing', 'ema_decay'):
        value = train_config[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f'config.train.{field}={value!r} must be in [0, 1).')
    if train_config.learning_rate <= 0:
        raise ValueError(f'config.train.learning_rate={train_config.learning_rate!r} must be '
                         '> 0.')
    config_utils.check_choice('train.lr_schedule', train_config.lr_schedule, LR_SCHEDULES)
    if not isinstance(train_config.warmup_epochs, int) or train_config.warmup_epochs < 0:
        raise ValueError(f'config.train.warmup_epochs={train_config.warmup_epochs!r} must be an '
                         'integer >= 0.')
    for epoch in train_config.lr_decay_epochs:
        config_utils.check_positive_int('train.lr_decay_epochs[*]', epoch)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every section, so a bad value fails before data is read or code compiled."""
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise ValueError(f'config.seed={config.seed!r} must be an integer.')
    config_utils.check_positive_int('num_seeds', config.num_seeds)
    if config.members_over_devices not in (False, True) or (
            config.members_over_devices and config.num_seeds == 1):
        raise ValueError(f'config.members_over_devices={config.members_over_devices!r} must be '
                         'False, or True for a population (config.num_seeds > 1).')
    models.validate_model_config(config.model)
    input_pipeline.validate_data_config(config.data, config.model)
    validate_train_config(config.train)
    augment.from_config(config.augment)
    check_fits_memory(config)


def device_memory_bytes() -> int:
    """The memory of every device together: the accelerators' limit, or on a CPU the host's
    RAM, which its devices share."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if 'bytes_limit' in stats:
        return int(stats['bytes_limit']) * jax.device_count()
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def check_fits_memory(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError when the first convolution's output for one train batch (of every
    member) alone exceeds the devices' memory: a lower bound on what the step needs, so a run
    that cannot fit fails here in one line instead of in minutes of compiling or swapping."""
    size, batch = config.data.image_size, config.train.batch_size * config.num_seeds
    channels = models.conv_arch_for(models.full_width_blocks(config.model),
                                    config.model.width_ratio)[0][1]
    needed = batch * size * size * channels * jnp.dtype(models.DTYPES[config.model.dtype]).itemsize
    available = device_memory_bytes()
    if needed > available:
        raise ValueError(
            f'config.data.image_size={size} needs at least {needed / 2**30:,.1f} GiB for the first '
            f"convolution's output of a batch of {batch} ({size}x{size}x{channels} per image), "
            f'more than the {available / 2**30:,.1f} GiB of memory of the devices; lower '
            'config.data.image_size or config.train.batch_size.')


def create_learning_rate_fn(train_config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.Schedule:
    """The configured schedule, with an optional linear warmup, as a function of the step."""
    lr = train_config.learning_rate
    warmup = train_config.warmup_epochs * steps_per_epoch
    total = train_config.num_epochs * steps_per_epoch
    if train_config.lr_schedule == 'cosine':
        main = optax.cosine_decay_schedule(lr, decay_steps=max(total - warmup, 1))
    elif train_config.lr_schedule == 'step':
        main = optax.piecewise_constant_schedule(lr, {
            epoch * steps_per_epoch - warmup: train_config.lr_decay_factor
            for epoch in train_config.lr_decay_epochs})
    else:
        main = optax.constant_schedule(lr)
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def create_optimizer(train_config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
    """SGD (optionally with momentum) and L2 weight decay on kernels only."""
    sgd = optax.sgd(learning_rate_fn, momentum=train_config.momentum or None,
                    nesterov=train_config.nesterov)
    if not train_config.weight_decay:
        return sgd

    def kernels_only(params: Any) -> Any:
        return jax.tree.map(lambda p: p.ndim > 1, params)

    return optax.chain(optax.add_decayed_weights(train_config.weight_decay, mask=kernels_only),
                       sgd)


def init_train_state(config: ml_collections.ConfigDict, key: jax.Array,
                     steps_per_epoch: int = 1, num_channels: int = 1) -> TrainState:
    """The initial state for `config.data.image_size` images with `num_channels` (traceable).

    `steps_per_epoch` only shapes the learning-rate schedule, so any value gives a state to
    restore a checkpoint onto or to measure with.
    """
    model = models.create_model(config.model)
    tx = create_optimizer(config.train, create_learning_rate_fn(config.train, steps_per_epoch))
    size = config.data.image_size
    variables = model.init(key, jnp.zeros((1, size, size, num_channels), jnp.float32),
                           train=False)
    batch_stats = variables.get('batch_stats', {})
    ema = ({'params': variables['params'], 'batch_stats': batch_stats}
           if config.train.ema_decay else None)
    state = TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                              batch_stats=batch_stats, sums=zero_sums(),
                              nonfinite_steps=jnp.zeros((), jnp.int32), ema=ema)
    # An int32 array, not Python's 0, so fresh and restored states compile to the same step.
    return state.replace(step=jnp.zeros((), jnp.int32))


def init_population(config: ml_collections.ConfigDict, keys: jax.Array,
                    steps_per_epoch: int = 1, num_channels: int = 1) -> TrainState:
    """`init_train_state` of each of `keys`, stacked along a leading axis; one shared step."""
    states = jax.vmap(lambda key: init_train_state(config, key, steps_per_epoch,
                                                   num_channels))(keys)
    return states.replace(step=states.step[0])


def run_keys(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The keys for initialisation, dropout and shuffling from `config.seed`; for a population,
    each stacked over its members' seeds, so member i gets the keys of seed `config.seed + i`."""
    if config.num_seeds == 1:
        return tuple(jax.random.split(jax.random.key(config.seed), 3))
    keys = jnp.stack([jax.random.split(jax.random.key(config.seed + i), 3)
                      for i in range(config.num_seeds)])
    return keys[:, 0], keys[:, 1], keys[:, 2]


def create_train_state(config: ml_collections.ConfigDict, key: jax.Array,
                       steps_per_epoch: int = 1, num_channels: int = 1,
                       mesh: jax.sharding.Mesh | None = None) -> TrainState:
    """`init_train_state` (or with one key per member, `init_population`), compiled and run
    once; replicated over the devices of `mesh`, or with `config.members_over_devices` each
    member on one of them."""
    init = functools.partial(init_population if key.ndim else init_train_state, config,
                             steps_per_epoch=steps_per_epoch, num_channels=num_channels)
    sharding = None
    if mesh is not None:
        sharding = distributed.replicated(mesh)
        if config.members_over_devices and key.ndim:
            split = distributed.split_along(mesh, 0)
            sharding = jax.tree.map(lambda _: split, jax.eval_shape(init, key)).replace(
                step=sharding)
    return run_once(init, key, sharding=sharding)


def is_population(state: TrainState) -> bool:
    """Whether `state` stacks the members of a population (`config.num_seeds` > 1)."""
    return state.nonfinite_steps.ndim == 1


def population_axes(state: TrainState) -> TrainState:
    """`jax.vmap`'s axes for a population's state: every array's first but the shared step's."""
    return jax.tree.map(lambda _: 0, state).replace(step=None)


def run_once(fn: Any, *args: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """`fn(*args)` compiled for a single call, its outputs placed with `sharding`.

    On a CPU it is compiled without LLVM's optimisations: the same values, and about 10x less
    compile time for a model's random initialisation (13 s against 1.3 s for a small VGG).
    """
    options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
    return jax.jit(fn, out_shardings=sharding).lower(*args).compile(
        compiler_options=options)(*args)


def load_on_devices(config: ml_collections.ConfigDict, split: str,
                    mesh: jax.sharding.Mesh) -> tuple[jax.Array, jax.Array]:
    """Images and labels of `split` on every device; each process reads only its share."""
    share = input_pipeline.load_split(config.data, split, config.model.num_classes,
                                      shard=(jax.process_index(), jax.process_count()))
    return (distributed.replicate_from_processes(share.images, mesh),
            distributed.replicate_from_processes(share.labels, mesh))


def batches_sharding(mesh: jax.sharding.Mesh, population: bool = False,
                     members_over_devices: bool = False) -> jax.sharding.NamedSharding:
    """Where an epoch's batches go: each batch split over the devices, or with
    `members_over_devices` each member's batches on the device that trains it."""
    return distributed.split_along(mesh, 0 if members_over_devices else 2 if population else 1)


def batch_maker(mesh: jax.sharding.Mesh, population: bool = False,
                members_over_devices: bool = False) -> Any:
    """`input_pipeline.epoch_batches`, compiled, each batch split over the devices of `mesh`;
    for a `population`, the batches of each of its shuffle keys (`batches_sharding` places
    them)."""
    def batches(key: jax.Array, epoch: int, num_examples: int, batch_size: int) -> jax.Array:
        if population:
            return jax.vmap(lambda key: input_pipeline.epoch_batches(
                key, epoch, num_examples, batch_size))(key)
        return input_pipeline.epoch_batches(key, epoch, num_examples, batch_size)

    return jax.jit(batches, static_argnums=(2, 3), out_shardings=batches_sharding(
        mesh, population, members_over_devices))


def load_data(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
              dropout_key: jax.Array) -> tuple[TrainData, dict[str, EvalData]]:
    """Both splits on the devices, and the sets each epoch is evaluated on: 'val' (the last
    `config.data.validation_examples` of the train split, which training never sees) where
    there is one, and 'test'. The train batches are a placeholder until an epoch sets its own
    (`batch_maker`)."""
    images, labels = load_on_devices(config, 'train', mesh)
    test_images, test_labels = load_on_devices(config, 'test', mesh)
    batch_size = config.train.batch_size
    num_train = num_train_examples(config, images.shape[0])
    if num_train <= 0:
        raise ValueError(f'config.data.validation_examples={config.data.validation_examples} '
                         f'would hold out all {images.shape[0]} training examples; hold out '
                         'fewer.')
    num_steps = input_pipeline.steps_per_epoch(num_train, batch_size)
    if not num_steps:
        raise ValueError(f'{num_train} training examples make no full batch of '
                         f'config.train.batch_size={batch_size}; lower the batch size or raise '
                         'config.data.max_train_examples.')
    members = (config.num_seeds,) if config.num_seeds > 1 else ()
    batches = distributed.put(np.zeros((*members, num_steps, batch_size), np.int32),
                              batches_sharding(mesh, bool(members), config.members_over_devices))
    eval_sets = {'test': eval_data(config, test_images, test_labels, mesh)}
    if config.data.validation_examples:
        eval_sets = {'val': eval_data(config, images, labels, mesh, start=num_train),
                     **eval_sets}
    return make_train_data(config, images, labels, batches, dropout_key), eval_sets


def num_train_examples(config: ml_collections.ConfigDict, num_loaded: int) -> int:
    """How many of the `num_loaded` train examples are trained on: all but the held-out
    validation set."""
    return num_loaded - config.data.validation_examples


def data_fingerprints(train_data: TrainData, eval_sets: dict[str, EvalData]) -> dict[str, Any]:
    """What the run records of its data (`checkpointing.check_data`): the train split, held-out
    part included, and the test split."""
    return {'train': input_pipeline.fingerprint(train_data.images, train_data.labels),
            'test': input_pipeline.fingerprint(eval_sets['test'].images,
                                               eval_sets['test'].labels)}


def eval_data(config: ml_collections.ConfigDict, images: jax.Array, labels: jax.Array,
              mesh: jax.sharding.Mesh, start: int = 0) -> EvalData:
    """Every example of `images` from index `start` on, once, in padded and masked batches."""
    # Members over devices: each device evaluates its members on every example.
    split = (distributed.replicated(mesh) if config.members_over_devices else
             distributed.split_along(mesh, 1))
    indices, masks = input_pipeline.eval_batches(images.shape[0] - start,
                                                 config.train.eval_batch_size)
    indices, masks = (distributed.put(a, split) for a in (indices + start, masks))
    return EvalData(images, labels, indices, masks, config.data.image_size, config.eval.tta)


def make_train_data(config: ml_collections.ConfigDict, images: jax.Array, labels: jax.Array,
                    batches: jax.Array, dropout_key: jax.Array) -> TrainData:
    """The train step's data, with what `config` fixes at compile time."""
    return TrainData(images, labels, batches, dropout_key, config.data.image_size,
                     augment.from_config(config.augment), config.train.label_smoothing,
                     config.train.ema_decay)


def count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def zero_sums(shape: tuple[int, ...] = ()) -> Sums:
    """Running sums of an epoch: summed loss, correct predictions and examples (for a
    population, each of shape (members,))."""
    return {'loss_sum': jnp.zeros(shape, jnp.float32), 'correct': jnp.zeros(shape, jnp.int32),
            'count': jnp.zeros(shape, jnp.int32)}


def zero_sums_like(state: TrainState) -> Sums:
    """`zero_sums` for `state` (a single run's or a population's), placed as its members are."""
    return jax.device_put(zero_sums(state.nonfinite_steps.shape),
                          state.nonfinite_steps.sharding)


def _add_to_sums(sums: Sums, losses: jax.Array, logits: jax.Array, labels: jax.Array,
                 mask: jax.Array) -> Sums:
    correct = (jnp.argmax(logits, axis=-1) == labels) & mask
    return {'loss_sum': sums['loss_sum'] + jnp.sum(jnp.where(mask, losses, 0.0)),
            'correct': sums['correct'] + jnp.sum(correct, dtype=jnp.int32),
            'count': sums['count'] + jnp.sum(mask, dtype=jnp.int32)}


def train_step(state: TrainState, data: TrainData) -> TrainState:
    """One SGD step on batch `state.step % len(data.batches)` of the epoch's batches."""
    indices = data.batches[state.step % data.batches.shape[0]]
    images, y = data.images[indices], data.labels[indices]
    key = jax.random.fold_in(data.dropout_key, state.step)
    if data.augment.active:  # Static: without augmentation the step is the lesson's.
        images = augment.augment(images, jax.random.fold_in(key, 1), data.augment)
    x = input_pipeline.preprocess(images, data.image_size)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
            rngs={'dropout': key}, mutable=['batch_stats'])
        if data.label_smoothing:
            targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]),
                                          data.label_smoothing)
            losses = optax.softmax_cross_entropy(logits, targets)
        else:
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return losses.mean(), (losses, logits, updates)

    (loss, (losses, logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state = state.apply_gradients(
        grads=grads, batch_stats=updates.get('batch_stats', state.batch_stats),
        sums=_add_to_sums(state.sums, losses, logits, y, jnp.ones_like(y, dtype=bool)))
    if state.ema is not None:
        state = state.replace(ema=update_ema(state.ema, {
            'params': state.params, 'batch_stats': state.batch_stats}, data.ema_decay,
            state.step))
    return state.replace(
        nonfinite_steps=state.nonfinite_steps + (~jnp.isfinite(loss)).astype(jnp.int32))


def update_ema(ema: Any, variables: Any, decay: float, updates: jax.Array) -> Any:
    """The moving average after its `updates`-th update with `variables`.

    The decay ramps up as min(decay, (1 + t) / (10 + t)), as TensorFlow's
    ExponentialMovingAverage does with `num_updates`: early on, the average would otherwise
    hold the random initialisation for thousands of steps.
    """
    rate = jnp.minimum(decay, (1.0 + updates) / (10.0 + updates))
    return jax.tree.map(lambda average, value: rate * average + (1 - rate) * value, ema,
                        variables)


def predict_step(state: TrainState, images: jax.Array, indices: jax.Array, *,
                 image_size: int, tta: bool = False) -> jax.Array:
    """Logits of the examples at `indices` of the on-device `images`, in inference mode (with
    the moving average of the weights where the state has one); with `tta`, the mean of the
    logits of each image and its mirror image."""
    x = input_pipeline.preprocess(images[indices], image_size)
    variables = state.eval_variables()
    logits = state.apply_fn(variables, x, train=False)
    if tta:
        logits = (logits + state.apply_fn(variables, x[:, :, ::-1], train=False)) / 2
    return logits


def eval_step(state: TrainState, sums: Sums, data: EvalData, batch: jax.Array) -> Sums:
    """Adds evaluation batch `batch` to `sums`; masked-out padding counts for nothing."""
    indices = data.batches[batch]
    logits = predict_step(state, data.images, indices, image_size=data.image_size, tta=data.tta)
    y = data.labels[indices]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return _add_to_sums(sums, losses, logits, y, data.masks[batch].astype(bool))


def lower_train_step(state: TrainState, data: TrainData,
                     num_steps: int = 1) -> jax.stages.Lowered:
    """`train_step` lowered for these (possibly abstract) arguments, ready to compile.

    With `num_steps` > 1, one call runs that many steps under a compiled loop: one dispatch for
    all of them. The state is donated: its buffers are reused for the updated one.
    """
    step_fn = train_step
    if is_population(state):
        axes = population_axes(state)
        step_fn = jax.vmap(train_step, out_axes=axes, in_axes=(axes, data.replace(
            images=None, labels=None, batches=0, dropout_key=0)))

    def steps(state: TrainState, data: TrainData) -> TrainState:
        return jax.lax.fori_loop(0, num_steps, lambda _, state: step_fn(state, data), state)

    return jax.jit(step_fn if num_steps == 1 else steps, donate_argnums=0).lower(state, data)


def compile_train_step(state: TrainState, data: TrainData, num_steps: int = 1) -> Any:
    """`lower_train_step`, compiled ahead of time."""
    return lower_train_step(state, data, num_steps).compile()


def compile_eval_step(state: TrainState, data: EvalData) -> Any:
    """`eval_step` (each member's, for a population), compiled ahead of time; the sums are
    donated."""
    step_fn = eval_step
    if is_population(state):
        step_fn = jax.vmap(eval_step, in_axes=(population_axes(state), 0, None, None))
    return jax.jit(step_fn, donate_argnums=1).lower(state, state.sums, data, 0).compile()


def mean_metrics(sums: Sums) -> tuple[np.ndarray, np.ndarray]:
    """(mean loss, accuracy) from running sums fetched to the host; for a population, arrays
    of one value per member."""
    sums = jax.device_get(sums)
    count = np.maximum(sums['count'], 1)
    return sums['loss_sum'] / count, sums['correct'] / count


def to_record(values: dict[str, Any]) -> dict[str, Any]:
    """Host values as a JSON record. A population's per-member arrays become their mean under
    the same key, and 'members' lists each member's values."""
    record, members = {}, {}
    for key, value in values.items():
        value = np.asarray(value)
        if value.ndim:
            members[key] = value.tolist()
            value = value.mean()
        record[key] = value.item()
    if members:
        record['members'] = [dict(zip(members, values)) for values in zip(*members.values())]
    return record


def merge_records(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The keys of both records; each member's values of both where they have members."""
    merged = {**first, **second}
    if 'members' in first and 'members' in second:
        merged['members'] = [{**a, **b} for a, b in zip(first['members'], second['members'])]
    return merged


def flops_of(lowered: jax.stages.Lowered) -> float:
    """FLOPs of one call of a lowered function, from XLA's cost analysis (0 if unknown).

    Counted on the lowered program, before the backend's passes: a GPU's compiled program
    calls cuDNN for its convolutions, which XLA's cost analysis counts as no FLOPs.
    """
    analysis = lowered.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # Older jax returns one dict per device program.
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get('flops', 0.0))


class StopSignals:
    """Turns SIGINT and SIGTERM into a stop that the loop polls, so it can save and exit.

    In one process, handlers of its own set a flag; a second signal of the same kind ends the
    process at once, as kill does (Ctrl-C twice), even inside a long compiled call, which Python's
    own KeyboardInterrupt would wait for; the run then resumes from its last checkpoint, which a
    kill leaves intact. In a multi-host job a scheduler's SIGTERM reaches
    the processes at different steps, so JAX's preemption service (which catches SIGTERM there
    from `jax.distributed.initialize` on) picks the poll at which all of them stop together.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._multi_process = jax.process_count() > 1

    def __enter__(self) -> 'StopSignals':
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL)
        name = signal.Signals(signum).name
        print(f'{name}: saving a checkpoint after the current step, then stopping ({name} again '
              'stops at once, without saving).', file=sys.stderr, flush=True)

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def stopped(self) -> bool:
        """Whether a stop came, as of the last `should_stop`."""
        return self.signum is not None

    def should_stop(self, step: int, num_steps: int = 1) -> bool:
        """Whether to save and stop at training step `step`, reached by a call of `num_steps`.

        Every process must poll at the same points, and at every step: the preemption service
        stops them all at the step after the furthest one had reached (as orbax's saves expect).
        So after a call that ran several steps each of them is polled, and a stop that falls
        among them takes effect at `step`, on every process alike.
        """
        if self._multi_process and any(multihost_utils.reached_preemption_sync_point(polled)
                                       for polled in range(step - num_steps + 1, step + 1)):
            self.signum = signal.SIGTERM
        return self.signum is not None


def is_due(count: int, every: int, advanced: int = 1, last: int | None = None) -> bool:
    """Whether an action done every `every` counts (steps, epochs) falls due now.

    `count` has just advanced by `advanced` (a call of `train.steps_per_call` steps jumps past
    the multiples in between), or reached `last`, where an action is always due.
    """
    return count // every > (count - advanced) // every or count == last


def train_record(sums: Sums, step: int, steps_per_epoch: int, since: tuple[int, float],
                 now: float, examples_per_step: int,
                 learning_rate_fn: optax.Schedule) -> dict[str, Any]:
    """The epoch's running train metrics at `step` (fetched from the devices), with the
    examples/sec since `since`, a (step, time) pair, and the learning rate of the last step."""
    loss, accuracy = mean_metrics(sums)
    return to_record({'step': step, 'epoch': step / steps_per_epoch, 'train_loss': loss,
                      'train_accuracy': accuracy,
                      'examples_per_sec': (step - since[0]) * examples_per_step / (now - since[1]),
                      'learning_rate': float(learning_rate_fn(step - 1))})


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)]))


def check_finite(state: TrainState, step: int, steps_per_epoch: int,
                 checkpointer: checkpointing.Checkpointer, test_loss: float = 0.0) -> None:
    """Raises NonFiniteLossError, naming the checkpoint kept, if training diverged: a step's
    loss, the parameters or the test loss are not finite."""
    nonfinite_steps = int(np.sum(jax.device_get(state.nonfinite_steps)))
    loss, _ = mean_metrics(state.sums)
    finite_params = bool(all_finite(state.params))
    if not nonfinite_steps and finite_params and np.all(np.isfinite(loss + test_loss)):
        return
    checkpointer.wait()
    kept = checkpointer.latest_step()
    what = (f'the training loss became non-finite in {nonfinite_steps} step'
            f'{"s" if nonfinite_steps != 1 else ""}' if nonfinite_steps else
            'the parameters became non-finite' if not finite_params else
            f'the test loss became {test_loss}')
    raise NonFiniteLossError(
        f'{what} in epoch {(step - 1) // steps_per_epoch + 1} (by step {step}); ' +
        (f'the last good checkpoint (step {kept}) is kept in {checkpointer.directory}'
         if kept is not None else 'no checkpoint had been saved yet') +
        '. Lower config.train.learning_rate, add warmup (config.train.warmup_epochs) or check '
        'the data.')


def evaluate(eval_fns: dict[str, Any], state: TrainState, eval_sets: dict[str, EvalData],
             signals: StopSignals, show_progress: bool) -> dict[str, float] | None:
    """Loss and accuracy of `state` on each evaluation set ('val_loss', 'test_accuracy', ...: a
    record, with each member's for a population) and the seconds they took; None if a stop came
    first."""
    start = time.perf_counter()
    metrics = {}
    for name, data in eval_sets.items():
        sums = zero_sums_like(state)
        for batch in tqdm(range(data.batches.shape[0]), desc=f'eval {name}', leave=False,
                          disable=None if show_progress else True):
            if signals.should_stop(int(state.step)):
                return None
            sums = eval_fns[name](state, sums, data, batch)
        metrics[f'{name}_loss'], metrics[f'{name}_accuracy'] = mean_metrics(sums)
    return to_record({**metrics, 'eval_seconds': time.perf_counter() - start})


def resume_message(workdir: str, step: int, steps_per_epoch: int) -> str:
    if not step:
        return f'{workdir} has this config but no checkpoint yet; starting from scratch.'
    return (f'Resuming {workdir} from the checkpoint at step {step} (epoch '
            f'{step // steps_per_epoch}, batch {step % steps_per_epoch}).')


class CompiledSteps(NamedTuple):
    train: dict[int, Any]  # The train step for a call of that many steps.
    eval: dict[str, Any]  # The eval step of each evaluation set.
    train_flops_per_step: float
    seconds: float  # Lowering and compiling them took.


def compile_steps(state: TrainState, train_data: TrainData, eval_sets: dict[str, EvalData],
                  steps_per_call: int) -> CompiledSteps:
    """The train step compiled for calls of 1 and of `steps_per_call` steps and the eval step of
    each evaluation set, each lowered once (a lowering costs about as much as a compile from the
    cache)."""
    start = time.perf_counter()
    lowered = {n: lower_train_step(state, train_data, n) for n in {1, steps_per_call}}
    train_fns = {n: step.compile() for n, step in lowered.items()}
    eval_fns = {name: compile_eval_step(state, data) for name, data in eval_sets.items()}
    seconds = time.perf_counter() - start
    return CompiledSteps(train_fns, eval_fns, flops_of(lowered[1]), seconds)


def wait_for_previous_call(previous: jax.Array | None, state: TrainState) -> jax.Array:
    """Blocks until the call before the one that returned `state` has finished; returns what the
    next call waits on (a copy of the step counter, which no call donates).

    The host so waits for the previous call while the device runs this one: never more than two
    calls are queued, so a stop waits for those two, not dozens."""
    if previous is not None:
        previous.block_until_ready()
    return jnp.copy(state.step)


def check_fits_devices(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """Raises ValueError unless what is split over the devices splits evenly: the batches, or
    with `config.members_over_devices` the population's members."""
    split = ({'num_seeds': config.num_seeds} if config.members_over_devices else
             {f'train.{field}': config.train[field] for field in ('batch_size',
                                                                 'eval_batch_size')})
    for field, value in split.items():
        distributed.check_divisible(field, value, mesh)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates `config` in `workdir`, resuming from its last checkpoint.

    Runs data-parallel over every device (of every process); returns the final results, also
    written to `workdir/results.json`. A run that finished already is left as it is.
    """
    validate_config(config)
    mesh = distributed.create_mesh()
    batch_size, num_epochs = config.train.batch_size, config.train.num_epochs
    check_fits_devices(config, mesh)
    chief = distributed.is_chief()
    with contextlib.ExitStack() as stack:
        stack.enter_context(checkpointing.hold_workdir(workdir, active=chief))
        resuming = checkpointing.check_workdir(workdir, config)
        if finished := checkpointing.finished_results(workdir, num_epochs):
            print(f'{workdir} has finished its {num_epochs} epochs already; nothing to do.')
            return finished
        init_key, dropout_key, shuffle_key = run_keys(config)
        train_data, eval_sets = load_data(config, mesh, dropout_key)
        fingerprints = data_fingerprints(train_data, eval_sets)
        checkpointing.check_data(workdir, fingerprints)
        num_train = num_train_examples(config, train_data.images.shape[0])
        steps_per_epoch = train_data.batches.shape[-2]
        epoch_batches = functools.partial(batch_maker(
            mesh, config.num_seeds > 1, config.members_over_devices), shuffle_key,
            num_examples=num_train, batch_size=batch_size)
        examples_per_step = batch_size * config.num_seeds  # Of all members together.
        learning_rate_fn = create_learning_rate_fn(config.train, steps_per_epoch)
        state = create_train_state(config, init_key, steps_per_epoch,
                                   train_data.images.shape[-1], mesh)
        checkpointer = stack.enter_context(
            checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints))
        state, history = checkpointer.restore_latest(state)
        step, total_steps = int(state.step), num_epochs * steps_per_epoch
        if step > total_steps:
            raise checkpointing.RunDirError(
                f'{workdir} has trained {step // steps_per_epoch} epochs already, more than '
                f'config.train.num_epochs={num_epochs}; ask for at least that many to train on, '
                'or pass another --workdir (python -m vgg_flax.evaluate --step=N evaluates any '
                'checkpoint it keeps).')
        if chief and (step or resuming):
            print(resume_message(workdir, step, steps_per_epoch), flush=True)
            last, now = checkpointing.last_num_devices(workdir), jax.device_count()
            if step and last not in (None, now):
                print(f'The run last ran on {last} devices, now on {now}: the same batches, keys '
                      'and steps, each batch split differently over the devices, so its metrics '
                      'match an uninterrupted run to float rounding, not bit for bit.', flush=True)
        steps_per_call = config.train.steps_per_call
        compiled = compile_steps(state, train_data, eval_sets, steps_per_call)
        if chief:  # Every check passed: the workdir is this run's.
            checkpointing.write_run_files(workdir, config, fingerprints)

        # An epoch whose evaluation a stop interrupted was saved as a record without test metrics.
        unevaluated = history.pop() if history and 'test_accuracy' not in history[-1] else None
        train_data = train_data.replace(batches=epoch_batches(step // steps_per_epoch + 1))
        epoch_begin = logged = (step, time.perf_counter())
        log = stack.enter_context(
            metric_writers.RunLog(workdir, num_epochs, history, step, active=chief))
        bar = stack.enter_context(tqdm(total=total_steps, initial=step, unit='step',
                                       disable=None if chief else True))
        signals = stack.enter_context(StopSignals())
        running = None  # What the next call waits on.
        while (step < total_steps or unevaluated) and not signals.stopped:
            if not unevaluated:  # One call of the step, then, at an epoch's end, its record.
                batch = step % steps_per_epoch  # Batches of this epoch done.
                num_steps = steps_per_call if batch + steps_per_call <= steps_per_epoch else 1
                state = compiled.train[num_steps](state, train_data)
                running = wait_for_previous_call(running, state)
                step, batch = step + num_steps, batch + num_steps
                bar.update(num_steps)
                epoch_done = batch == steps_per_epoch
                if is_due(batch, config.train.log_every_steps, num_steps, steps_per_epoch):
                    now = time.perf_counter()
                    record = train_record(state.sums, step, steps_per_epoch, logged, now,
                                          examples_per_step, learning_rate_fn)
                    check_finite(state, step, steps_per_epoch, checkpointer)
                    bar.set_postfix(loss=f"{record['train_loss']:.4f}",
                                    acc=f"{record['train_accuracy']:.3f}")
                    log.write_step(record, print_line=bar.disable and not epoch_done)
                    logged = (step, now)
                # Every call is polled (every step, in a multi-host job); a stop at an epoch's
                # last call acts as its evaluation starts. A failed save stops the run here.
                signals.should_stop(step, num_steps)
                checkpointer.check()
                if not epoch_done:
                    continue
                unevaluated = {**train_record(state.sums, step, steps_per_epoch, epoch_begin,
                                              logged[1], examples_per_step, learning_rate_fn),
                               'epoch': step // steps_per_epoch,
                               'train_seconds': logged[1] - epoch_begin[1]}
                state = state.replace(sums=zero_sums_like(state))
            evaluation = evaluate(compiled.eval, state, eval_sets, signals, chief)
            if evaluation is None:
                break
            check_finite(state, step, steps_per_epoch, checkpointer, evaluation['test_loss'])
            history.append({**merge_records(unevaluated, evaluation), 'epoch_seconds':
                            unevaluated['train_seconds'] + evaluation['eval_seconds']})
            epoch, unevaluated = history[-1]['epoch'], None
            log.write_epoch(history)
            if is_due(epoch, config.train.checkpoint_every_epochs, last=num_epochs):
                checkpointer.save(step, state, history)
            signals.should_stop(step)
            train_data = train_data.replace(batches=epoch_batches(epoch + 1))
            epoch_begin = logged = (step, time.perf_counter())
        if signals.stopped and (step < total_steps or unevaluated):
            check_finite(state, step, steps_per_epoch, checkpointer)
            checkpointer.save(step, state, history + ([unevaluated] if unevaluated else []))
            raise TrainingInterrupted(signals.signum, step)

        num_params = count_params(state.params) // config.num_seeds  # One member's.
        results = summarize_run(history, num_params=num_params,
                                train_flops_per_step=compiled.train_flops_per_step,
                                compile_seconds=compiled.seconds,
                                examples_per_step=examples_per_step)
        if chief:
            checkpointing.write_json_atomic(os.path.join(workdir, checkpointing.RESULTS_FILE),
                                            results)
    return results


def model_results(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The final and the best test metrics of one model's history."""
    final = history[-1]
    best = max(history, key=lambda record: record['test_accuracy'])
    return {key: final[key] for key in ('test_accuracy', 'test_loss', 'val_accuracy', 'val_loss',
                                        'train_accuracy', 'train_loss') if key in final} | {
        'best_test_accuracy': best['test_accuracy'], 'best_epoch': best['epoch']}


def summarize_run(history: list[dict[str, Any]], *, num_params: int,
                  train_flops_per_step: float, compile_seconds: float,
                  examples_per_step: int) -> dict[str, Any]:
    """The numbers a sweep table or a paper needs from one finished run.

    For a population, the model's numbers are the means over its members, with their standard
    deviations (`<key>_std`), and 'members' lists each member's; examples/sec counts every
    member's examples.
    """
    final = history[-1]
    results = model_results(history)
    if 'members' in final:
        members = [model_results([{**record, **record['members'][i]} for record in history])
                   for i in range(len(final['members']))]
        for key in list(results):
            values = [member[key] for member in members]
            results[key], results[f'{key}_std'] = float(np.mean(values)), float(np.std(values,
                                                                                       ddof=1))
        results['members'] = members
    devices = jax.devices()
    return {
        'epochs': final['epoch'],
        'steps': final['step'],
        **results,
        'num_params': num_params,
        'train_flops_per_example': train_flops_per_step / examples_per_step,
        'examples_per_sec': float(np.median([r['examples_per_sec'] for r in history])),
        'train_seconds': sum(r['train_seconds'] for r in history),
        'wall_seconds': sum(r['epoch_seconds'] for r in history),
        'compile_seconds': compile_seconds,
        'device_kind': devices[0].device_kind,
        'num_devices': len(devices),
    }
