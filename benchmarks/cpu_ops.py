"""Where a config's training step spends its convolution time on this CPU, layer by layer, and
the limit it sets: each 3x3 convolution's forward pass, kernel gradient and input gradient in
XLA (what vgg_flax's step runs) and in PyTorch (channels_last, oneDNN), against a plain matmul
of the same FLOPs in XLA (M = batch x height x width, K = 9 x input channels, N = output
channels), the rate this CPU reaches on dense arithmetic of that shape.

  pip install -r benchmarks/requirements.txt
  python benchmarks/cpu_ops.py --config=experiments/native_28px.py [--batch_size=128]

Milliseconds per call, median of repeats after warm-up; GFLOP/s counts 2 x M x K x N per pass.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from torch_reference import torch  # Where PyTorch is missing, it says so in one line.

from vgg_flax import config_utils, environment, models

REPEATS, CALLS = 5, 10


def milliseconds(call: Callable[[], Any], sync: Callable[[Any], Any] = lambda r: r) -> float:
    for _ in range(3):
        sync(call())
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(CALLS):
            result = call()
        sync(result)
        times.append((time.perf_counter() - start) / CALLS * 1e3)
    return statistics.median(times)


def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )


def xla_passes(batch: int, side: int, cin: int, cout: int) -> dict[str, float]:
    """Forward, kernel-gradient and input-gradient milliseconds of one convolution in XLA."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, side, side, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((batch, side, side, cout)), jnp.float32)
    forward = jax.jit(conv)
    kernel_grad = jax.jit(jax.grad(lambda k, x, dy: jnp.vdot(conv(x, k), dy)))
    input_grad = jax.jit(jax.grad(lambda x, k, dy: jnp.vdot(conv(x, k), dy)))
    times = {
        'forward': milliseconds(lambda: forward(x, kernel), jax.block_until_ready),
        'kernel_grad': milliseconds(lambda: kernel_grad(kernel, x, dy), jax.block_until_ready),
    }
    if cin > 1:  # The first layer's input needs no gradient.
        times['input_grad'] = milliseconds(lambda: input_grad(x, kernel, dy), jax.block_until_ready)
    m, k = batch * side * side, 9 * cin
    a = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((k, cout)), jnp.float32)
    times['matmul'] = milliseconds(lambda: jnp.matmul(a, b), jax.block_until_ready)
    return times


def torch_passes(batch: int, side: int, cin: int, cout: int) -> dict[str, float]:
    """Forward and forward+backward milliseconds of the same convolution in PyTorch."""
    layer = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    layer = layer.to(memory_format=torch.channels_last)
    x = torch.randn(batch, cin, side, side).to(memory_format=torch.channels_last)
    x.requires_grad_(cin > 1)
    dy = torch.randn(batch, cout, side, side).to(memory_format=torch.channels_last)
    with torch.no_grad():
        forward = milliseconds(lambda: layer(x))

    def forward_backward() -> None:
        layer.zero_grad()
        layer(x).backward(dy)

    return {'forward': forward, 'forward_backward': milliseconds(forward_backward)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--config', required=True, help='an experiment file')
    parser.add_argument('--batch_size', type=int, default=0, help="0: the config's")
    args = parser.parse_args()
    config = config_utils.load_config(args.config)
    batch = args.batch_size or config.train.batch_size
    side = config.data.image_size
    blocks = models.conv_arch_for(models.full_width_blocks(config.model), config.model.width_ratio)
    print(
        f'{args.config}, batch {batch}, {side} px; jax {jax.__version__}, torch {torch.__version__}'
    )
    print(
        'layer                 MFLOP  XLA fwd  kgrad  xgrad   sum  GFLOP/s | torch fwd  '
        'fwd+bwd GFLOP/s | matmul GFLOP/s'
    )
    totals = np.zeros(3)
    cin = 1
    for num_convs, cout in blocks:
        for _ in range(num_convs):
            mflop = 2 * batch * side * side * 9 * cin * cout / 1e6
            ours, theirs = xla_passes(batch, side, cin, cout), torch_passes(batch, side, cin, cout)
            passes = 3 if cin > 1 else 2
            theirs_rate = mflop * passes / theirs['forward_backward']
            ours_sum = ours['forward'] + ours['kernel_grad'] + ours.get('input_grad', 0.0)
            totals += ours_sum, theirs['forward_backward'], ours['matmul'] * passes
            print(
                f'{side:>3}px {cin:>3}->{cout:<4} {mflop:>9.0f} {ours["forward"]:>8.2f} '
                f'{ours["kernel_grad"]:>6.2f} {ours.get("input_grad", 0.0):>6.2f} '
                f'{ours_sum:>5.2f} {mflop * passes / ours_sum:>8.1f} | {theirs["forward"]:>9.2f} '
                f'{theirs["forward_backward"]:>8.2f} {theirs_rate:>7.1f}'
                f' | {mflop / ours["matmul"]:>14.1f}',
                flush=True,
            )
            cin = cout
        side //= 2
    print(
        f'all convolutions, forward and backward: XLA {totals[0]:.1f} ms, PyTorch {totals[1]:.1f}'
        f' ms, the same FLOPs as XLA matmuls {totals[2]:.1f} ms'
    )


if __name__ == '__main__':
    environment.tune_cpu_backend()
    main()
