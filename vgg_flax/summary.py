"""Where the memory goes: per-block shapes, parameters, FLOPs and training-step memory.

  python -m vgg_flax.summary --config=experiments/d2l_vgg11.py [--config.model.width_ratio=1]

Like the lesson's shape printout, with totals. It traces with `jax.eval_shape` and compiles
(for XLA's cost and memory analyses) but never runs the network, so it answers in seconds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from vgg_flax import (
    cli,
    device_data,
    environment,
    input_pipeline,
    models,
    train_state,
    train_steps,
    validation,
)

# Fashion-MNIST's training split: its size sets what the on-device dataset costs.
TRAIN_EXAMPLES = input_pipeline.NUM_EXAMPLES['train']
CHANNELS = input_pipeline.IMAGE_SHAPE[-1]


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    output_shape: tuple[int, ...]  # Per example.
    params: int
    activation_bytes: int  # Per example, in the compute dtype.


@dataclasses.dataclass(frozen=True)
class Summary:
    layers: list[Layer]
    num_params: int
    forward_flops_per_example: float
    train_step_bytes: int  # XLA's estimate: arguments + outputs - aliased + temporaries.
    batch_size: int
    backend: str


def layer_table(config: ml_collections.ConfigDict) -> list[Layer]:
    """The input, each block and each dense layer, from shapes alone (`jax.eval_shape`)."""
    model = models.create_model(config.model)
    size = config.data.image_size
    x = jax.ShapeDtypeStruct((1, size, size, CHANNELS), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)

    def is_layer(module: Any, _) -> bool:
        return module.name is not None and module.name.startswith(('block', 'dense', 'head'))

    _, state = jax.eval_shape(
        functools.partial(model.apply, train=False, capture_intermediates=is_layer), variables, x
    )
    itemsize = jnp.dtype(models.DTYPES[config.model.dtype]).itemsize
    layers = [Layer('input', x.shape[1:], 0, int(np.prod(x.shape[1:])) * itemsize)]
    for name, captured in state['intermediates'].items():
        (output,) = captured['__call__']
        params = train_state.count_params(variables['params'][name])
        layers.append(
            Layer(
                name,
                output.shape[1:],
                params,
                int(np.prod(output.shape[1:])) * output.dtype.itemsize,
            )
        )
    return layers


def summarize(config: ml_collections.ConfigDict) -> Summary:
    """Layer table, forward FLOPs per example and the memory of one training step."""
    validation.validate_config(config)
    # The network's FLOPs however its convolutions are computed: counted as XLA counts its own
    # convolution, without the taps on the padding that the other forms multiply by zero.
    counted = config.model.copy_and_resolve_references()
    counted.first_conv = counted.conv_impl = 'lax'
    model = models.create_model(counted)
    size = config.data.image_size
    state = jax.eval_shape(
        lambda: train_state.init_train_state(config, jax.random.key(0), num_channels=CHANNELS)
    )
    one_image = jax.ShapeDtypeStruct((1, size, size, CHANNELS), jnp.float32)
    forward = jax.jit(functools.partial(model.apply, train=False)).lower(
        {'params': state.params, 'batch_stats': state.batch_stats}, one_image
    )

    batch_size = config.train.batch_size
    images = jax.ShapeDtypeStruct((TRAIN_EXAMPLES, *input_pipeline.IMAGE_SHAPE), jnp.uint8)
    labels = jax.ShapeDtypeStruct((TRAIN_EXAMPLES,), jnp.int32)
    batches = jax.ShapeDtypeStruct((TRAIN_EXAMPLES // batch_size, batch_size), jnp.int32)
    step = train_steps.lower_train_step(
        state,
        device_data.TrainData(images, labels, batches, jax.random.key(0)),  # type: ignore
        train_steps.step_options(config),
    ).compile()
    memory = step.memory_analysis()
    if memory is None:
        raise ValueError(f'{jax.default_backend()} reports no memory analysis of a compiled step.')
    step_bytes = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    return Summary(
        layers=layer_table(config),
        num_params=train_state.count_params(state.params),
        forward_flops_per_example=train_steps.flops_of(forward),
        train_step_bytes=int(step_bytes),
        batch_size=batch_size,
        backend=jax.default_backend(),
    )


def format_summary(config: ml_collections.ConfigDict, summary: Summary) -> str:
    size = config.data.image_size
    lines = [
        f'{models.arch_name(config.model)}, width ratio {config.model.width_ratio}, '
        f'{"BN, " if config.model.use_bn else ""}{size}x{size}x{CHANNELS} input, '
        f'{config.model.dtype}',
        f'{"layer":<8} {"output shape":>14} {"params":>12} {"activations/img":>16}',
    ]
    for layer in summary.layers:
        shape = 'x'.join(map(str, layer.output_shape))
        lines.append(
            f'{layer.name:<8} {shape:>14} {layer.params:>12,} '
            f'{layer.activation_bytes / 1024:>12.1f} KiB'
        )
    lines += [
        f'parameters: {summary.num_params:,} ({summary.num_params * 4 / 2**20:.1f} MiB float32)',
        f'forward FLOPs per image: {summary.forward_flops_per_example / 1e9:.3f} G '
        '(XLA cost analysis)',
        f'training step at batch {summary.batch_size}: about '
        f'{summary.train_step_bytes / 2**20:,.0f} MiB (XLA memory analysis on '
        f'{summary.backend}: state, on-device dataset, activations and temporaries)',
    ]
    return '\n'.join(lines)


def main(argv: list[str]) -> None:
    environment.start_cli(argv)
    try:
        summary = summarize(cli.CONFIG.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    print(format_summary(cli.CONFIG.value, summary))


if __name__ == '__main__':
    flags.mark_flags_as_required(['config'])
    app.run(main, flags_parser=cli.parse_flags)
