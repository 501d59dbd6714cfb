"""Throughput, compile time, memory and MFU of a config's training step and loop.

  python -m vgg_flax.benchmark --config=experiments/d2l_vgg11.py [--data=random|config]
      [--steps=30 --repeats=5 --loop_steps=N] [--output=result.json] [--profile_dir=DIR]
      [--config.model.dtype=bfloat16 ...]

Measures, after warm-up, with the median and spread of `--repeats` timings:
- the compiled train step alone (images/sec, MFU from XLA's FLOP count over the device's peak),
  and with `--config.train.steps_per_call=K` also the same steps K to a call under one
  compiled loop, which the training loop then uses too;
- the whole training loop of `vgg_flax.train` (input pipeline, metric syncs, evaluation);
- compile time, peak device memory;
- with `--profile_dir`, a profiler trace of the step and where its time goes (`profiling`).
`--data=random` uses random bytes shaped like Fashion-MNIST; `--data=config` the config's data.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from vgg_flax import (
    cli,
    device_data,
    distributed,
    environment,
    errors,
    input_pipeline,
    metric_writers,
    models,
    population,
    profiling,
    train,
    train_state,
    train_steps,
    validation,
)

# Dense peak FLOP/s by device kind (substring of jax's device_kind) and compute dtype. float32
# convolutions and matmuls run as TF32 on tensor cores by default, so float32 uses the TF32 peak.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    'H200': {'bfloat16': 989e12, 'float16': 989e12, 'float32': 494e12},
    'H100': {'bfloat16': 989e12, 'float16': 989e12, 'float32': 494e12},
    'A100': {'bfloat16': 312e12, 'float16': 312e12, 'float32': 156e12},
    'V100': {'bfloat16': 125e12, 'float16': 125e12, 'float32': 15.7e12},
}
RANDOM_TRAIN, RANDOM_TEST = 60_000, 10_000
PROFILE_CALLS = 10

_DATA = flags.DEFINE_enum(
    'data',
    'random',
    ['random', 'config'],
    "Random bytes shaped like Fashion-MNIST, or the config's data.",
)
_STEPS = flags.DEFINE_integer('steps', 30, 'Train steps per timed repeat.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats of the step benchmark.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
_LOOP_STEPS = flags.DEFINE_integer(
    'loop_steps',
    None,
    'Steps per epoch of the loop run (default: a whole epoch of the training data); 0 skips it.',
)
_OUTPUT = flags.DEFINE_string('output', None, 'Write the result as JSON here.')
_PROFILE_DIR = flags.DEFINE_string(
    'profile_dir',
    None,
    f'Trace {PROFILE_CALLS} train steps into this directory and print where their time goes.',
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
    for name, peaks in PEAK_FLOPS.items():
        if name in device_kind:
            return peaks[dtype]
    return None


def random_split(num_examples: int, seed: int) -> input_pipeline.Split:
    rng = np.random.default_rng(seed)
    return input_pipeline.Split(
        images=rng.integers(0, 256, (num_examples, *input_pipeline.IMAGE_SHAPE), dtype=np.uint8),
        labels=rng.integers(0, 10, num_examples).astype(np.int32),
    )


def write_idx_dir(
    directory: str, train_split: input_pipeline.Split, test_split: input_pipeline.Split
) -> None:
    """Writes splits as the four IDX files, so the real training loop can read them."""
    for split, names in zip(
        (train_split, test_split), input_pipeline.IDX_FILES.values(), strict=True
    ):
        for name, array in zip(names, (split.images[..., 0], split.labels), strict=True):
            input_pipeline.write_idx(os.path.join(directory, name), array)


def median_and_range(values: list[float]) -> dict[str, float]:
    return {
        'median': float(np.median(values)),
        'min': float(np.min(values)),
        'max': float(np.max(values)),
    }


def time_calls(
    fn: Any, state: Any, data: Any, calls: int, repeats: int, warmup: int
) -> tuple[list[float], Any]:
    """Seconds of each of `repeats` timings of `calls` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        state = fn(state, data)
    jax.block_until_ready(state)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            state = fn(state, data)
        jax.block_until_ready(state)
        seconds.append(time.perf_counter() - start)
    return seconds, state


def step_inputs(
    config: ml_collections.ConfigDict, train_split: input_pipeline.Split, mesh: jax.sharding.Mesh
) -> tuple[train_state.TrainState, device_data.TrainData]:
    """A fresh state and the split on the devices with one epoch's batches, as a run has them."""
    device_data.check_fits_devices(config, mesh)
    init_key, dropout_key, shuffle_key = population.run_keys(config)
    state = train_state.create_train_state(config, init_key, mesh=mesh)
    replicated = distributed.replicated(mesh)
    batches = device_data.batch_maker(config, mesh)(
        shuffle_key, 0, len(train_split), config.train.batch_size
    )
    images, labels = (
        distributed.put(a, replicated) for a in (train_split.images, train_split.labels)
    )
    return state, device_data.TrainData(images, labels, batches, dropout_key)


def benchmark_step(
    config: ml_collections.ConfigDict,
    train_split: input_pipeline.Split,
    steps: int,
    repeats: int,
    warmup: int,
    profile_dir: str | None = None,
) -> dict[str, Any]:
    """The compiled step alone, data-parallel over all devices, on the on-device dataset.

    With `config.train.steps_per_call` above 1, also the same steps run that many to a call
    under one compiled loop, which shows what dispatching each step from Python costs. With
    `profile_dir`, `PROFILE_CALLS` steps are traced there and summarised per op.
    """
    steps_per_call = config.train.steps_per_call
    mesh = distributed.create_mesh()
    state, data = step_inputs(config, train_split, mesh)
    options = train_steps.step_options(config)
    examples_per_step = config.train.batch_size * config.population_size  # Of every member.

    def measure(num_steps: int) -> tuple[jax.stages.Lowered, Any, dict[str, Any]]:
        """The step lowered and compiled to run `num_steps` to a call, and its compile time and
        rates."""
        nonlocal state
        start = time.perf_counter()
        lowered = train_steps.lower_train_step(state, data, options, num_steps)
        fn = lowered.compile()
        compile_seconds = time.perf_counter() - start
        calls = math.ceil(steps / num_steps)
        seconds, state = time_calls(fn, state, data, calls, repeats, warmup)
        rates = [calls * num_steps * examples_per_step / s for s in seconds]
        return (
            lowered,
            fn,
            {'compile_seconds': compile_seconds, 'images_per_sec': median_and_range(rates)},
        )

    lowered, step_fn, result = measure(1)
    if profile_dir:

        def call() -> Any:
            nonlocal state
            state = step_fn(state, data)
            return state

        result['profile'] = profiling.summarize_trace(
            profiling.trace_calls(call, PROFILE_CALLS, profile_dir), PROFILE_CALLS
        )
    flops = train_steps.flops_of(lowered)
    result.update(
        flops_per_step=flops,
        num_devices=mesh.size,
        achieved_flops=flops * result['images_per_sec']['median'] / examples_per_step,
    )
    result['compiled_loop'] = (
        {'steps_per_call': steps_per_call, **measure(steps_per_call)[2]}
        if steps_per_call > 1
        else None
    )
    return result


def benchmark_loop(
    config: ml_collections.ConfigDict,
    train_split: input_pipeline.Split,
    test_split: input_pipeline.Split,
    loop_steps: int | None,
    data_dir: str,
) -> dict[str, Any]:
    """Two epochs of `train.train_and_evaluate`; the second (warm) one is measured.

    Epochs of `loop_steps` steps (default: the whole training split) and evaluation on as many
    test images (at most the whole test split).
    """
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.source, config.data.idx_dir = 'idx', data_dir
    config.data.max_train_examples = min(
        (loop_steps or len(train_split)) * config.train.batch_size, len(train_split)
    )
    config.data.max_test_examples = min(config.data.max_train_examples, len(test_split))
    config.train.num_epochs = 2
    config.train.checkpoint_every_epochs = 10**6  # Saves only at the end.
    with tempfile.TemporaryDirectory() as workdir:
        results = train.train_and_evaluate(config, workdir)
        warm = metric_writers.read_history(workdir)[-1]
    return {
        'images_per_sec': warm['examples_per_sec'],
        'eval_images_per_sec': config.data.max_test_examples / warm['eval_seconds'],
        'compile_seconds': results['compile_seconds'],
        'epoch_images': config.data.max_train_examples,
    }


def peak_memory_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def run(
    config: ml_collections.ConfigDict,
    data: str,
    steps: int,
    repeats: int,
    warmup: int,
    loop_steps: int | None,
    profile_dir: str | None = None,
) -> dict[str, Any]:
    validation.validate_config(config)
    with tempfile.TemporaryDirectory() as data_dir:
        if data == 'random':
            train_split, test_split = random_split(RANDOM_TRAIN, 0), random_split(RANDOM_TEST, 1)
        else:
            train_split = input_pipeline.load_split(config.data, 'train')
            test_split = input_pipeline.load_split(config.data, 'test')
        write_idx_dir(data_dir, train_split, test_split)
        step = benchmark_step(config, train_split, steps, repeats, warmup, profile_dir)
        loop = (
            benchmark_loop(config, train_split, test_split, loop_steps, data_dir)
            if loop_steps != 0
            else None
        )
    env = environment.describe()
    peak = peak_flops(env['device_kind'], config.model.dtype)
    return {
        'config': {
            'arch': models.arch_name(config.model),
            'width_ratio': config.model.width_ratio,
            'image_size': config.data.image_size,
            'batch_size': config.train.batch_size,
            'dtype': config.model.dtype,
            'use_bn': config.model.use_bn,
            # With the above, the network a peer needs to build the same step.
            'blocks': [list(block) for block in models.full_width_blocks(config.model)],
            'dense_features': list(config.model.dense_features),
            'dropout_rate': config.model.dropout_rate,
            'data': data,
            'first_conv': models.resolve_first_conv(config.model.first_conv, jax.default_backend()),
            'conv_impl': config.model.conv_impl,
            'steps_per_call': config.train.steps_per_call,
            'population_size': config.population_size,
            # What a peer's step must also do to be the same step.
            'train_step': {
                'learning_rate': config.train.learning_rate,
                'momentum': config.train.momentum,
                'nesterov': config.train.nesterov,
                'weight_decay': config.train.weight_decay,
                'label_smoothing': config.train.label_smoothing,
                'ema_decay': config.train.ema_decay,
                'translate': config.augment.translate,
                'flip': config.augment.flip,
                'erase_prob': config.augment.erase_prob,
            },
        },
        'step': step,
        'loop': loop,
        'loop_vs_step': (
            loop['images_per_sec'] / step['images_per_sec']['median'] if loop else None
        ),
        'peak_memory_bytes': peak_memory_bytes(),
        'peak_flops_per_device': peak,
        'mfu': step['achieved_flops'] / (peak * step['num_devices']) if peak else None,
        'environment': env,
    }


def cost_lines(result: dict[str, Any]) -> list[str]:
    """The compile time, FLOPs, memory and MFU lines of the printed result."""
    c, step, loop = result['config'], result['step'], result['loop']
    compiled_loop = step['compiled_loop']
    memory = result['peak_memory_bytes']
    examples_per_step = c['batch_size'] * c['population_size']
    return [
        f'compile            {step["compile_seconds"]:>10.1f} s (train step)'
        + (
            f'; {compiled_loop["compile_seconds"]:.1f} s ({compiled_loop["steps_per_call"]} steps '
            'per call)'
            if compiled_loop
            else ''
        )
        + (f'; {loop["compile_seconds"]:.1f} s (loop: train + eval step)' if loop else ''),
        f'FLOPs per image    {step["flops_per_step"] / examples_per_step / 1e9:>10.3f} G '
        '(train step, XLA cost analysis)',
        'peak memory        '
        + (
            f'{memory / 2**30:>10.2f} GiB'
            if memory is not None
            else '       n/a (this backend reports none)'
        ),
        'MFU                '
        + (
            f'{result["mfu"]:>10.1%} of '
            f'{result["peak_flops_per_device"] / 1e12:.0f} TFLOP/s per '
            'device'
            if result['mfu'] is not None
            else '       n/a (no peak known for this device)'
        ),
        'peak table (dense TFLOP/s; float32 as TF32): '
        + '; '.join(
            f'{name} ' + '/'.join(f'{v / 1e12:g}' for v in peaks.values())
            for name, peaks in PEAK_FLOPS.items()
        )
        + ' (bf16/fp16/fp32)',
    ]


def format_result(result: dict[str, Any]) -> str:
    c, step, loop = result['config'], result['step'], result['loop']
    compiled_loop = step['compiled_loop']
    rate = step['images_per_sec']
    members = (
        f'a population of {c["population_size"]} (images/sec of all members), '
        if c['population_size'] > 1
        else ''
    )
    lines = [
        f'{c["arch"]} ratio {c["width_ratio"]}, {c["image_size"]} px, batch {c["batch_size"]}, '
        f'{members}'
        f'{c["dtype"]}{", BN" if c["use_bn"] else ""}, first conv {c["first_conv"]}, '
        f'other convs {c["conv_impl"]}, {c["data"]} data, on '
        f'{step["num_devices"]} x {result["environment"]["device_kind"]}',
        f'train step alone   {rate["median"]:>10,.1f} images/sec '
        f'(min {rate["min"]:,.1f}, max {rate["max"]:,.1f})',
    ]
    if compiled_loop:
        looped = compiled_loop['images_per_sec']
        lines.append(
            f'{compiled_loop["steps_per_call"]} steps per call'.ljust(19)
            + f'{looped["median"]:>10,.1f} images/sec (min {looped["min"]:,.1f}, max '
            f'{looped["max"]:,.1f}; {looped["median"] / rate["median"]:.1%} of one '
            'step per call)'
        )
    if loop:
        lines += [
            f'training loop      {loop["images_per_sec"]:>10,.1f} images/sec '
            f'({result["loop_vs_step"]:.1%} of the step alone'
            + (f'; {c["steps_per_call"]} steps per call)' if compiled_loop else ')'),
            f'evaluation         {loop["eval_images_per_sec"]:>10,.1f} images/sec',
        ]
    lines += cost_lines(result)
    if 'profile' in step:
        lines.append(profiling.format_summary(step['profile']))
    return '\n'.join(lines)


def main(argv: list[str]) -> int:
    environment.start_cli(argv, compilation_cache=False)  # Measure real compiles.
    try:
        result = run(
            cli.CONFIG.value,
            _DATA.value,
            _STEPS.value,
            _REPEATS.value,
            _WARMUP.value,
            _LOOP_STEPS.value,
            _PROFILE_DIR.value,
        )
    except (ValueError, errors.DataError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(format_result(result))
    if _OUTPUT.value:
        with open(_OUTPUT.value, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'wrote {_OUTPUT.value}')
    return 0


if __name__ == '__main__':
    flags.mark_flags_as_required(['config'])
    app.run(main, flags_parser=cli.parse_flags)
