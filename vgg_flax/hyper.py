"""Sweep definitions: points as dicts of dotted config fields to values.

An experiment's `get_sweep()` returns such a list, for example
`product(axis('model.arch', ['vgg11', 'vgg16']), axis('model.width_ratio', [4, 8]))`.
This module has no flags, so experiment files can import it from any CLI.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

Point = dict[str, Any]


def axis(field: str, values: Iterable[Any]) -> list[Point]:
    """One point per value of the dotted config `field`."""
    return [{field: value} for value in values]


def product(*axes: list[Point]) -> list[Point]:
    """Every combination of the axes' points (the first axis varies slowest)."""
    return [dict(itertools.chain.from_iterable(p.items() for p in combo))
            for combo in itertools.product(*axes)]


def chain(*sweeps: list[Point]) -> list[Point]:
    """The points of several sweeps, one after another."""
    return [point for sweep in sweeps for point in sweep]
