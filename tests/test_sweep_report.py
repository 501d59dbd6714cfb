"""A sweep's report: a row per run, a group per set of seeds with its mean and spread."""

from __future__ import annotations

import csv
import io

import pytest

from vgg_flax import hyper, sweep, sweep_report

from conftest import tiny_config


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_reports_of_named_and_of_chained_points_keep_their_points_apart(tmp_path):
    """Points need not set the same fields: a named ablation with seeds groups by name, and a
    chain's report has a column per field any point sets ('-' where one keeps the base's)."""
    base = tiny_config(str(tmp_path / 'unread'))
    ablation = sweep.with_seeds(
        hyper.cumulative(('plain', {}), ('small-head', {'model.dense_features': (16, 16)})), 0, 2
    )
    rows = sweep_report.write_report(
        sweep.plan(base, ablation, str(tmp_path / 'a')), str(tmp_path / 'a')
    )
    assert [(row['name'], row['seed']) for row in rows] == [
        ('plain', 0),
        ('plain', 1),
        ('small-head', 0),
        ('small-head', 1),
    ]
    groups = read_csv(tmp_path / 'a' / 'summary.csv')
    assert [(group['name'], group['runs']) for group in groups] == [
        ('plain', '2'),
        ('small-head', '2'),
    ]
    assert int(groups[0]['params']) > int(groups[1]['params'])

    chained = hyper.chain(hyper.axis('model.width_ratio', [8]), hyper.axis('model.use_bn', [False]))
    sweep_report.write_report(sweep.plan(base, chained, str(tmp_path / 'c')), str(tmp_path / 'c'))
    assert [
        (row['model.width_ratio'], row['model.use_bn'])
        for row in read_csv(tmp_path / 'c' / 'results.csv')
    ] == [('8', ''), ('', 'False')]
    assert len(read_csv(tmp_path / 'c' / 'summary.csv')) == 2
    assert '| 8 | - | 1 | 0 | missing 0 |' in (tmp_path / 'c' / 'results.md').read_text()


def test_seed_statistics_are_mean_std_and_a_students_t_interval():
    result = sweep_report.seed_statistics([0.8, 0.9, 1.0])
    assert result['mean'] == pytest.approx(0.9) and result['std'] == pytest.approx(0.1)
    assert result['ci95'] == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-6)
    assert result['min'] == 0.8 and result['max'] == 1.0
    assert sweep_report.seed_statistics([0.7]) == {
        'mean': 0.7,
        'std': None,
        'ci95': None,
        'min': 0.7,
        'max': 0.7,
    }
    assert sweep_report.seed_statistics([]) == {
        'mean': None,
        'std': None,
        'ci95': None,
        'min': None,
        'max': None,
    }


def test_groups_average_finished_seeds_only_and_count_the_rest():
    def row(index, ratio, seed, status, accuracy):
        return {
            'index': index,
            'model.width_ratio': ratio,
            'seed': seed,
            'status': status,
            'test_accuracy': accuracy,
            'best_test_accuracy': accuracy,
            'examples_per_sec': 100.0 * (seed + 1),
            'params': 10,
            'forward_gflops': 0.1,
            'step_memory_mib': 5.0,
        }

    rows = [
        row(0, 8, 0, 'done', 0.70),
        row(1, 8, 1, 'done', 0.80),
        row(2, 8, 2, 'partial', 0.1),
        row(3, 16, 0, 'done', 0.60),
        row(4, 16, 1, 'failed', None),
        row(5, 16, 2, 'missing', None),
    ]
    fields = ['model.width_ratio']
    eight, sixteen = sweep_report.group_rows(sweep_report.seed_groups(rows, fields), fields)
    assert (eight['runs'], eight['done'], eight['not_done']) == (3, 2, 'partial 2')
    assert eight['test_accuracy_mean'] == pytest.approx(0.75)
    assert eight['test_accuracy_std'] == pytest.approx(0.0707107, rel=1e-5)
    assert eight['test_accuracy_ci95'] == pytest.approx(12.7062 * 0.0707107 / 2**0.5, rel=1e-4)
    assert eight['examples_per_sec'] == pytest.approx(150.0)
    assert (sixteen['done'], sixteen['not_done']) == (1, 'failed 4, missing 5')
    assert sixteen['test_accuracy_mean'] == 0.60 and sixteen['test_accuracy_ci95'] is None
    assert 'seed' not in eight and eight['params'] == 10


def test_the_plot_shows_accuracy_against_the_ratio_the_parameters_and_the_flops():
    groups = [
        {
            'model.width_ratio': ratio,
            'runs': 3,
            'done': 3 if ratio > 1 else 2,
            'test_accuracy_mean': 0.93 - 0.005 * ratio,
            'test_accuracy_ci95': 0.002,
            'examples_per_sec': 500.0 * ratio,
            'params': 10e6 / ratio**2,
            'forward_gflops': 0.3 / ratio**2,
        }
        for ratio in (1, 2, 4, 8, 16)
    ]
    groups[0]['test_accuracy_ci95'] = 0.6  # Two seeds far apart: an interval wider than 1.
    finished = [[0.50, 0.99]] + [[g['test_accuracy_mean']] * 3 for g in groups[1:]]
    finished[1] = [0.919, 0.920, 0.921]
    figure = sweep_report.plot_sweep(groups, finished, ['model.width_ratio'], io.BytesIO())
    assert [ax.get_xlabel() for ax in figure.axes] == [
        'model.width_ratio',
        'parameters (millions)',
        'forward GFLOPs per image',
        'model.width_ratio',
    ]
    for ax in figure.axes[:3]:  # Every ratio's mean with its error bar, and every run's dot.
        assert ax.get_ylabel() == 'test accuracy (mean, 95% CI; dots: runs)'
        assert len(ax.lines[0].get_xdata()) == 5
        dots = ax.lines[-1].get_ydata()
        assert len(dots) == 14 and {0.50, 0.99, 0.919, 0.921} <= set(dots)
        # The axis spans the runs, not the interval, and never goes beyond an accuracy of 1.
        bottom, top = ax.get_ylim()
        assert 0.45 < bottom < 0.50 and 0.99 < top <= 1.0
    assert 'runs not finished: 1 (1 of 3)' in [text.get_text() for text in figure.texts]
