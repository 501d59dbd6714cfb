"""VGG as blocks, not layers (D2L "Networks Using Blocks", Simonyan & Zisserman 2014).

A `VGGBlock` is `num_convs` 3x3 convolutions (SAME padding), each followed by ReLU (with
BatchNorm before the ReLU when `use_bn`), then a 2x2 max-pool with stride 2. `VGG` is a loop
over `conv_arch`, then a dense head. `create_model` builds one from `config.model`.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

# The convolutional part of configurations A, B, D and E of the VGG paper: (num_convs, features).
ARCHS: dict[str, tuple[tuple[int, int], ...]] = {
    'vgg11': ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),
    'vgg13': ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512)),
    'vgg16': ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),
    'vgg19': ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)),
}

KERNEL_INITS: dict[str, Callable[..., Any]] = {
    'xavier_uniform': nn.initializers.xavier_uniform(),
    'xavier_normal': nn.initializers.xavier_normal(),
    'he_uniform': nn.initializers.he_uniform(),
    'he_normal': nn.initializers.he_normal(),
    'lecun_uniform': nn.initializers.lecun_uniform(),
    'lecun_normal': nn.initializers.lecun_normal(),
}

BIAS_INITS: dict[str, Callable[..., Any]] = {
    'zeros': nn.initializers.zeros_init(),
    'normal': nn.initializers.normal(stddev=0.01),
}

DTYPES: dict[str, Any] = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max-pool with stride 2 that floors odd sizes (7 -> 3), as the lesson's MaxPool2D.

    Written as a crop, a reshape and a max rather than `nn.max_pool`: the same values, but its
    gradient is elementwise instead of XLA's select-and-scatter, which made the pooling
    backward pass of the first block cost twice as much on CPU.
    """
    batch, height, width, channels = x.shape
    x = x[:, : height // 2 * 2, : width // 2 * 2]
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


class Conv3x3(nn.Module):
    """A 3x3 SAME convolution with `nn.Conv`'s parameters ('kernel' in HWIO, 'bias'), computed
    as a subclass says, so that checkpoints move between the ways of computing it."""

    features: int
    dtype: Any = jnp.float32
    kernel_init: Callable[..., Any] = KERNEL_INITS['xavier_uniform']
    bias_init: Callable[..., Any] = BIAS_INITS['zeros']

    def kernel_and_bias(self, channels: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        kernel = self.param('kernel', self.kernel_init, (3, 3, channels, self.features))
        return kernel, self.param('bias', self.bias_init, (self.features,))


class ShiftedSumConv(Conv3x3):
    """A 3x3 SAME convolution as the sum of nine shifted copies of its input, each scaled.

    The parameters and the values are `nn.Conv`'s (products summed in float32, then cast to
    `dtype`). Meant for the first layer, where a grayscale image has one channel: XLA fuses this
    form with the ReLU and the pooling after it, while the cuDNN convolution it replaces is
    memory-bound on such an input (on an H200 the first block took about half of the recipe's
    step at 224 px).
    """

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        channels = x.shape[-1]
        kernel, bias = self.kernel_and_bias(channels)
        height, width = x.shape[1:3]
        padded = jnp.pad(x.astype(jnp.float32), ((0, 0), (1, 1), (1, 1), (0, 0)))
        y = bias
        for i in range(3):
            for j in range(3):
                for c in range(channels):
                    y = y + padded[:, i : i + height, j : j + width, c : c + 1] * kernel[i, j, c]
        return y.astype(self.dtype)


class PatchesConv(Conv3x3):
    """A 3x3 SAME convolution as one matmul: the nine shifted copies of the input stacked, then
    contracted with the kernel over taps and channels.

    The parameters and the values are `nn.Conv`'s (summed in another order). Meant for small
    feature maps on a CPU: XLA's CPU convolution of a 2x2 map is several times slower than this
    matmul of the same FLOPs (docs/performance.md), and VGG-11 at 32 px ends in two of them.
    """

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        channels = x.shape[-1]
        kernel, bias = self.kernel_and_bias(channels)
        height, width = x.shape[1:3]
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        taps = [padded[:, i : i + height, j : j + width] for i in range(3) for j in range(3)]
        y = jnp.einsum('nhwtc,tcf->nhwf', jnp.stack(taps, axis=3), kernel.reshape(9, channels, -1))
        return y + bias.astype(self.dtype)


class VGGBlock(nn.Module):
    """`num_convs` x (3x3 conv -> [BatchNorm] -> ReLU), then 2x2 max-pool, stride 2."""

    num_convs: int
    features: int
    use_bn: bool = False
    dtype: Any = jnp.float32
    kernel_init: Callable[..., Any] = KERNEL_INITS['xavier_uniform']
    bias_init: Callable[..., Any] = BIAS_INITS['zeros']
    first_conv: str = 'lax'  # 'shifted_sum': the first conv as a `ShiftedSumConv`.
    patches_up_to: int = 0  # Convs of maps of at most this many pixels are `PatchesConv`s.

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        for k in range(self.num_convs):
            if k == 0 and self.first_conv == 'shifted_sum':
                conv: Callable[..., nn.Module] = ShiftedSumConv
            elif x.shape[1] * x.shape[2] <= self.patches_up_to:
                conv = PatchesConv
            else:
                conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding='SAME')
            x = conv(
                self.features,
                dtype=self.dtype,
                kernel_init=self.kernel_init,
                bias_init=self.bias_init,
                name=f'Conv_{k}',
            )(x)
            if self.use_bn:
                x = nn.BatchNorm(
                    use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
                )(x)
            x = nn.relu(x)
        return max_pool_2x2(x)


class VGG(nn.Module):
    """VGG blocks from `conv_arch`, flatten, then Dense-ReLU-Dropout per `dense_features`."""

    conv_arch: Sequence[tuple[int, int]]
    num_classes: int = 10
    dense_features: Sequence[int] = (4096, 4096)
    dropout_rate: float = 0.5
    use_bn: bool = False
    dtype: Any = jnp.float32
    kernel_init: Callable[..., Any] = KERNEL_INITS['xavier_uniform']
    bias_init: Callable[..., Any] = BIAS_INITS['zeros']
    first_conv: str = 'lax'  # How the network's first conv is computed: 'lax' or 'shifted_sum'.
    patches_up_to: int = 0  # The other convs: `PatchesConv` on maps of at most this many pixels.

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Maps NHWC images to float32 logits of shape (batch, num_classes)."""
        if x.ndim != 4:
            raise ValueError(f'VGG expects NHWC images, got an input of shape {x.shape}.')
        least = min_image_size(len(self.conv_arch))
        if min(x.shape[1:3]) < least:
            raise ValueError(
                f'images of {x.shape[1]}x{x.shape[2]} are too small: {len(self.conv_arch)} VGG '
                f'blocks halve them {len(self.conv_arch)} times, so data.image_size must be at '
                f'least {least}.'
            )
        x = x.astype(self.dtype)
        for i, (num_convs, features) in enumerate(self.conv_arch):
            x = VGGBlock(
                num_convs,
                features,
                use_bn=self.use_bn,
                dtype=self.dtype,
                kernel_init=self.kernel_init,
                bias_init=self.bias_init,
                first_conv=self.first_conv if i == 0 else 'lax',
                patches_up_to=self.patches_up_to,
                name=f'block{i + 1}',
            )(x, train=train)
        x = x.reshape((x.shape[0], -1))
        for i, features in enumerate(self.dense_features):
            x = nn.Dense(
                features,
                dtype=self.dtype,
                kernel_init=self.kernel_init,
                bias_init=self.bias_init,
                name=f'dense{i + 1}',
            )(x)
            x = nn.relu(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            name='head',
        )(x)
        return x.astype(jnp.float32)


Blocks = tuple[tuple[int, int], ...]  # (number of 3x3 convs, output channels) per block.


def full_width_blocks(model_config: ml_collections.ConfigDict) -> Blocks:
    """`config.model.conv_arch` where given, else `config.model.arch`'s blocks (full width)."""
    if model_config.conv_arch:
        return tuple(tuple(block) for block in model_config.conv_arch)
    return ARCHS[model_config.arch]


def arch_name(model_config: ml_collections.ConfigDict) -> str:
    """'vgg11' and the like, or the custom blocks as `conv_arch` gives them."""
    if model_config.conv_arch:
        return f'conv_arch {full_width_blocks(model_config)}'
    return model_config.arch


def allowed_width_ratios(blocks: Blocks) -> list[int]:
    """The ratios that divide every conv width of `blocks` (1, 2, 4, ..., 64 for the VGGs)."""
    common = math.gcd(*(features for _, features in blocks))
    return [r for r in range(1, common + 1) if common % r == 0]


def conv_arch_for(blocks: Blocks, width_ratio: int) -> Blocks:
    """`blocks` with every width divided by `width_ratio` (the lesson's small net: 4)."""
    return tuple((num_convs, features // width_ratio) for num_convs, features in blocks)


def min_image_size(num_blocks: int) -> int:
    """Each block halves the image, so it must be at least 2**num_blocks pixels wide."""
    return 2**num_blocks


def resolve_first_conv(first_conv: str, backend: str) -> str:
    """'auto' is 'shifted_sum' on a GPU, where it is faster than cuDNN, and 'lax' elsewhere,
    where it is not (benchmarks/README.md has both measurements)."""
    if first_conv != 'auto':
        return first_conv
    return 'shifted_sum' if backend == 'gpu' else 'lax'


# On a CPU, the largest feature map (in pixels) whose convs `conv_impl='auto'` computes as
# `PatchesConv`s: a 2x2 map's was 3-5x faster so, a 4x4 map's not (docs/performance.md).
CPU_PATCHES_UP_TO = 4


def patches_up_to(conv_impl: str, backend: str) -> int:
    """How `VGG.patches_up_to` follows from `config.model.conv_impl` on `backend`."""
    if conv_impl == 'patches':
        return sys.maxsize
    if conv_impl == 'auto' and backend == 'cpu':
        return CPU_PATCHES_UP_TO
    return 0


def create_model(model_config: ml_collections.ConfigDict) -> VGG:
    """Builds the `VGG` that `config.model` describes (checked by `config_schema.validate`)."""
    return VGG(
        conv_arch=conv_arch_for(full_width_blocks(model_config), model_config.width_ratio),
        num_classes=model_config.num_classes,
        dense_features=tuple(model_config.dense_features),
        dropout_rate=model_config.dropout_rate,
        use_bn=model_config.use_bn,
        dtype=DTYPES[model_config.dtype],
        kernel_init=KERNEL_INITS[model_config.kernel_init],
        bias_init=BIAS_INITS[model_config.bias_init],
        first_conv=resolve_first_conv(model_config.first_conv, jax.default_backend()),
        patches_up_to=patches_up_to(model_config.conv_impl, jax.default_backend()),
    )
