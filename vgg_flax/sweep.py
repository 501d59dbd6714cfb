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
a group whose seeds are consecutive trains as one population (`config.population_size` models
side by side in one vmapped program) in one directory; the report is the same, a row per member.

The workdir records what the sweep trains (`vgg_flax.sweep_dir`): a later command must ask for
the same sweep, up to what a resume may change (more epochs, a moved data directory), or is
refused before anything trains; `--list` and `--report` take whatever they do not set from the
record, so they need no flag but --workdir. A point counts as done only where its run's config
is the one asked for now.
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
    config_schema,
    config_utils,
    environment,
    errors,
    hyper,
    run_dir,
    sweep_dir,
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
    'Run every point with this many seeds (config.seed, config.seed + 1, ...), each a run '
    'of its own (see --population); the report gives their mean and spread.',
)
_POPULATION = flags.DEFINE_bool(
    'population',
    False,
    'Train the points that differ only in consecutive seeds as one '
    'population each (config.population_size): one program, one directory.',
)


def point_config(base: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
    """`base` with the point's fields set; an unknown field is a ValueError, a value of another
    type than the field's default a ConfigError (`config_schema.conformed`)."""
    fields = {field: value for field, value in point.items() if field != hyper.NAME}
    if unknown := config_schema.unknown_field(fields):
        field, close = unknown
        raise ValueError(
            f'the sweep sets {field!r}, which is not a config field'
            + (f'; did you mean {close!r}?' if close else '.')
        )
    config = ml_collections.ConfigDict(base.to_dict(), type_safe=False)
    config.update_from_flattened_dict(fields)
    return config_schema.conformed(config, f'the sweep point {hyper.point_name(point)}')


def with_seeds(points: Sequence[Point], first_seed: int, seeds: int) -> list[Point]:
    """Every point with each of `seeds` seeds (separate runs) from `first_seed` on."""
    if seeds < 1:
        raise ValueError(f'--seeds={seeds} must be at least 1.')
    if seeds > 1 and any('seed' in point for point in points):
        raise ValueError('the sweep sets seed itself; drop --seeds or its seed axis.')
    if seeds == 1:
        return list(points)
    return hyper.product(list(points), hyper.axis('seed', range(first_seed, first_seed + seeds)))


def load_sweep(config_path: str) -> list[Point]:
    """The points of the experiment file's `get_sweep()`; a single experiment is one point, its
    config as it is (so that `--seeds=N` gives its spread over seeds)."""
    with config_utils.file_errors(config_path):
        module = config_utils.load_module(config_path)
    if not hasattr(module, 'get_sweep'):
        return [{}]
    try:
        points = module.get_sweep()
    except Exception as e:  # The experiment file's own code: say what it raised, in one line.
        reason = ''.join(f': {line}' for line in str(e).strip().splitlines()[-1:])
        raise ValueError(f'{config_path}: get_sweep() raised {type(e).__name__}{reason}') from None
    try:
        return hyper.check_points(points)
    except ValueError as e:
        raise ValueError(f'{config_path}: get_sweep() {e}') from None


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
        """The run's results; None until it has written them, or where they are damaged (which
        `problem` names)."""
        try:
            return self._read_results()
        except errors.RunDirError:
            return None

    def _read_results(self) -> dict[str, Any] | None:
        """The run's results; a RunDirError where results.json is damaged or of another shape."""
        path = os.path.join(self.workdir, run_dir.RESULTS_FILE)
        if not os.path.isfile(path):
            return None
        results = run_dir.read_json(path, run_dir.RESULTS_FIX)
        if self.member is not None:
            results = self._member_results(results, self.member)
        if not (
            isinstance(results, dict)
            and type(results.get('epochs')) is int
            and all(_is_number(results[key]) for key in sweep_report.RESULT_KEYS if key in results)
        ):
            raise errors.RunDirError(
                f'{path} does not hold the results of this run; {run_dir.RESULTS_FIX}'
            )
        return results

    def _member_results(self, population: Any, member: int) -> dict[str, Any] | None:
        """`member`'s own results over its population's, its examples/sec a share of the
        population's; None where `population` lists no such member."""
        members = population.get('members') if isinstance(population, dict) else None
        if not (
            isinstance(members, list)
            and len(members) == self.config.population_size
            and isinstance(members[member], dict)
        ):
            return None
        share = population.get('examples_per_sec')
        return {
            **{key: value for key, value in population.items() if key != 'members'},
            **members[member],
            'examples_per_sec': share / len(members) if isinstance(share, (int, float)) else share,
        }

    def problem(self) -> str | None:
        """Why the point's directory cannot be used for it as asked now; None where it can. A run
        there of another config, or with more epochs than asked, is refused as a resume refuses
        it (`config_schema.resume_conflicts`): its results are another experiment's."""
        if os.path.lexists(self.workdir) and not os.path.isdir(self.workdir):
            return f"{self.workdir} is not a directory: move it out of the sweep's --workdir."
        try:
            if os.path.isfile(os.path.join(self.workdir, run_dir.CONFIG_FILE)):
                saved = config_schema.to_plain(run_dir.read_config(self.workdir))
                if conflicts := config_schema.resume_conflicts(
                    saved, config_schema.to_plain(self.config)
                ):
                    return (
                        f'{self.workdir} holds a run of another config ({"; ".join(conflicts)}): '
                        'ask for the config it ran, or pass another --workdir.'
                    )
            results = self._read_results()
        except errors.RunDirError as e:
            return str(e)
        if results and results['epochs'] > self.config.train.num_epochs:
            return (
                f'{self.workdir} has trained {results["epochs"]} epochs, more than '
                f'config.train.num_epochs={self.config.train.num_epochs}: ask for '
                f'{results["epochs"]} or more, or pass another --workdir.'
            )
        return None

    def status(self) -> str:
        results = self.results()
        if results and results['epochs'] == self.config.train.num_epochs:
            return 'done'
        if run_dir.held_by(self.workdir):
            return 'running'  # Trained by another sweep process right now.
        if os.path.isfile(os.path.join(self.workdir, ERROR_FILE)):
            return 'failed'
        if os.path.isdir(os.path.join(self.workdir, checkpointing.CHECKPOINT_DIR)):
            return 'partial'
        return 'missing'


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def plan(
    base: ml_collections.ConfigDict, points: Sequence[Point], workdir: str, population: bool = False
) -> list[PointRun]:
    """A run per point; with `population`, the points of a group with consecutive seeds are
    the members of one population run, in `<the group's name>,seeds=FIRST-LAST`. Each run's
    directory is one path component in `workdir` (`sweep_dir.point_directory`), and no two runs
    share one unless they are members of one population."""
    runs = [
        PointRun(
            i,
            point,
            point_config(base, point),
            sweep_dir.point_directory(workdir, hyper.point_name(point)),
        )
        for i, point in enumerate(points)
    ]
    if population:
        groups: dict[str, list[PointRun]] = {}
        for run in runs:
            seedless = {field: value for field, value in run.point.items() if field != 'seed'}
            groups.setdefault(hyper.point_name(seedless), []).append(run)
        for name, members in groups.items():
            seeds = [run.config.seed for run in members]
            if len(members) < 2 or seeds != list(range(seeds[0], seeds[0] + len(seeds))):
                continue
            config = ml_collections.ConfigDict(members[0].config.to_dict())
            config.population_size = len(members)
            directory = sweep_dir.point_directory(workdir, f'{name},seeds={seeds[0]}-{seeds[-1]}')
            for i, run in enumerate(members):
                run.config, run.workdir, run.member = config, directory, i
    # Compared without case: a file system may ignore it.
    sharing: dict[str, list[PointRun]] = {}
    for run in runs:
        sharing.setdefault(os.path.basename(run.workdir).casefold(), []).append(run)
    for shared in sharing.values():
        one_population = all(run.member is not None for run in shared) and (
            len({id(run.config) for run in shared}) == 1
        )
        if len(shared) > 1 and not one_population:
            first, second = shared[:2]
            raise ValueError(
                f'points {first.index} ({first.name}) and {second.index} ({second.name}) would '
                f'share the directory {second.workdir} (a file system may ignore case): the '
                'sweep repeats a point or names two alike; drop one, or name them apart '
                '(hyper.named).'
            )
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
    except errors.TrainingInterrupted:
        raise
    except Exception as e:  # One bad point must not stop the rest.
        print(
            f'[{run.index}] {run.name}: FAILED: {type(e).__name__}: {e}',
            file=sys.stderr,
            flush=True,
        )
        try:
            os.makedirs(run.workdir, exist_ok=True)
            with open(error_path, 'w') as f:
                f.write(traceback.format_exc())
        except OSError as unwritten:  # A full disk: the line above is all there is.
            print(
                f'[{run.index}] {run.name}: {error_path} cannot be written ({unwritten.strerror})',
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


def asked_definition(
    workdir: str, recorded: sweep_dir.Definition | None, training: bool
) -> sweep_dir.Definition:
    """The sweep this command asks for. Without --config, or with --list or --report, what the
    command does not set (the overrides, --seeds, --population) is the `recorded` sweep's; a
    training command with --config asks for just what it says. Either must match the record up
    to what a resume may change; a ValueError names the differences and the way on."""
    config_flag = flags.FLAGS['config']
    if not config_flag.present and recorded is None:
        raise ValueError(
            f'--workdir={workdir} holds no sweep yet; pass --config=FILE, the experiment to sweep.'
        )
    overrides = config_flags.get_override_values(config_flag) if config_flag.present else {}
    seeds_set, population_set = flags.FLAGS['seeds'].present, flags.FLAGS['population'].present
    inherit = None if config_flag.present and training else recorded
    if inherit is not None and not (overrides or seeds_set or population_set):
        asked = inherit
    else:
        config_file = (
            os.path.abspath(config_flags.get_config_filename(config_flag))
            if config_flag.present or inherit is None
            else inherit.config_file
        )
        base_from = inherit if not overrides else None
        base = cli.CONFIG.value if base_from is None else base_from.base
        seeds = inherit.seeds if inherit is not None and not seeds_set else _SEEDS.value
        population = (
            inherit.population if inherit is not None and not population_set else _POPULATION.value
        )
        asked = sweep_dir.Definition(
            config_file,
            sweep_dir.override_flags(overrides) if base_from is None else base_from.overrides,
            seeds,
            population,
            base,
            with_seeds(load_sweep(config_file), base.seed, seeds),
        )
    if asked.population and _INDEX.value is not None and training:
        raise ValueError(
            '--population trains the members of a population together; drop '
            '--index (a job-array task) or --population.'
        )
    if recorded is not None and (differ := sweep_dir.differences(recorded, asked)):
        raise ValueError(
            f'{workdir} holds another sweep ({"; ".join(differ)}): pass another --workdir '
            f"for this one, or that sweep's own flags, {recorded.command()} (--list and "
            '--report need none).'
        )
    return asked


def check_workdir(workdir: str) -> None:
    """Refuses a --workdir that cannot hold a sweep, or a report of a sweep that is not there."""
    if not workdir:
        raise ValueError('--workdir is empty; pass the directory of the sweep.')
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f'--workdir={workdir} is a file, not a directory; pass a directory.')
    if _REPORT.value and not os.path.isdir(workdir):
        raise ValueError(
            f'--workdir={workdir} does not exist: there is no sweep to report; pass the '
            'directory the sweep trained in.'
        )


def refuse_unusable(runs: Sequence[PointRun]) -> None:
    """A ValueError naming the first point whose directory cannot serve it (`PointRun.problem`),
    and how many more there are, before anything trains."""
    problems = {
        run.workdir: f'[{run.index}] {run.name}: {problem}'
        for run in runs
        if (problem := run.problem())
    }
    if problems:
        first, *more = problems.values()
        raise ValueError(first + (f' {len(more)} more point(s) likewise.' if more else ''))


def main(argv: list[str]) -> int:
    environment.start_cli(argv)
    workdir = cli.WORKDIR.value
    training = not (_LIST.value or _REPORT.value)
    try:
        check_workdir(workdir)
        recorded = sweep_dir.read(workdir)
        definition = asked_definition(workdir, recorded, training)
        runs = plan(definition.base, definition.points, workdir, definition.population)
        refuse_unusable(runs)
    except (ValueError, OSError, errors.RunDirError, errors.ConfigError) as e:
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
    if training:
        try:
            sweep_dir.write(workdir, definition)
        except OSError as e:
            print(
                f'error: cannot write {os.path.join(workdir, sweep_dir.SWEEP_FILE)} '
                f'({e.strerror}); pass a --workdir you can write to.',
                file=sys.stderr,
            )
            return 1
        try:
            failed, busy = run_points(runs if _INDEX.value is None else [runs[_INDEX.value]])
        except errors.TrainingInterrupted as e:
            print(e, file=sys.stderr)
            return 128 + e.signum
        except KeyboardInterrupt:  # Ctrl-C before a point's loop catches signals.
            return cli.interrupted_while_starting()
    try:
        rows = sweep_report.write_report(runs, workdir)
        with open(os.path.join(workdir, 'results.md')) as f:
            print(f.read(), end='')
    except OSError as e:
        print(
            f'error: the report cannot be written in {workdir} ({e.strerror}); the runs are '
            'intact: make room there (or restore the directory), then run the same command '
            'with --report.',
            file=sys.stderr,
        )
        return 1
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
    flags.mark_flags_as_required(['workdir'])  # --config too, until the workdir records it.
    cli.run(main)
