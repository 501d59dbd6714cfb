"""Populations: `config.population_size` = N > 1 trains N copies of the model as one run.

Member i has seed `config.seed + i` (its own initialisation, dropout and shuffle) and is trained
by the same step as a single model, mapped over a train state stacked along a leading member
axis, on the one shared dataset. `run_keys` gives each member its seed's keys; `per_member` maps
a function of one model over the members.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections


def run_keys(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The keys for initialisation, dropout and shuffling from `config.seed`; for a population,
    each stacked over its members' seeds, so member i gets the keys of seed `config.seed + i`."""
    if config.population_size == 1:
        init, dropout, shuffle = jax.random.split(jax.random.key(config.seed), 3)
        return init, dropout, shuffle
    keys = jnp.stack(
        [
            jax.random.split(jax.random.key(config.seed + i), 3)
            for i in range(config.population_size)
        ]
    )
    return keys[:, 0], keys[:, 1], keys[:, 2]


def per_member(
    fn: Callable[..., Any], num_members: int, in_axes: Any = 0, out_axes: Any = 0
) -> Callable[..., Any]:
    """`fn` of one model, mapped over the leading member axis of a population of
    `num_members`; `fn` itself for a single model."""
    if num_members == 1:
        return fn
    return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes, axis_size=num_members)
