"""The train state, its optimiser and the compiled train and eval steps.

`train_step` gathers its batch from the on-device dataset by the step number, preprocesses it,
runs forward and backward and updates the parameters and the epoch's running sums, all in one
compiled function; the host only dispatches it. The loop (`train`), the evaluator, the summary
and the benchmark all build their steps here.

With `config.num_seeds` = N > 1 a run is a population: N copies of the model, member i with
seed `config.seed + i` (its own initialisation, dropout and shuffle), trained by the same step
mapped over a train state stacked along a leading member axis (`per_member`), on the one shared
dataset.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from vgg_flax import augment, distributed, input_pipeline, models

Sums = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """What the train step updates: parameters, optimiser state, BatchNorm statistics, the
    running sums of the epoch in progress (loss, correct predictions, examples) and how many
    steps gave a non-finite loss (counted on the device, checked on the host, never saved).

    `ema` is None, or with `config.train.ema_decay` the exponential moving average of the
    model's variables ({'params', 'batch_stats'}), which evaluation then uses.

    A population's state (`num_members` > 1) has a leading member axis on every array but
    `step`, which the members share.
    """

    batch_stats: Any
    sums: Sums
    nonfinite_steps: jax.Array
    ema: Any = None
    num_members: int = flax.struct.field(pytree_node=False, default=1)

    def eval_variables(self) -> dict[str, Any]:
        """The variables to predict with: the moving average where there is one."""
        if self.ema is not None:
            return self.ema
        return {'params': self.params, 'batch_stats': self.batch_stats}

    @property
    def is_population(self) -> bool:
        return self.num_members > 1

    def member_axes(self) -> TrainState:
        """The mapped axis of each array: every array's first but the shared step's."""
        return jax.tree.map(lambda _: 0, self).replace(step=None)


def per_member(
    fn: Callable[..., Any], num_members: int, in_axes: Any = 0, out_axes: Any = 0
) -> Callable[..., Any]:
    """`fn` of one model, mapped over the leading member axis of a population of
    `num_members`; `fn` itself for a single model."""
    if num_members == 1:
        return fn
    return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes, axis_size=num_members)


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What the config fixes in the compiled steps: static values, not data."""

    image_size: int
    augment: augment.Augment = dataclasses.field(default_factory=augment.Augment)
    label_smoothing: float = 0.0
    ema_decay: float = 0.0
    tta: bool = False  # Evaluate on the mean logits of each image and its mirror image.


def step_options(config: ml_collections.ConfigDict) -> StepOptions:
    return StepOptions(
        config.data.image_size,
        augment.from_config(config.augment),
        config.train.label_smoothing,
        config.train.ema_decay,
        config.eval.tta,
    )


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


def create_learning_rate_fn(
    train_config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
    """The configured schedule, with an optional linear warmup, as a function of the step."""
    lr = train_config.learning_rate
    warmup = train_config.warmup_epochs * steps_per_epoch
    total = train_config.num_epochs * steps_per_epoch
    if train_config.lr_schedule == 'cosine':
        main = optax.cosine_decay_schedule(lr, decay_steps=max(total - warmup, 1))
    elif train_config.lr_schedule == 'step':
        main = optax.piecewise_constant_schedule(
            lr,
            {
                epoch * steps_per_epoch - warmup: train_config.lr_decay_factor
                for epoch in train_config.lr_decay_epochs
            },
        )
    else:
        main = optax.constant_schedule(lr)
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def create_optimizer(
    train_config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
    """SGD (optionally with momentum) and L2 weight decay on kernels only."""
    sgd = optax.sgd(
        learning_rate_fn, momentum=train_config.momentum or None, nesterov=train_config.nesterov
    )
    if not train_config.weight_decay:
        return sgd

    def kernels_only(params: Any) -> Any:
        return jax.tree.map(lambda p: p.ndim > 1, params)

    return optax.chain(optax.add_decayed_weights(train_config.weight_decay, mask=kernels_only), sgd)


def init_train_state(
    config: ml_collections.ConfigDict,
    key: jax.Array,
    steps_per_epoch: int = 1,
    num_channels: int = 1,
) -> TrainState:
    """The initial state of one model for `config.data.image_size` images with `num_channels`
    (traceable).

    `steps_per_epoch` only shapes the learning-rate schedule, so any value gives a state to
    restore a checkpoint onto or to measure with.
    """
    model = models.create_model(config.model)
    tx = create_optimizer(config.train, create_learning_rate_fn(config.train, steps_per_epoch))
    size = config.data.image_size
    variables = model.init(key, jnp.zeros((1, size, size, num_channels), jnp.float32), train=False)
    batch_stats = variables.get('batch_stats', {})
    ema = (
        {'params': variables['params'], 'batch_stats': batch_stats}
        if config.train.ema_decay
        else None
    )
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables['params'],
        tx=tx,
        batch_stats=batch_stats,
        sums=zero_sums(),
        nonfinite_steps=jnp.zeros((), jnp.int32),
        ema=ema,
    )
    # An int32 array, not Python's 0, so fresh and restored states compile to the same step.
    return state.replace(step=jnp.zeros((), jnp.int32))


def init_population(
    config: ml_collections.ConfigDict,
    keys: jax.Array,
    steps_per_epoch: int = 1,
    num_channels: int = 1,
) -> TrainState:
    """`init_train_state` of each of `keys`, stacked along a leading axis; one shared step."""
    states = per_member(
        lambda key: init_train_state(config, key, steps_per_epoch, num_channels), len(keys)
    )(keys)
    return states.replace(step=states.step[0], num_members=len(keys))


def run_keys(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The keys for initialisation, dropout and shuffling from `config.seed`; for a population,
    each stacked over its members' seeds, so member i gets the keys of seed `config.seed + i`."""
    if config.num_seeds == 1:
        init, dropout, shuffle = jax.random.split(jax.random.key(config.seed), 3)
        return init, dropout, shuffle
    keys = jnp.stack(
        [jax.random.split(jax.random.key(config.seed + i), 3) for i in range(config.num_seeds)]
    )
    return keys[:, 0], keys[:, 1], keys[:, 2]


def create_train_state(
    config: ml_collections.ConfigDict,
    key: jax.Array,
    steps_per_epoch: int = 1,
    num_channels: int = 1,
    mesh: jax.sharding.Mesh | None = None,
) -> TrainState:
    """`init_train_state` (for a population, `init_population` with one key per member),
    compiled and run once; replicated over the devices of `mesh`, or with
    `config.members_over_devices` each member on one of them."""
    init = functools.partial(
        init_population if config.num_seeds > 1 else init_train_state,
        config,
        steps_per_epoch=steps_per_epoch,
        num_channels=num_channels,
    )
    sharding = None
    if mesh is not None:
        sharding = distributed.replicated(mesh)
        if config.members_over_devices:  # A population's: validation checks it.
            split = distributed.split_along(mesh, 0)
            sharding = jax.tree.map(lambda _: split, jax.eval_shape(init, key)).replace(
                step=sharding
            )
    return run_unoptimised(init, key, sharding=sharding)


def run_unoptimised(fn: Callable[..., Any], *args: Any, sharding: Any = None) -> Any:
    """`fn(*args)`, compiled for this one call (on a CPU without LLVM's optimisations: the same
    values in a fraction of the compile time, benchmarks/README), outputs placed with
    `sharding`."""
    options: dict[str, str | bool] | None = (
        {'xla_backend_optimization_level': '0'} if jax.default_backend() == 'cpu' else None
    )
    return jax.jit(fn, out_shardings=sharding).lower(*args).compile(compiler_options=options)(*args)


def count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def zero_sums(shape: tuple[int, ...] = ()) -> Sums:
    """Running sums of an epoch: summed loss, correct predictions and examples (for a
    population, each of shape (members,))."""
    return {
        'loss_sum': jnp.zeros(shape, jnp.float32),
        'correct': jnp.zeros(shape, jnp.int32),
        'count': jnp.zeros(shape, jnp.int32),
    }


def zero_sums_like(state: TrainState) -> Sums:
    """`zero_sums` for `state` (a single run's or a population's), placed as its members are."""
    return jax.device_put(zero_sums(state.nonfinite_steps.shape), state.nonfinite_steps.sharding)


def _add_to_sums(
    sums: Sums, losses: jax.Array, logits: jax.Array, labels: jax.Array, mask: jax.Array
) -> Sums:
    correct = (jnp.argmax(logits, axis=-1) == labels) & mask
    return {
        'loss_sum': sums['loss_sum'] + jnp.sum(jnp.where(mask, losses, 0.0)),
        'correct': sums['correct'] + jnp.sum(correct, dtype=jnp.int32),
        'count': sums['count'] + jnp.sum(mask, dtype=jnp.int32),
    }


def mean_metrics(sums: Sums) -> tuple[np.ndarray, np.ndarray]:
    """(mean loss, accuracy) from running sums fetched to the host; for a population, arrays
    of one value per member."""
    host = jax.device_get(sums)
    count = np.maximum(host['count'], 1)
    return host['loss_sum'] / count, host['correct'] / count


def train_step(state: TrainState, data: TrainData, options: StepOptions) -> TrainState:
    """One SGD step on batch `state.step % len(data.batches)` of the epoch's batches."""
    indices = data.batches[state.step % data.batches.shape[0]]
    images, y = data.images[indices], data.labels[indices]
    key = jax.random.fold_in(data.dropout_key, state.step)
    if options.augment.active:  # Static: without augmentation the step is the lesson's.
        images = augment.augment(images, jax.random.fold_in(key, 1), options.augment)
    x = input_pipeline.preprocess(images, options.image_size)

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
        logits, updates = state.apply_fn(
            {'params': params, 'batch_stats': state.batch_stats},
            x,
            train=True,
            rngs={'dropout': key},
            mutable=['batch_stats'],
        )
        if options.label_smoothing:
            targets = optax.smooth_labels(
                jax.nn.one_hot(y, logits.shape[-1]), options.label_smoothing
            )
            losses = optax.softmax_cross_entropy(logits, targets)
        else:
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return losses.mean(), (losses, logits, updates)

    (loss, (losses, logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    state = state.apply_gradients(
        grads=grads,
        batch_stats=updates.get('batch_stats', state.batch_stats),
        sums=_add_to_sums(state.sums, losses, logits, y, jnp.ones_like(y, dtype=bool)),
    )
    if state.ema is not None:
        state = state.replace(
            ema=update_ema(
                state.ema,
                {'params': state.params, 'batch_stats': state.batch_stats},
                options.ema_decay,
                state.step,
            )
        )
    return state.replace(
        nonfinite_steps=state.nonfinite_steps + (~jnp.isfinite(loss)).astype(jnp.int32)
    )


def update_ema(ema: Any, variables: Any, decay: float, updates: jax.Array | int) -> Any:
    """The moving average after its `updates`-th update with `variables`.

    The decay ramps up as min(decay, (1 + t) / (10 + t)), as TensorFlow's
    ExponentialMovingAverage does with `num_updates`: early on, the average would otherwise
    hold the random initialisation for thousands of steps.
    """
    rate = jnp.minimum(decay, (1.0 + updates) / (10.0 + updates))
    return jax.tree.map(lambda average, value: rate * average + (1 - rate) * value, ema, variables)


def predict_step(
    state: TrainState, images: jax.Array, indices: jax.Array, *, image_size: int, tta: bool = False
) -> jax.Array:
    """Logits of the examples at `indices` of the on-device `images`, in inference mode (with
    the moving average of the weights where the state has one); with `tta`, the mean of the
    logits of each image and its mirror image."""
    x = input_pipeline.preprocess(images[indices], image_size)
    variables = state.eval_variables()
    logits = state.apply_fn(variables, x, train=False)
    if tta:
        logits = (logits + state.apply_fn(variables, x[:, :, ::-1], train=False)) / 2
    return logits


def eval_step(
    state: TrainState, sums: Sums, data: EvalData, batch: jax.Array, options: StepOptions
) -> Sums:
    """Adds evaluation batch `batch` to `sums`; masked-out padding counts for nothing."""
    indices = data.batches[batch]
    logits = predict_step(
        state, data.images, indices, image_size=options.image_size, tta=options.tta
    )
    y = data.labels[indices]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return _add_to_sums(sums, losses, logits, y, data.masks[batch].astype(bool))


def lower_train_step(
    state: TrainState, data: TrainData, options: StepOptions, num_steps: int = 1
) -> jax.stages.Lowered:
    """`train_step` (each member's) lowered for these (possibly abstract) arguments.

    With `num_steps` > 1, one call runs that many steps under a compiled loop: one dispatch for
    all of them. The state is donated: its buffers are reused for the updated one.
    """
    member_data = TrainData(images=None, labels=None, batches=0, dropout_key=0)  # type: ignore
    step_fn = per_member(
        functools.partial(train_step, options=options),
        state.num_members,
        in_axes=(state.member_axes(), member_data),
        out_axes=state.member_axes(),
    )

    def steps(state: TrainState, data: TrainData) -> TrainState:
        return jax.lax.fori_loop(0, num_steps, lambda _, state: step_fn(state, data), state)

    return jax.jit(step_fn if num_steps == 1 else steps, donate_argnums=0).lower(state, data)


def compile_eval_step(state: TrainState, data: EvalData, options: StepOptions) -> Any:
    """`eval_step` (each member's), compiled ahead of time; the sums are donated."""
    step_fn = per_member(
        functools.partial(eval_step, options=options),
        state.num_members,
        in_axes=(state.member_axes(), 0, None, None),
    )
    return jax.jit(step_fn, donate_argnums=1).lower(state, state.sums, data, 0).compile()


def flops_of(lowered: jax.stages.Lowered) -> float:
    """FLOPs of one call of a lowered function, from XLA's cost analysis (0 if unknown).

    Counted on the lowered program, before the backend's passes: a GPU's compiled program
    calls cuDNN for its convolutions, which XLA's cost analysis counts as no FLOPs.
    """
    analysis: Any = lowered.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # Older jax returns one dict per device program.
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get('flops', 0.0))


class CompiledSteps(NamedTuple):
    train: dict[int, Any]  # The train step for a call of that many steps.
    eval: dict[str, Any]  # The eval step of each evaluation set.
    train_flops_per_step: float
    seconds: float  # Lowering and compiling them took.


def compile_steps(
    state: TrainState,
    train_data: TrainData,
    eval_sets: dict[str, EvalData],
    options: StepOptions,
    steps_per_call: int,
) -> CompiledSteps:
    """The train step compiled for calls of 1 and of `steps_per_call` steps and the eval step of
    each evaluation set, each lowered once (a lowering costs about as much as a compile from the
    cache)."""
    start = time.perf_counter()
    lowered = {n: lower_train_step(state, train_data, options, n) for n in {1, steps_per_call}}
    train_fns = {n: step.compile() for n, step in lowered.items()}
    eval_fns = {name: compile_eval_step(state, data, options) for name, data in eval_sets.items()}
    return CompiledSteps(train_fns, eval_fns, flops_of(lowered[1]), time.perf_counter() - start)
