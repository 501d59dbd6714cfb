"""Sweep definitions: points as dicts of dotted config fields to values.

An experiment's `get_sweep()` returns such a list, for example
`product(axis('model.arch', ['vgg11', 'vgg16']), axis('model.width_ratio', [4, 8]))`.
A point may carry a name (`named`, `cumulative`): the sweep then names its directory and its
report row by it instead of by its fields, which suits points that each change many fields.
This module has no flags, so experiment files can import it from any CLI.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

Point = dict[str, Any]
NAME = 'name'  # The key of a point's name; not a config field.


def axis(field: str, values: Iterable[Any]) -> list[Point]:
    """One point per value of the dotted config `field`."""
    return [{field: value} for value in values]


def product(*axes: list[Point]) -> list[Point]:
    """Every combination of the axes' points (the first axis varies slowest)."""
    return [
        dict(itertools.chain.from_iterable(p.items() for p in combo))
        for combo in itertools.product(*axes)
    ]


def chain(*sweeps: list[Point]) -> list[Point]:
    """The points of several sweeps, one after another."""
    return [point for sweep in sweeps for point in sweep]


def named(name: str, point: Point) -> Point:
    """`point` under the name `name`."""
    return {NAME: name, **point}


def cumulative(*steps: tuple[str, Point]) -> list[Point]:
    """An ablation: one named point per step, each with its own fields and every earlier step's
    (a later step's value of a field wins)."""
    points: list[Point] = []
    fields: Point = {}
    for name, point in steps:
        fields = {**fields, **point}
        points.append(named(name, fields))
    return points


def shown_fields(point: Point) -> Point:
    """What names the point in its directory and report row: its fields, or for a named point
    its name (and its seed)."""
    if NAME not in point:
        return point
    return {key: point[key] for key in (NAME, 'seed') if key in point}


def point_name(point: Point) -> str:
    """The point's directory name: 'model.width_ratio=4,seed=1', or 'NAME,seed=1'."""

    def text(value: Any) -> str:
        if isinstance(value, (tuple, list)):
            return '-'.join(map(text, value))
        return str(value)

    return (
        ','.join(
            str(value) if field == NAME else f'{field}={text(value)}'
            for field, value in shown_fields(point).items()
        )
        or 'base'
    )
