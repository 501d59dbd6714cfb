"""Hyper-parameter sweeps: every point a full training run in its own directory, then a table.

  python -m vgg_flax.sweep --config=experiments/ratio_sweep.py --workdir=runs/ratio
      [--list] [--index=N] [--report] [--config.train.num_epochs=1 ...]

An experiment file that defines `get_sweep()` next to `get_config()` is a sweep: `get_sweep()`
returns a list of points, each a dict of dotted config fields to values (see `vgg_flax.hyper`).
Any other experiment file is a sweep of one point, itself: `--seeds=3` gives its spread.
Shell overrides apply to the base config, so to every point; a point's own values win.

Points that differ only in `seed` (an axis of the sweep, or `--seeds=N`) form a group: the
report gives each group's mean, standard deviation and 95% confidence interval over its finished
runs, and counts the runs that are not finished instead of averaging them. With `--population`,
a group whose seeds are consecutive trains as one population (`config.num_seeds`, one vmapped
program) in one directory; the report is the same, a row per member.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from vgg_flax import (
    checkpointing,
    cli,
    config_utils,
    environment,
    hyper,
    run_dir,
    sweep_report,
    train,
)

Point = hyper.Point
ERROR_FILE = 'error.txt'
_LIST = flags.DEFINE_bool('list', False, 'Print the points with their index and status.')
_INDEX = flags.DEFINE_integer('index', None, 'Run only point N (a job-array task).')
_REPORT = flags.DEFINE_bool('report', False, 'Only write the report from finished runs.')
_SEEDS = flags.DEFINE_integer(
    'seeds',
    1,
    'Run every point with this many seeds (config.seed, '
    'config.seed + 1, ...); the report gives their mean and spread.',
)
_POPULATION = flags.DEFINE_bool(
    'population',
    False,
    'Train the points that differ only in consecutive seeds as one '
    'population each (config.num_seeds): one program, one directory.',
)


def point_config(base: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
    """`base` with the point's fields set; an unknown field is a ValueError, a value of another
    type than the field's default a ConfigError (`config_utils.conformed`)."""
    fields = {field: value for field, value in point.items() if field != hyper.NAME}
    if unknown := config_utils.unknown_field(base, fields):
        field, close = unknown
        raise ValueError(
            f'the sweep sets {field!r}, which is not a config field'
            + (f'; did you mean {close!r}?' if close else '.')
        )
    config = ml_collections.ConfigDict(base.to_dict(), type_safe=False)
    config.update_from_flattened_dict(fields)
    return config_utils.conformed(config, f'the sweep point {hyper.point_name(point)}')


def with_seeds(points: Sequence[Point], first_seed: int, num_seeds: int) -> list[Point]:
    """Every point with each of `num_seeds` seeds from `first_seed` on."""
    if num_seeds < 1:
        raise ValueError(f'--seeds={num_seeds} must be at least 1.')
    if num_seeds > 1 and any('seed' in point for point in points):
        raise ValueError('the sweep sets seed itself; drop --seeds or its seed axis.')
    if num_seeds == 1:
        return list(points)
    return hyper.product(
        list(points), hyper.axis('seed', range(first_seed, first_seed + num_seeds))
    )


def load_sweep(config_path: str) -> list[Point]:
    """The points of the experiment file's `get_sweep()`; a single experiment is one point, its
    config as it is (so that `--seeds=N` gives its spread over seeds)."""
    with config_utils.file_errors(config_path):
        module = config_utils.load_module(config_path)
        if not hasattr(module, 'get_sweep'):
            return [{}]
        points = list(module.get_sweep())
    if bad := [
        p[hyper.NAME]
        for p in points
        if hyper.NAME in p
        and (
            not isinstance(p[hyper.NAME], str)
            or not p[hyper.NAME].strip('.')
            or '/' in p[hyper.NAME]
        )
    ]:
        raise ValueError(f'{config_path}: point names must be usable as directory names: {bad}')
    names = [hyper.point_name(p) for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f'{config_path}: get_sweep() repeats points: {names}')
    return points


@dataclasses.dataclass
class PointRun:
    """A point of the sweep: its own run, or member `member` of a population run in `workdir`."""

    index: int
    point: Point
    config: ml_collections.ConfigDict
    workdir: str
    member: int | None = None

    @property
    def name(self) -> str:
        return hyper.point_name(self.point)

    def results(self) -> dict[str, Any] | None:
        """The run's results; None until it has finished, or where its results.json is damaged
        (training the point again then fails, naming the file)."""
        path = os.path.join(self.workdir, run_dir.RESULTS_FILE)
        if not os.path.isfile(path):
            return None
        try:
            results = run_dir.read_json(path, run_dir.RESULTS_FIX)
        except run_dir.RunDirError:
            return None
        if self.member is None:
            return results
        members = results.pop('members')
        return {
            **results,
            **members[self.member],
            'examples_per_sec': results['examples_per_sec'] / len(members),
        }

    def status(self) -> str:
        results = self.results()
        if results and results['epochs'] >= self.config.train.num_epochs:
            return 'done'
        if run_dir.held_by(self.workdir):
            return 'running'  # Trained by another sweep process right now.
        if os.path.isfile(os.path.join(self.workdir, ERROR_FILE)):
            return 'failed'
        if os.path.isdir(os.path.join(self.workdir, checkpointing.CHECKPOINT_DIR)):
            return 'partial'
        return 'missing'


def plan(
    base: ml_collections.ConfigDict, points: Sequence[Point], workdir: str, population: bool = False
) -> list[PointRun]:
    """A run per point; with `population`, the points of a group with consecutive seeds are
    the members of one population run, in `<the group's name>,seeds=FIRST-LAST`."""
    runs = [
        PointRun(
            i, point, point_config(base, point), os.path.join(workdir, hyper.point_name(point))
        )
        for i, point in enumerate(points)
    ]
    if not population:
        return runs
    groups: dict[str, list[PointRun]] = {}
    for run in runs:
        seedless = {field: value for field, value in run.point.items() if field != 'seed'}
        groups.setdefault(hyper.point_name(seedless), []).append(run)
    for name, members in groups.items():
        seeds = [run.config.seed for run in members]
        if len(members) < 2 or seeds != list(range(seeds[0], seeds[0] + len(seeds))):
            continue
        config = ml_collections.ConfigDict(members[0].config.to_dict())
        config.num_seeds = len(members)
        directory = os.path.join(workdir, f'{name},seeds={seeds[0]}-{seeds[-1]}')
        for i, run in enumerate(members):
            run.config, run.workdir, run.member = config, directory, i
    return runs


def run_point(run: PointRun) -> bool:
    """Trains (or resumes) one point; True on success. Failures are recorded, not raised."""
    if run.status() == 'done':
        print(f'[{run.index}] {run.name}: done, skipped', flush=True)
        return True
    if holder := run_dir.held_by(run.workdir):
        print(
            f'[{run.index}] {run.name}: in use by another run ({holder}), skipped',
            file=sys.stderr,
            flush=True,
        )
        return False
    print(f'[{run.index}] {run.name}: training in {run.workdir}', flush=True)
    error_path = os.path.join(run.workdir, ERROR_FILE)
    try:
        train.train_and_evaluate(run.config, run.workdir)
    except train.TrainingInterrupted:
        raise
    except Exception as e:  # One bad point must not stop the rest.
        os.makedirs(run.workdir, exist_ok=True)
        with open(error_path, 'w') as f:
            f.write(traceback.format_exc())
        print(
            f'[{run.index}] {run.name}: FAILED: {type(e).__name__}: {e}',
            file=sys.stderr,
            flush=True,
        )
        return False
    if os.path.isfile(error_path):
        os.remove(error_path)
    return True


def run_points(selected: Sequence[PointRun]) -> tuple[list[PointRun], list[PointRun]]:
    """Trains each of the `selected` points (a population once, for all its members); returns
    the points that failed, and those that another process holds."""
    succeeded: dict[str, bool] = {}
    for run in selected:
        if run.workdir not in succeeded:
            succeeded[run.workdir] = run_point(run)
    failed = [run for run in selected if not succeeded[run.workdir]]
    busy = [run for run in failed if run.status() == 'running']
    return [run for run in failed if run not in busy], busy


def main(argv: list[str]) -> int:
    environment.start_cli(argv)
    config_path = config_flags.get_config_filename(flags.FLAGS['config'])
    workdir = cli.WORKDIR.value
    try:
        points = with_seeds(load_sweep(config_path), cli.CONFIG.value.seed, _SEEDS.value)
        if _POPULATION.value and _INDEX.value is not None:
            raise ValueError(
                '--population trains the members of a population together; drop '
                '--index (a job-array task) or --population.'
            )
        runs = plan(cli.CONFIG.value, points, workdir, _POPULATION.value)
    except (ValueError, config_utils.ConfigError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    if _LIST.value:
        for run in runs:
            print(f'{run.index:>3}  {run.status():<8} {run.name}')
        return 0
    if _INDEX.value is not None and not 0 <= _INDEX.value < len(runs):
        print(
            f'error: --index={_INDEX.value} is out of range: the sweep has {len(runs)} points '
            f'(0..{len(runs) - 1}); see --list.',
            file=sys.stderr,
        )
        return 1
    failed: list[PointRun] = []
    busy: list[PointRun] = []
    if not _REPORT.value:
        try:
            failed, busy = run_points(runs if _INDEX.value is None else [runs[_INDEX.value]])
        except train.TrainingInterrupted as e:
            print(e, file=sys.stderr)
            return 128 + e.signum
        except KeyboardInterrupt:  # Ctrl-C before a point's loop catches signals.
            return cli.interrupted_while_starting()
    rows = sweep_report.write_report(runs, workdir)
    with open(os.path.join(workdir, 'results.md')) as f:
        print(f.read(), end='')
    not_done = [row for row in rows if row['status'] != 'done']
    if busy:
        print(
            f'{len(busy)} point(s) in use by another run: {", ".join(run.name for run in busy)}; '
            'run the same command again once it has ended.',
            file=sys.stderr,
        )
    if failed:
        print(
            f'{len(failed)} point(s) failed: {", ".join(run.name for run in failed)}; see '
            f'{ERROR_FILE} in their directories.',
            file=sys.stderr,
        )
    if failed or busy:
        return 1
    if _INDEX.value is None and not_done:
        print(f'{len(not_done)} point(s) not done.', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    flags.mark_flags_as_required(['config', 'workdir'])
    cli.run(main)
