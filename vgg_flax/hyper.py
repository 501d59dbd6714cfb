"""Sweep definitions: points as dicts of dotted config fields to values.

An experiment's `get_sweep()` returns such a list, for example
`product(axis('model.arch', ['vgg11', 'vgg16']), axis('model.width_ratio', [4, 8]))`.
A point may carry a name (`named`, `cumulative`): the sweep then names its directory and its
report row by it instead of by its fields, which suits points that each change many fields.
This module has no flags, so experiment files can import it from any CLI.
"""

from __future__ import annotations

import itertools
import math
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


def check_points(points: Any) -> list[Point]:
    """`points` as a list of points, or ValueError saying what is not one: a sweep is code, and a
    point of another shape would fail only once earlier points had trained, or be recorded as
    what it is not."""
    if isinstance(points, (str, bytes, dict)) or not isinstance(points, (list, tuple)):
        raise ValueError(
            f'returns {type(points).__name__}, not a list of points (dicts of dotted config '
            'fields to values, as hyper.axis and hyper.product build them).'
        )
    if not points:
        raise ValueError('returns no points; a sweep needs one at least (the base config: [{}]).')
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            raise ValueError(
                f'point {i} is of type {type(point).__name__}, not a dict of dotted config '
                'fields to values.'
            )
        for field, value in point.items():
            if not isinstance(field, str) or not field:
                raise ValueError(f'point {i} has the key {field!r}, not a dotted config field.')
            if field == NAME and not (isinstance(value, str) and value):
                raise ValueError(f'point {i} is named {value!r}: a name is a non-empty string.')
            if not _is_config_value(value):
                raise ValueError(
                    f'point {i} sets {field} to {value!r}, which is no config value (a bool, '
                    'int, finite float, str or None, or a tuple of them).'
                )
    return list(points)


def _is_config_value(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(map(_is_config_value, value))
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (bool, int, str))


def point_name(point: Point) -> str:
    """The point's name, which its report row and (where it is one safe path component, see
    `vgg_flax.sweep_dir`) its directory take: 'model.width_ratio=4,seed=1', or 'NAME,seed=1'."""

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
