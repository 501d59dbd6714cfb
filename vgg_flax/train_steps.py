"""The compiled steps: `train_step`, `eval_step` and `predict_step`, and their compilation.

`train_step` gathers its batch from the on-device dataset by the step number, preprocesses it,
runs forward and backward and updates the parameters and the epoch's running sums, all in one
compiled function; the host only dispatches it. A population's steps are each member's, mapped
over its members (`population.per_member`). The loop (`train`), the evaluator, the summary and
the benchmark all build their steps here.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vgg_flax import augment, input_pipeline
from vgg_flax.device_data import EvalData, TrainData
from vgg_flax.population import per_member
from vgg_flax.train_state import Sums, TrainState


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What the config fixes in the compiled steps: static values, not data."""

    image_size: int
    augment: augment.Augment
    label_smoothing: float
    ema_decay: float
    tta: bool  # Evaluate on the mean logits of each image and its mirror image.
    tta_translate: int  # And of each shift by up to this many pixels.


def step_options(config: ml_collections.ConfigDict) -> StepOptions:
    return StepOptions(
        config.data.image_size,
        augment.from_config(config.augment),
        config.train.label_smoothing,
        config.train.ema_decay,
        config.eval.tta,
        config.eval.tta_translate,
    )


def _add_to_sums(
    sums: Sums, losses: jax.Array, logits: jax.Array, labels: jax.Array, mask: jax.Array
) -> Sums:
    correct = (jnp.argmax(logits, axis=-1) == labels) & mask
    return {
        'loss_sum': sums['loss_sum'] + jnp.sum(jnp.where(mask, losses, 0.0)),
        'correct': sums['correct'] + jnp.sum(correct, dtype=jnp.int32),
        'count': sums['count'] + jnp.sum(mask, dtype=jnp.int32),
    }


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
    state: TrainState,
    images: jax.Array,
    indices: jax.Array,
    *,
    image_size: int,
    tta: bool = False,
    tta_translate: int = 0,
) -> jax.Array:
    """Logits of the examples at `indices` of the on-device `images`, in inference mode (with
    the moving average of the weights where the state has one); with `tta`, the mean of the
    logits of each image and its mirror image; with `tta_translate`, the mean over every shift
    of them by up to that many pixels, one forward pass per shift under a compiled loop."""
    variables = state.eval_variables()

    def logits_of(batch: jax.Array) -> jax.Array:
        x = input_pipeline.preprocess(batch, image_size)
        logits = state.apply_fn(variables, x, train=False)
        if tta:
            logits = (logits + state.apply_fn(variables, x[:, :, ::-1], train=False)) / 2
        return logits

    batch = images[indices]
    if not tta_translate:
        return logits_of(batch)
    span = jnp.arange(2 * tta_translate + 1)
    offsets = jnp.stack(jnp.meshgrid(span, span, indexing='ij'), axis=-1).reshape(-1, 2)

    def add_view(total: jax.Array, offset: jax.Array) -> tuple[jax.Array, None]:
        return total + logits_of(augment.shift(batch, offset, tta_translate)), None

    like = jax.eval_shape(logits_of, batch)
    total, _ = jax.lax.scan(add_view, jnp.zeros(like.shape, like.dtype), offsets)
    return total / offsets.shape[0]


def eval_step(
    state: TrainState, sums: Sums, data: EvalData, batch: jax.Array, options: StepOptions
) -> Sums:
    """Adds evaluation batch `batch` to `sums`; masked-out padding counts for nothing."""
    indices = data.batches[batch]
    logits = predict_step(
        state,
        data.images,
        indices,
        image_size=options.image_size,
        tta=options.tta,
        tta_translate=options.tta_translate,
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
