"""A sweep's report: a row per run, a row per group of seeds with its mean and spread, as CSV,
Markdown and a plot."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import statistics
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, Protocol

import ml_collections
import scipy.stats

from vgg_flax import config_schema, hyper, run_dir, summary, sweep_dir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Point = hyper.Point
# The keys of a run's results.json that its row reports, each a number where present.
RESULT_KEYS = (
    'test_accuracy',
    'best_test_accuracy',
    'val_accuracy',
    'best_epoch',
    'epochs',
    'examples_per_sec',
    'wall_seconds',
)
# Reported as mean, std, 95% CI, min and max over a group's finished runs.
SPREAD_KEYS = ('test_accuracy', 'best_test_accuracy', 'val_accuracy')


class ReportedRun(Protocol):
    """What the report reads of a point's run (`sweep.PointRun`)."""

    index: int
    point: Point
    config: ml_collections.ConfigDict

    def status(self) -> str: ...

    def results(self) -> dict[str, Any] | None: ...


@functools.cache
def point_cost(config_json: str) -> summary.Summary:
    """A point's parameters, FLOPs and step memory, once per process: it compiles a step."""
    return summary.summarize(config_schema.from_plain(json.loads(config_json)))


def report_fields(runs: Sequence[ReportedRun]) -> list[str]:
    """The columns that tell the points apart: every field any point shows, in order."""
    return list(dict.fromkeys(field for run in runs for field in hyper.shown_fields(run.point)))


def report_rows(runs: Sequence[ReportedRun]) -> list[dict[str, Any]]:
    """One row per point: its fields (None where a point keeps the base config's value),
    model cost (from the summary) and run results."""
    rows, fields = [], report_fields(runs)
    for run in runs:
        shown = hyper.shown_fields(run.point)
        row: dict[str, Any] = {
            'index': run.index,
            **{f: shown.get(f) for f in fields},
            'status': run.status(),
        }
        try:
            # Seeds cost alike, and a population member costs what a single run does.
            seedless = {
                **config_schema.to_plain(run.config),
                'seed': 0,
                'population_size': 1,
                'members_over_devices': False,
            }
            cost = point_cost(json.dumps(seedless, sort_keys=True))
            row.update(
                params=cost.num_params,
                forward_gflops=cost.forward_flops_per_example / 1e9,
                step_memory_mib=cost.train_step_bytes / 2**20,
            )
        except ValueError:  # An invalid point: its row says 'failed' and has no cost.
            row.update(params=None, forward_gflops=None, step_memory_mib=None)
        results = run.results() or {}
        row.update({key: results.get(key) for key in RESULT_KEYS})
        rows.append(row)
    return rows


def seed_statistics(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation, the half-width of the 95% confidence interval of the
    mean (Student's t with n - 1 degrees of freedom), min and max; None where n is too small for
    one."""
    n = len(values)
    mean = statistics.fmean(values) if n else None
    std = statistics.stdev(values) if n > 1 else None
    ci95 = scipy.stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else None
    return {
        'mean': mean,
        'std': std,
        'ci95': ci95,
        'min': min(values, default=None),
        'max': max(values, default=None),
    }


def seed_groups(
    rows: Sequence[dict[str, Any]], group_fields: Sequence[str]
) -> list[list[dict[str, Any]]]:
    """The runs' rows in groups that differ only in their seed (`group_fields`: the other swept
    fields), in the order they first come."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(hyper.point_name(_set_fields(row, group_fields)), []).append(row)
    return list(groups.values())


def group_rows(
    groups: Sequence[Sequence[dict[str, Any]]], group_fields: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per group of `seed_groups`: its fields, its count of runs and of finished ones,
    the spread of `SPREAD_KEYS` over the finished runs, their mean examples/sec, and the
    model's cost."""
    summaries = []
    for members in groups:
        done = [row for row in members if row['status'] == 'done']
        summary_row = {field: members[0][field] for field in group_fields}
        summary_row.update(
            runs=len(members),
            done=len(done),
            not_done=', '.join(
                f'{row["status"]} {row["index"]}' for row in members if row['status'] != 'done'
            ),
        )
        for key in SPREAD_KEYS:
            summary_row.update(
                {
                    f'{key}_{stat}': value
                    for stat, value in seed_statistics(_present(done, key)).items()
                }
            )
        speeds = _present(done, 'examples_per_sec')
        summary_row['examples_per_sec'] = seed_statistics(speeds)['mean']
        summary_row.update(
            {key: members[0][key] for key in ('params', 'forward_gflops', 'step_memory_mib')}
        )
        summaries.append(summary_row)
    return summaries


def _present(rows: Sequence[dict[str, Any]], key: str) -> list[Any]:
    """The rows' values of `key`, where they have one (a run's results may lack a key)."""
    return [row[key] for row in rows if row.get(key) is not None]


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
    with run_dir.atomic_write(path) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows({k: ('' if v is None else v) for k, v in row.items()} for row in rows)


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        '| ' + ' | '.join(columns) + ' |',
        '|' + ' --- |' * len(columns),
        *('| ' + ' | '.join(row) + ' |' for row in rows),
    ]


def groups_table(groups: Sequence[dict[str, Any]], group_fields: Sequence[str]) -> list[str]:
    """The Markdown table of the groups of seeds: their fields, counts and spreads."""
    return _markdown_table(
        [
            *group_fields,
            'runs',
            'done',
            'not done',
            'val acc',
            'test acc',
            'std',
            'min',
            'max',
            'best test acc',
            'std',
            'examples/sec',
            'params',
            'forward GFLOPs',
        ],
        [
            [
                *(_cell(group[f]) for f in group_fields),
                _cell(group['runs']),
                _cell(group['done']),
                _cell(group['not_done']),
                _with_interval(group, 'val_accuracy'),
                _with_interval(group, 'test_accuracy'),
                _cell(group['test_accuracy_std']),
                _cell(group['test_accuracy_min']),
                _cell(group['test_accuracy_max']),
                _with_interval(group, 'best_test_accuracy'),
                _cell(group['best_test_accuracy_std']),
                _cell(group['examples_per_sec']),
                _cell(group['params']),
                _cell(group['forward_gflops']),
            ]
            for group in groups
        ],
    )


def write_report(runs: Sequence[ReportedRun], workdir: str) -> list[dict[str, Any]]:
    """Writes results.csv (a row per run), summary.csv (a row per group of seeds), results.md
    (both tables) and sweep.png into the sweep's workdir, each atomically."""
    rows = report_rows(runs)
    group_fields = [field for field in report_fields(runs) if field != 'seed']
    run_groups = seed_groups(rows, group_fields)
    groups = group_rows(run_groups, group_fields)
    os.makedirs(workdir, exist_ok=True)
    csv_path, summary_path, md_path, png_path = (
        os.path.join(workdir, name) for name in sweep_dir.REPORT_FILES
    )
    _write_csv(csv_path, rows)
    _write_csv(summary_path, groups)
    lines = [
        "Per group of seeds: mean ± 95% confidence interval (Student's t) over the "
        'finished runs, and standard deviation.',
        '',
    ]
    lines += groups_table(groups, group_fields)
    lines += ['', 'Per run:', '']
    columns = list(rows[0]) if rows else []
    lines += _markdown_table(columns, [[_cell(row[c]) for c in columns] for row in rows])
    with run_dir.atomic_write(md_path) as f:
        f.write('\n'.join(lines) + '\n')
    finished = [_present(runs_of_group, 'test_accuracy') for runs_of_group in run_groups]
    with run_dir.atomic_write(png_path, 'wb') as f:
        plot_sweep(groups, finished, group_fields, f)
    return rows


def plot_sweep(
    groups: Sequence[dict[str, Any]],
    finished: Sequence[Sequence[float]],
    fields: Sequence[str],
    file: IO[bytes],
) -> Figure:
    """Mean test accuracy (error bars: 95% CI over seeds) and each finished run's (`finished`,
    per group) against the swept value, against parameters and against forward FLOPs (what the
    accuracy costs); mean throughput beside. The accuracy axes span the runs and end at 1: a
    wide interval of few seeds is cut there, not allowed to flatten every other group."""
    import matplotlib.ticker  # Imported when used: slow to import.
    from matplotlib.figure import Figure  # Imported when used: slow to import.

    numeric = len(fields) == 1 and all(isinstance(g[fields[0]], (int, float)) for g in groups)
    labels = [g[fields[0]] if numeric else hyper.point_name(_set_fields(g, fields)) for g in groups]
    positions: list[Any] = labels if numeric else list(range(len(groups)))
    fig = Figure(figsize=(17, 4.4), dpi=110)
    axes = fig.subplots(1, 4)
    done = [i for i, g in enumerate(groups) if g['done']]

    shown = [value for i in done for value in finished[i]]
    margin = 0.05 * (max(shown) - min(shown)) + 0.002 if shown else 0.0

    def accuracy(ax: Any, indices: Sequence[int], xs: Sequence[float]) -> None:
        ax.set_ylabel('test accuracy (mean, 95% CI; dots: runs)')
        if not indices:  # No finished group, or none with a measured cost.
            return
        ax.errorbar(
            xs,
            [groups[i]['test_accuracy_mean'] for i in indices],
            yerr=[groups[i]['test_accuracy_ci95'] or 0 for i in indices],
            fmt='o-',
            capsize=3,
        )
        runs = [(x, value) for i, x in zip(indices, xs, strict=True) for value in finished[i]]
        ax.plot([x for x, _ in runs], [value for _, value in runs], '.', color='0.4', alpha=0.7)
        if shown:
            ax.set_ylim(min(shown) - margin, min(1.0, max(shown) + margin))

    accuracy(axes[0], done, [positions[i] for i in done])
    axes[3].plot([positions[i] for i in done], [groups[i]['examples_per_sec'] for i in done], 'o-')
    axes[3].set_ylabel('examples per sec')
    for ax in (axes[0], axes[3]):
        ax.set_xlabel(fields[0] if numeric else 'point')
        if numeric and all(x > 0 for x in positions) and max(positions) / min(positions) >= 8:
            ax.set_xscale('log', base=2)
        if numeric:
            ax.set_xticks(positions, [str(x) for x in positions])
        else:
            ax.set_xticks(positions, [str(x) for x in labels], rotation=30, ha='right', fontsize=7)
    for ax, key, scale, name in (
        (axes[1], 'params', 1e6, 'parameters (millions)'),
        (axes[2], 'forward_gflops', 1, 'forward GFLOPs per image'),
    ):
        measured = [i for i in done if groups[i][key]]
        xs = [groups[i][key] / scale for i in measured]
        accuracy(ax, measured, xs)
        for i, x in zip(measured, xs, strict=True):
            ax.annotate(
                str(labels[i]),
                (x, groups[i]['test_accuracy_mean']),
                fontsize=7,
                xytext=(3, 3),
                textcoords='offset points',
            )
        ax.set_xscale('log')
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(xs, [f'{x:.3g}' for x in xs], rotation=30, fontsize=7)
        ax.set_xlabel(name)
    unfinished = [
        f'{labels[i]} ({g["runs"] - g["done"]} of {g["runs"]})'
        for i, g in enumerate(groups)
        if g['done'] < g['runs']
    ]
    if unfinished:
        fig.text(0.01, 0.01, 'runs not finished: ' + ', '.join(unfinished), fontsize=7, color='red')
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(file, format='png')
    return fig
