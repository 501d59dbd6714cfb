"""Data augmentation inside the compiled train step: random translation, horizontal flip and
random erasing, on the device, on the gathered uint8 28x28 batch before it is resized.

The key is folded from the run's dropout key and the step, so a run stays deterministic and a
resume exact. Everything is off by default (`config.augment`), and then the step does not call
this module at all: the lesson's recipe trains exactly as without it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections


@dataclasses.dataclass(frozen=True)
class Augment:
    """`config.augment` as a hashable value, static in the compiled step (`config_schema` has
    each field's default and meaning)."""

    translate: int  # Pixels of the 28x28 source to pad by and crop at random.
    flip: bool
    erase_prob: float
    erase_area: tuple[float, float]
    erase_aspect: tuple[float, float]

    @property
    def active(self) -> bool:
        return bool(self.translate or self.flip or self.erase_prob)


def from_config(augment_config: ml_collections.ConfigDict) -> Augment:
    """`config.augment` (checked by `config_schema.validate`) as an `Augment`."""
    values = augment_config.to_dict()
    return Augment(
        values['translate'],
        values['flip'],
        float(values['erase_prob']),
        _pair(values['erase_area']),
        _pair(values['erase_aspect']),
    )


def _pair(values: Any) -> tuple[float, float]:
    low, high = values
    return float(low), float(high)


def augment(images: jax.Array, key: jax.Array, spec: Augment) -> jax.Array:
    """`images` (uint8, (B, H, W, C)) augmented per image as `spec` says; same shape and dtype."""
    translate_key, flip_key, erase_key = jax.random.split(key, 3)
    if spec.translate:
        images = _translate(images, translate_key, spec.translate)
    if spec.flip:
        flip = jax.random.bernoulli(flip_key, 0.5, (images.shape[0], 1, 1, 1))
        images = jnp.where(flip, images[:, :, ::-1], images)
    if spec.erase_prob:
        images = _erase(images, erase_key, spec)
    return images


def _translate(images: jax.Array, key: jax.Array, pixels: int) -> jax.Array:
    """Each image shifted by up to `pixels` in each direction, the uncovered border black."""
    offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * pixels + 1)
    return jax.vmap(lambda image, offset: shift(image[None], offset, pixels)[0])(images, offsets)


def shift(images: jax.Array, offset: jax.Array, pixels: int) -> jax.Array:
    """`images` ((B, H, W, C)) padded by `pixels` and cropped back at (row, column) `offset`,
    each from 0 to 2 * `pixels`: shifted by `pixels` - `offset`, the uncovered border black."""
    padded = jnp.pad(images, ((0, 0), (pixels, pixels), (pixels, pixels), (0, 0)))
    return jax.lax.dynamic_slice(padded, (0, offset[0], offset[1], 0), images.shape)


def _erase(images: jax.Array, key: jax.Array, spec: Augment) -> jax.Array:
    """With probability `spec.erase_prob`, a rectangle of each image set to uniform noise."""
    batch, height, width, _ = images.shape
    keys = jax.random.split(key, 6)
    apply = jax.random.bernoulli(keys[0], spec.erase_prob, (batch,))
    area = (
        jax.random.uniform(keys[1], (batch,), minval=spec.erase_area[0], maxval=spec.erase_area[1])
        * height
        * width
    )
    log_aspect = jax.random.uniform(
        keys[2],
        (batch,),
        minval=math.log(spec.erase_aspect[0]),
        maxval=math.log(spec.erase_aspect[1]),
    )
    h = jnp.clip(jnp.round(jnp.sqrt(area * jnp.exp(log_aspect))), 1, height).astype(jnp.int32)
    w = jnp.clip(jnp.round(jnp.sqrt(area / jnp.exp(log_aspect))), 1, width).astype(jnp.int32)
    top = (jax.random.uniform(keys[3], (batch,)) * (height - h + 1)).astype(jnp.int32)
    left = (jax.random.uniform(keys[4], (batch,)) * (width - w + 1)).astype(jnp.int32)
    rows, cols = jnp.arange(height), jnp.arange(width)
    inside = (
        ((rows[None, :] >= top[:, None]) & (rows[None, :] < (top + h)[:, None]))[:, :, None]
        & ((cols[None, :] >= left[:, None]) & (cols[None, :] < (left + w)[:, None]))[:, None]
        & apply[:, None, None]
    )
    noise = jax.random.randint(keys[5], images.shape, 0, 256).astype(images.dtype)
    return jnp.where(inside[..., None], noise, images)
