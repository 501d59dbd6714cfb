"""A sweep's workdir: the definition it records (`sweep.json`), which every later command must
ask for again or takes as its own, and a directory per point, one path component inside it.

A point's directory is named by the point (`hyper.point_name`) where that name is one path
component that is not one of the sweep's own files; any other name (a swept path such as
'../data', a name too long for the file system) is escaped and ends with a hash of the name, so
that no two points share a directory and none lies outside the workdir.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
from typing import Any

import ml_collections

from vgg_flax import config_schema, errors, hyper, run_dir

SWEEP_FILE = 'sweep.json'
# The report of the sweep's runs (`sweep_report`).
REPORT_FILES = ('results.csv', 'summary.csv', 'results.md', 'sweep.png')
RECORD_FIX = (
    "delete it, and the sweep's next training command records its definition again "
    '(the runs of its points are kept, and checked against it).'
)
# The names a point's directory never takes: the sweep's own files, in any case (a file system
# may ignore case).
RESERVED_NAMES = frozenset(name.casefold() for name in (*REPORT_FILES, SWEEP_FILE))
MAX_NAME_BYTES = 255  # The file name limit of Linux's and macOS's file systems.


def _utf8(text: str) -> bytes:
    return text.encode('utf-8', 'surrogatepass')  # A name from os.listdir may hold surrogates.


def is_component(name: str) -> bool:
    """Whether `name` is one path component of its own that a file system keeps as it is."""
    return (
        name not in ('', '.', '..')
        and name.isprintable()  # No '\0', no newline, no control character.
        and '/' not in name
        and len(_utf8(name)) <= MAX_NAME_BYTES
        and name.casefold() not in RESERVED_NAMES
    )


def directory_name(name: str) -> str:
    """`name` where it is a path component (`is_component`); else `name` with '/', '%' and the
    characters that are not printable as %XX, cut to fit, then '~' and a hash of the whole name
    (which keeps escaped names apart from each other and from the names kept as they are)."""
    if is_component(name):
        return name
    escaped = ''.join(
        c if c.isprintable() and c not in '/%' else ''.join(f'%{b:02X}' for b in _utf8(c))
        for c in name
    )
    suffix = '~' + hashlib.sha256(_utf8(name)).hexdigest()[:16]
    head = escaped.encode()[: MAX_NAME_BYTES - len(suffix)].decode(errors='ignore')
    return head + suffix


def point_directory(workdir: str, name: str) -> str:
    """The directory of the point (or population) `name` in `workdir`; a ValueError where that
    path is a link, which would put the run somewhere else."""
    component = directory_name(name)
    path = os.path.join(workdir, component)
    target = os.path.realpath(path)
    if target != os.path.join(os.path.realpath(workdir), component):
        raise ValueError(
            f'{path} is a link to {target}, while a sweep keeps each point in its --workdir: '
            'move the run it links to into its place, or pass another --workdir.'
        )
    return path


@dataclasses.dataclass
class Definition:
    """What a sweep trains: `base` (the config file with the shell's `overrides`, as
    --config.FIELD=VALUE flags), its `points` (with --seeds' seeds), and whether the seeds of a
    point train as one population; `config_file` names the experiment file they came from."""

    config_file: str
    overrides: list[str]
    seeds: int
    population: bool
    base: ml_collections.ConfigDict
    points: list[hyper.Point]

    def command(self) -> str:
        """The flags that ask for this definition."""
        seeds = [f'--seeds={self.seeds}'] if self.seeds != 1 else []
        population = ['--population'] if self.population else []
        return shlex.join([f'--config={self.config_file}', *self.overrides, *seeds, *population])

    def to_plain(self) -> dict[str, Any]:
        return config_schema.to_plain(
            {
                'config_file': self.config_file,
                'overrides': self.overrides,
                'seeds': self.seeds,
                'population': self.population,
                'base': self.base.to_dict(),
                'points': self.points,
            }
        )


def override_flags(overrides: dict[str, Any]) -> list[str]:
    """The --config.FIELD=VALUE flags that set `overrides` (ml_collections' flat dict)."""
    return [
        f'--config.{field}={value if isinstance(value, str) else repr(value)}'
        for field, value in overrides.items()
    ]


def read(workdir: str) -> Definition | None:
    """The definition `workdir` records; None where it records none (a new sweep, or one begun
    before sweeps recorded theirs). A damaged record is a RunDirError naming it."""
    path = os.path.join(workdir, SWEEP_FILE)
    if not os.path.lexists(path):
        return None
    try:
        plain = run_dir.read_json(path, RECORD_FIX)
    except OSError as e:
        raise errors.RunDirError(f'cannot read {path} ({e.strerror}); {RECORD_FIX}') from None
    kinds = {
        'config_file': str,
        'overrides': list,
        'seeds': int,
        'population': bool,
        'base': dict,
        'points': list,
    }
    if not (
        isinstance(plain, dict)
        and all(type(plain.get(key)) is kind for key, kind in kinds.items())
        and all(isinstance(flag, str) for flag in plain['overrides'])
        and plain['seeds'] >= 1
    ):
        raise errors.RunDirError(f'{path} does not hold a sweep definition; {RECORD_FIX}')
    try:
        points = hyper.check_points(plain['points'])
    except ValueError as e:
        raise errors.RunDirError(
            f'{path} does not hold a sweep definition ({str(e).rstrip(".")}); {RECORD_FIX}'
        ) from None
    return Definition(
        config_file=plain['config_file'],
        overrides=plain['overrides'],
        seeds=plain['seeds'],
        population=plain['population'],
        base=run_dir.config_from_plain(plain['base'], path, RECORD_FIX),
        # JSON has lists where the experiment file had tuples; from_plain gives them back.
        points=[
            dict(
                zip(point, config_schema.from_plain({'v': list(point.values())})['v'], strict=True)
            )
            for point in points
        ],
    )


def write(workdir: str, definition: Definition) -> None:
    os.makedirs(workdir, exist_ok=True)
    run_dir.write_json_atomic(os.path.join(workdir, SWEEP_FILE), definition.to_plain())


def differences(recorded: Definition, asked: Definition) -> list[str]:
    """How `asked` differs from the `recorded` definition beyond what a resume may change
    (`config_schema.resume_conflicts`): each as 'what: recorded in the run, asked now'."""
    found = config_schema.resume_conflicts(
        config_schema.to_plain(recorded.base), config_schema.to_plain(asked.base)
    )
    if recorded.seeds != asked.seeds:
        found.append(f'--seeds: {recorded.seeds} in the run, {asked.seeds} now')
    if recorded.population != asked.population:
        found.append(
            f'--population: {"on" if recorded.population else "off"} in the run, '
            f'{"on" if asked.population else "off"} now'
        )
    before, now = (config_schema.to_plain(d.points) for d in (recorded, asked))
    if recorded.seeds == asked.seeds and before != now:
        names = [[hyper.point_name(point) for point in d.points] for d in (recorded, asked)]
        added = [name for name in names[1] if name not in names[0]]
        dropped = [name for name in names[0] if name not in names[1]]
        if added or dropped:
            found.append(
                'its points: '
                + ', '.join(
                    f'{len(these)} {what} ({_first(these)})'
                    for these, what in ((added, 'new'), (dropped, 'dropped'))
                    if these
                )
            )
        elif len(before) != len(now):
            found.append(f'its points: {len(before)} in the run, {len(now)} now')
        else:
            i = next(i for i, (a, b) in enumerate(zip(before, now, strict=True)) if a != b)
            found.append(f'point {i}: {before[i]} in the run, {now[i]} now')
    return found


def _first(names: list[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ', '.join(names[:shown]) + (f' and {more} more' if more > 0 else '')
