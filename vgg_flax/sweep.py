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

import csv
import dataclasses
import functools
import json
import math
import os
import statistics
import sys
import traceback
from typing import IO, Any, Sequence

import ml_collections
import scipy.stats
from absl import flags
from ml_collections import config_flags

from vgg_flax import checkpointing, cli, config_utils, environment, hyper, summary, train

Point = hyper.Point
ERROR_FILE = 'error.txt'
REPORT_FILES = ('results.csv', 'summary.csv', 'results.md', 'sweep.png')
# Reported as mean, std, 95% CI, min and max over a group's finished runs.
SPREAD_KEYS = ('test_accuracy', 'best_test_accuracy', 'val_accuracy')

_LIST = flags.DEFINE_bool('list', False, 'Print the points with their index and status.')
_INDEX = flags.DEFINE_integer('index', None, 'Run only point N (a job-array task).')
_REPORT = flags.DEFINE_bool('report', False, 'Only write the report from finished runs.')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'Run every point with this many seeds (config.seed, '
                              'config.seed + 1, ...); the report gives their mean and spread.')
_POPULATION = flags.DEFINE_bool('population', False,
                                'Train the points that differ only in consecutive seeds as one '
                                'population each (config.num_seeds): one program, one directory.')


def shown_fields(point: Point) -> Point:
    """What names the point in its directory and report row: its fields, or for a named point
    its name (and its seed)."""
    if hyper.NAME not in point:
        return point
    return {key: point[key] for key in (hyper.NAME, 'seed') if key in point}


def point_name(point: Point) -> str:
    """The point's directory name: 'model.width_ratio=4,seed=1', or 'NAME,seed=1'."""
    def text(value: Any) -> str:
        if isinstance(value, (tuple, list)):
            return '-'.join(map(text, value))
        return str(value)
    return ','.join(str(value) if field == hyper.NAME else f'{field}={text(value)}'
                    for field, value in shown_fields(point).items()) or 'base'


def point_config(base: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
    """`base` with the point's fields set; an unknown field is an error."""
    fields = {field: value for field, value in point.items() if field != hyper.NAME}
    if unknown := config_utils.unknown_field(base, fields):
        field, close = unknown
        raise ValueError(f'the sweep sets {field!r}, which is not a config field' +
                         (f'; did you mean {close!r}?' if close else '.'))
    config = ml_collections.ConfigDict(base.to_dict())
    config.update_from_flattened_dict(fields)
    return config


def with_seeds(points: Sequence[Point], first_seed: int, num_seeds: int) -> list[Point]:
    """Every point with each of `num_seeds` seeds from `first_seed` on."""
    if num_seeds < 1:
        raise ValueError(f'--seeds={num_seeds} must be at least 1.')
    if num_seeds > 1 and any('seed' in point for point in points):
        raise ValueError('the sweep sets seed itself; drop --seeds or its seed axis.')
    if num_seeds == 1:
        return list(points)
    return hyper.product(list(points), hyper.axis('seed', range(first_seed,
                                                                 first_seed + num_seeds)))


def load_sweep(config_path: str) -> list[Point]:
    """The points of the experiment file's `get_sweep()`; a single experiment is one point, its
    config as it is (so that `--seeds=N` gives its spread over seeds)."""
    module = config_utils.load_module(config_path)
    if not hasattr(module, 'get_sweep'):
        return [{}]
    points = list(module.get_sweep())
    if bad := [p[hyper.NAME] for p in points if hyper.NAME in p and (
            not isinstance(p[hyper.NAME], str) or not p[hyper.NAME].strip('.') or
            '/' in p[hyper.NAME])]:
        raise ValueError(f'{config_path}: point names must be usable as directory names: {bad}')
    names = [point_name(p) for p in points]
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
        return point_name(self.point)

    def results(self) -> dict[str, Any] | None:
        """The run's results; None until it has finished, or where its results.json is damaged
        (training the point again then fails, naming the file)."""
        path = os.path.join(self.workdir, checkpointing.RESULTS_FILE)
        if not os.path.isfile(path):
            return None
        try:
            results = checkpointing.read_json(path, checkpointing.RESULTS_FIX)
        except checkpointing.RunDirError:
            return None
        if self.member is None:
            return results
        members = results.pop('members')
        return {**results, **members[self.member],
                'examples_per_sec': results['examples_per_sec'] / len(members)}

    def status(self) -> str:
        results = self.results()
        if results and results['epochs'] >= self.config.train.num_epochs:
            return 'done'
        if checkpointing.held_by(self.workdir):
            return 'running'  # Trained by another sweep process right now.
        if os.path.isfile(os.path.join(self.workdir, ERROR_FILE)):
            return 'failed'
        if os.path.isdir(os.path.join(self.workdir, checkpointing.CHECKPOINT_DIR)):
            return 'partial'
        return 'missing'


def plan(base: ml_collections.ConfigDict, points: Sequence[Point], workdir: str,
         population: bool = False) -> list[PointRun]:
    """A run per point; with `population`, the points of a group with consecutive seeds are
    the members of one population run, in `<the group's name>,seeds=FIRST-LAST`."""
    runs = [PointRun(i, point, point_config(base, point), os.path.join(workdir, point_name(point)))
            for i, point in enumerate(points)]
    if not population:
        return runs
    groups: dict[str, list[PointRun]] = {}
    for run in runs:
        seedless = {field: value for field, value in run.point.items() if field != 'seed'}
        groups.setdefault(point_name(seedless), []).append(run)
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
    if holder := checkpointing.held_by(run.workdir):
        print(f'[{run.index}] {run.name}: in use by another run ({holder}), skipped',
              file=sys.stderr, flush=True)
        return False
    print(f'[{run.index}] {run.name}: training in {run.workdir}', flush=True)
    error_path = os.path.join(run.workdir, ERROR_FILE)
    try:
        train.train_and_evaluate(run.config, run.workdir)
    except train.TrainingInterrupted:
        raise
    except Exception as e:  # pylint: disable=broad-except  # One bad point must not stop the rest.
        os.makedirs(run.workdir, exist_ok=True)
        with open(error_path, 'w') as f:
            f.write(traceback.format_exc())
        print(f'[{run.index}] {run.name}: FAILED: {type(e).__name__}: {e}', file=sys.stderr,
              flush=True)
        return False
    if os.path.isfile(error_path):
        os.remove(error_path)
    return True


@functools.lru_cache(maxsize=None)
def point_cost(config_json: str) -> summary.Summary:
    """A point's parameters, FLOPs and step memory, once per process: it compiles a step."""
    return summary.summarize(config_utils.from_plain(json.loads(config_json)))


def report_fields(runs: Sequence[PointRun]) -> list[str]:
    """The columns that tell the points apart: every field any point shows, in order."""
    return list(dict.fromkeys(field for run in runs for field in shown_fields(run.point)))


def report_rows(runs: Sequence[PointRun]) -> list[dict[str, Any]]:
    """One row per point: its fields (None where a point keeps the base config's value),
    model cost (from the summary) and run results."""
    rows, fields = [], report_fields(runs)
    for run in runs:
        shown = shown_fields(run.point)
        row: dict[str, Any] = {'index': run.index, **{f: shown.get(f) for f in fields},
                               'status': run.status()}
        try:
            # Seeds cost alike, and a population member costs what a single run does.
            seedless = {**config_utils.to_plain(run.config), 'seed': 0, 'num_seeds': 1}
            cost = point_cost(json.dumps(seedless, sort_keys=True))
            row.update(params=cost.num_params, forward_gflops=cost.forward_flops_per_example / 1e9,
                       step_memory_mib=cost.train_step_bytes / 2**20)
        except ValueError:  # An invalid point: its row says 'failed' and has no cost.
            row.update(params=None, forward_gflops=None, step_memory_mib=None)
        results = run.results() or {}
        row.update(test_accuracy=results.get('test_accuracy'),
                   best_test_accuracy=results.get('best_test_accuracy'),
                   val_accuracy=results.get('val_accuracy'),
                   best_epoch=results.get('best_epoch'), epochs=results.get('epochs'),
                   examples_per_sec=results.get('examples_per_sec'),
                   wall_seconds=results.get('wall_seconds'))
        rows.append(row)
    return rows


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation, the half-width of the 95% confidence interval of the
    mean (Student's t with n - 1 degrees of freedom), min and max; None where n is too small for
    one."""
    n = len(values)
    mean = statistics.fmean(values) if n else None
    std = statistics.stdev(values) if n > 1 else None
    ci95 = scipy.stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else None
    return {'mean': mean, 'std': std, 'ci95': ci95, 'min': min(values, default=None),
            'max': max(values, default=None)}


def group_rows(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> list[dict[str, Any]]:
    """One row per group of runs that differ only in their seed: its fields, its count of runs
    and of finished ones, the spread of `SPREAD_KEYS` over the finished runs, their mean
    examples/sec, and the model's cost."""
    group_fields = [field for field in fields if field != 'seed']
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(point_name(_set_fields(row, group_fields)), []).append(row)
    summaries = []
    for members in groups.values():
        done = [row for row in members if row['status'] == 'done']
        summary_row = {field: members[0][field] for field in group_fields}
        summary_row.update(runs=len(members), done=len(done),
                           not_done=', '.join(f'{row["status"]} {row["index"]}'
                                              for row in members if row['status'] != 'done'))
        for key in SPREAD_KEYS:
            summary_row.update({f'{key}_{stat}': value for stat, value
                                in spread([row[key] for row in done
                                           if row.get(key) is not None]).items()})
        summary_row['examples_per_sec'] = spread([row['examples_per_sec'] for row in done])['mean']
        summary_row.update({key: members[0][key] for key in
                            ('params', 'forward_gflops', 'step_memory_mib')})
        summaries.append(summary_row)
    return summaries


def _set_fields(row: dict[str, Any], fields: Sequence[str]) -> Point:
    """The fields that `row`'s point sets (None: it keeps the base config's value)."""
    return {field: row[field] for field in fields if row[field] is not None}


def _cell(value: Any) -> str:
    if value is None or value == '':
        return '-'
    if isinstance(value, float):
        return f'{value:.4f}' if abs(value) < 10 else f'{value:,.1f}'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'{value:,}'
    return str(value)


def _with_interval(row: dict[str, Any], key: str) -> str:
    mean, ci95 = row[f'{key}_mean'], row[f'{key}_ci95']
    return _cell(mean) if ci95 is None else f'{mean:.4f} ± {ci95:.4f}'


def _write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
    with checkpointing.atomic_write(path) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows({k: ('' if v is None else v) for k, v in row.items()} for row in rows)


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ['| ' + ' | '.join(columns) + ' |', '|' + ' --- |' * len(columns),
            *('| ' + ' | '.join(row) + ' |' for row in rows)]


def write_report(runs: Sequence[PointRun], workdir: str) -> list[dict[str, Any]]:
    """Writes results.csv (a row per run), summary.csv (a row per group of seeds), results.md
    (both tables) and sweep.png into the sweep's workdir, each atomically."""
    rows, fields = report_rows(runs), report_fields(runs)
    groups = group_rows(rows, fields)
    os.makedirs(workdir, exist_ok=True)
    csv_path, summary_path, md_path, png_path = (os.path.join(workdir, name)
                                                  for name in REPORT_FILES)
    _write_csv(csv_path, rows)
    _write_csv(summary_path, groups)
    group_fields = [field for field in fields if field != 'seed']
    lines = ['Per group of seeds: mean ± 95% confidence interval (Student\'s t) over the '
             'finished runs, and standard deviation.', '']
    lines += _markdown_table(
        [*group_fields, 'runs', 'done', 'not done', 'val acc', 'test acc', 'std', 'min', 'max',
         'best test acc', 'std', 'examples/sec', 'params', 'forward GFLOPs'],
        [[*(_cell(group[f]) for f in group_fields), _cell(group['runs']), _cell(group['done']),
          _cell(group['not_done']), _with_interval(group, 'val_accuracy'),
          _with_interval(group, 'test_accuracy'), _cell(group['test_accuracy_std']),
          _cell(group['test_accuracy_min']), _cell(group['test_accuracy_max']),
          _with_interval(group, 'best_test_accuracy'),
          _cell(group['best_test_accuracy_std']), _cell(group['examples_per_sec']),
          _cell(group['params']), _cell(group['forward_gflops'])] for group in groups])
    lines += ['', 'Per run:', '']
    columns = list(rows[0]) if rows else []
    lines += _markdown_table(columns, [[_cell(row[c]) for c in columns] for row in rows])
    with checkpointing.atomic_write(md_path) as f:
        f.write('\n'.join(lines) + '\n')
    with checkpointing.atomic_write(png_path, 'wb') as f:
        plot_sweep(groups, group_fields, f)
    return rows


def plot_sweep(groups: Sequence[dict[str, Any]], fields: Sequence[str], file: IO[bytes]) -> None:
    """Mean test accuracy (error bars: 95% CI over seeds) against the swept value and against
    parameters; mean throughput beside."""
    import matplotlib.ticker  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    numeric = len(fields) == 1 and all(isinstance(g[fields[0]], (int, float)) for g in groups)
    labels = [g[fields[0]] if numeric else point_name(_set_fields(g, fields)) for g in groups]
    positions = labels if numeric else list(range(len(groups)))
    fig = Figure(figsize=(13, 3.8), dpi=110)
    axes = fig.subplots(1, 3)
    done = [i for i, g in enumerate(groups) if g['done']]

    def accuracy(ax: Any, indices: Sequence[int], xs: Sequence[float]) -> None:
        ax.errorbar(xs, [groups[i]['test_accuracy_mean'] for i in indices],
                    yerr=[groups[i]['test_accuracy_ci95'] or 0 for i in indices], fmt='o-',
                    capsize=3)
        ax.set_ylabel('test accuracy (mean, 95% CI)')

    accuracy(axes[0], done, [positions[i] for i in done])
    axes[2].plot([positions[i] for i in done], [groups[i]['examples_per_sec'] for i in done],
                 'o-')
    axes[2].set_ylabel('examples per sec')
    for ax in (axes[0], axes[2]):
        ax.set_xlabel(fields[0] if numeric else 'point')
        if numeric and all(x > 0 for x in positions) and max(positions) / min(positions) >= 8:
            ax.set_xscale('log', base=2)
        if numeric:
            ax.set_xticks(positions, [str(x) for x in positions])
        else:
            ax.set_xticks(positions, [str(x) for x in labels], rotation=30, ha='right',
                          fontsize=7)
    with_params = [i for i in done if groups[i]['params']]
    millions = [groups[i]['params'] / 1e6 for i in with_params]
    accuracy(axes[1], with_params, millions)
    for i, x in zip(with_params, millions):
        axes[1].annotate(str(labels[i]), (x, groups[i]['test_accuracy_mean']), fontsize=7,
                         xytext=(3, 3), textcoords='offset points')
    axes[1].set_xscale('log')
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1].set_xticks(millions, [f'{x:.3g}' for x in millions], rotation=30, fontsize=7)
    axes[1].set_xlabel('parameters (millions)')
    unfinished = [f'{labels[i]} ({g["runs"] - g["done"]} of {g["runs"]})'
                  for i, g in enumerate(groups) if g['done'] < g['runs']]
    if unfinished:
        fig.text(0.01, 0.01, 'runs not finished: ' + ', '.join(unfinished), fontsize=7,
                 color='red')
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(file, format='png')


def main(argv: list[str]) -> int:
    environment.start_cli(argv)
    config_path = config_flags.get_config_filename(flags.FLAGS['config'])
    workdir = cli.WORKDIR.value
    try:
        points = with_seeds(load_sweep(config_path), cli.CONFIG.value.seed, _SEEDS.value)
        if _POPULATION.value and _INDEX.value is not None:
            raise ValueError('--population trains the members of a population together; drop '
                             '--index (a job-array task) or --population.')
        runs = plan(cli.CONFIG.value, points, workdir, _POPULATION.value)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    if _LIST.value:
        for run in runs:
            print(f'{run.index:>3}  {run.status():<8} {run.name}')
        return 0
    if _INDEX.value is not None and not 0 <= _INDEX.value < len(runs):
        print(f'error: --index={_INDEX.value} is out of range: the sweep has {len(runs)} points '
              f'(0..{len(runs) - 1}); see --list.', file=sys.stderr)
        return 1
    failed, busy = [], []
    if not _REPORT.value:
        selected = runs if _INDEX.value is None else [runs[_INDEX.value]]
        succeeded: dict[str, bool] = {}
        try:
            for run in selected:
                if run.workdir not in succeeded:  # A population trains once, for all members.
                    succeeded[run.workdir] = run_point(run)
        except train.TrainingInterrupted as e:
            print(e, file=sys.stderr)
            return 128 + e.signum
        except KeyboardInterrupt:  # Ctrl-C before a point's loop catches signals.
            return cli.interrupted_while_starting()
        failed = [run for run in selected if not succeeded[run.workdir]]
        busy = [run for run in failed if run.status() == 'running']
        failed = [run for run in failed if run not in busy]
    rows = write_report(runs, workdir)
    with open(os.path.join(workdir, 'results.md')) as f:
        print(f.read(), end='')
    not_done = [row for row in rows if row['status'] != 'done']
    if busy:
        print(f'{len(busy)} point(s) in use by another run: {", ".join(run.name for run in busy)}; '
              'run the same command again once it has ended.', file=sys.stderr)
    if failed:
        print(f'{len(failed)} point(s) failed: {", ".join(run.name for run in failed)}; see '
              f'{ERROR_FILE} in their directories.', file=sys.stderr)
    if failed or busy:
        return 1
    if _INDEX.value is None and not_done:
        print(f'{len(not_done)} point(s) not done.', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    flags.mark_flags_as_required(['config', 'workdir'])
    cli.run(main)
