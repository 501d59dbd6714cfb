"""The train state and what makes it: the optimiser with its learning-rate schedule, the
initial state of one model or of a population (`population`), and the running sums of the epoch
in progress, which the steps add to and the loop reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state as flax_train_state

from vgg_flax import distributed, models
from vgg_flax.population import per_member

Sums = dict[str, jax.Array]


class TrainState(flax_train_state.TrainState):
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
        init_population if config.population_size > 1 else init_train_state,
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


def mean_metrics(sums: Sums) -> tuple[np.ndarray, np.ndarray]:
    """(mean loss, accuracy) from running sums fetched to the host; for a population, arrays
    of one value per member."""
    host = jax.device_get(sums)
    count = np.maximum(host['count'], 1)
    return host['loss_sum'] / count, host['correct'] / count
