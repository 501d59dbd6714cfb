"""The sweep CLI: listing, job-array indices, skipping, resuming, failures and the report."""

from __future__ import annotations

import csv
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from vgg_flax import config_utils, hyper, run_dir, sweep

from conftest import (
    PNG_MAGIC,
    ROOT,
    epoch_metrics,
    logged_past,
    sigterm_once_training,
    tiny_config,
    write_fashion_idx_dir,
)

SWEEP_FILE = """
from vgg_flax import config_utils, hyper


def get_config():
    config = config_utils.default_config()
    config.model.use_bn = True
    config.model.dense_features = (64, 64)
    config.data.source = 'idx'
    config.data.idx_dir = {idx_dir!r}
    config.data.image_size = 32
    config.train.batch_size = 32
    config.train.momentum = 0.9
    config.train.num_epochs = 1
    return config


def get_sweep():
    # Ratio 3 divides no VGG width: that point fails, the others must still run.
    return hyper.axis('model.width_ratio', [8, 16, 3])
"""


@pytest.fixture
def sweep_file(tmp_path, idx_dir):
    path = tmp_path / 'tiny_sweep.py'
    path.write_text(SWEEP_FILE.format(idx_dir=str(idx_dir)))
    return path


@pytest.fixture
def run_sweep(run_cli):
    return lambda sweep_file, workdir, *args: run_cli(
        sweep, f'--config={sweep_file}', f'--workdir={workdir}', *args
    )


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sweep_lists_runs_skips_resumes_and_reports(sweep_file, tmp_path, run_sweep):
    workdir = tmp_path / 'sweep'
    done = run_sweep(sweep_file, workdir, '--list')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split('\n')[:3] == [
        '  0  missing  model.width_ratio=8',
        '  1  missing  model.width_ratio=16',
        '  2  missing  model.width_ratio=3',
    ]

    done = run_sweep(sweep_file, workdir, '--index=1')  # One job-array task.
    assert done.returncode == 0, done.stderr
    assert (workdir / 'model.width_ratio=16' / 'results.json').is_file()
    assert not (workdir / 'model.width_ratio=8').exists()

    done = run_sweep(sweep_file, workdir)  # The rest; the bad point fails, the others go on.
    assert done.returncode == 1
    assert '[1] model.width_ratio=16: done, skipped' in done.stdout
    assert '[2] model.width_ratio=3: FAILED: ValueError' in done.stderr
    assert '1 point(s) failed: model.width_ratio=3' in done.stderr
    assert 'does not divide' in (workdir / 'model.width_ratio=3' / 'error.txt').read_text()
    rows = read_csv(workdir / 'results.csv')
    assert [(r['model.width_ratio'], r['status']) for r in rows] == [
        ('8', 'done'),
        ('16', 'done'),
        ('3', 'failed'),
    ]
    assert int(rows[0]['params']) > int(rows[1]['params']) > 0
    for column in (
        'forward_gflops',
        'step_memory_mib',
        'test_accuracy',
        'best_epoch',
        'examples_per_sec',
        'wall_seconds',
    ):
        assert rows[0][column] and rows[1][column] and not rows[2][column], column
    assert float(rows[0]['test_accuracy']) > 0.3
    by_group, by_run = (workdir / 'results.md').read_text().split('Per run:')
    markdown = by_run.strip().splitlines()
    assert markdown[0].startswith('| index | model.width_ratio | status | params |')
    assert len(markdown) == 5 and '| failed |' in markdown[4]
    groups = [line for line in by_group.splitlines() if line.startswith('| ')]
    assert groups[0].startswith(
        '| model.width_ratio | runs | done | not done | val acc | test acc | std | min | max |'
    )
    assert groups[4].startswith('| 3 | 1 | 0 | failed 2 | - |')  # Counted, not averaged.
    summary = read_csv(workdir / 'summary.csv')
    assert [(g['model.width_ratio'], g['runs'], g['done']) for g in summary] == [
        ('8', '1', '1'),
        ('16', '1', '1'),
        ('3', '1', '0'),
    ]
    assert summary[0]['test_accuracy_mean'] == rows[0]['test_accuracy']
    assert summary[0]['test_accuracy_std'] == '' and summary[2]['test_accuracy_mean'] == ''
    assert (workdir / 'sweep.png').read_bytes()[:8] == PNG_MAGIC

    # A longer schedule from the shell applies to every point and resumes the finished ones.
    done = run_sweep(sweep_file, workdir, '--config.train.num_epochs=2', '--index=0')
    assert done.returncode == 0, done.stderr
    assert 'Resuming' in done.stdout
    rows = read_csv(workdir / 'results.csv')
    assert [(r['status'], r['epochs']) for r in rows[:2]] == [('done', '2'), ('partial', '1')]

    done = run_sweep(sweep_file, workdir, '--report', '--config.train.num_epochs=2')
    assert done.returncode == 1  # Points 1 and 2 are not done at 2 epochs.
    assert '2 point(s) not done' in done.stderr


def test_index_out_of_range(sweep_file, tmp_path, run_sweep):
    done = run_sweep(sweep_file, tmp_path / 'sweep', '--index=3')
    assert done.returncode == 1 and '--index=3 is out of range: the sweep has 3 points' in (
        done.stderr
    )


def test_a_single_experiment_is_one_point_repeated_over_seeds(tmp_path, run_sweep):
    done = run_sweep(
        ROOT / 'experiments' / 'quick.py',
        tmp_path / 'sweep',
        '--list',
        '--seeds=3',
        '--config.seed=5',
    )
    assert done.returncode == 0, done.stderr
    assert [line.split()[-1] for line in done.stdout.splitlines()] == ['seed=5', 'seed=6', 'seed=7']
    done = run_sweep(ROOT / 'experiments' / 'quick.py', tmp_path / 'sweep', '--list')
    assert done.returncode == 0 and done.stdout.split() == ['0', 'missing', 'base']


def test_point_config_and_names():
    base = config_utils.default_config()
    config = sweep.point_config(base, {'model.width_ratio': 8, 'model.dense_features': (64,)})
    assert config.model.width_ratio == 8 and base.model.width_ratio == 4
    assert hyper.point_name({'model.width_ratio': 8, 'model.dense_features': (64, 32)}) == (
        'model.width_ratio=8,model.dense_features=64-32'
    )
    with pytest.raises(ValueError, match=r"the sweep sets 'model.widht_ratio'"):
        sweep.point_config(base, {'model.widht_ratio': 8})


def test_a_points_value_must_be_of_its_fields_type():
    base = config_utils.default_config()
    config = sweep.point_config(base, {'train.learning_rate': 1, 'model.conv_arch': [[1, 64]]})
    assert type(config.train.learning_rate) is float and config.model.conv_arch == ((1, 64),)
    for value in ('0.1', None):
        with pytest.raises(
            config_utils.ConfigError,
            match=re.escape(
                f'the sweep point train.learning_rate={value} sets '
                f'config.train.learning_rate={value!r}; it must be a number'
            ),
        ):
            sweep.point_config(base, {'train.learning_rate': value})


def test_a_sweep_of_a_bad_point_or_a_raising_get_sweep_fails_in_one_line(tmp_path, run_cli):
    """Before any point trains, and before the workdir is made."""
    config = 'from vgg_flax import config_utils, hyper\n\n\ndef get_config():\n'
    config += '    return config_utils.default_config()\n\n\ndef get_sweep():\n'
    for name, get_sweep, message in (
        (
            'bad_type',
            "    return hyper.axis('train.learning_rate', [0.1, 'fast'])\n",
            "sets config.train.learning_rate='fast'; it must be a number",
        ),
        ('raises', "    raise KeyError('oops')\n", "bad_type_raises.py does not load: 'oops'"),
    ):
        path = tmp_path / f'bad_type_{name}.py'
        path.write_text(config + get_sweep)
        workdir = tmp_path / name
        done = run_cli(sweep, f'--config={path}', f'--workdir={workdir}')
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not workdir.exists()


def test_named_points_are_named_by_their_name_and_seed_and_set_their_fields():
    point = hyper.named('bn', {'model.use_bn': True, 'seed': 2})
    assert hyper.point_name(point) == 'bn,seed=2'
    config = sweep.point_config(tiny_config(), point)
    assert config.model.use_bn and config.seed == 2


def test_ratio_sweep_experiment_runs_the_lessons_ratios_with_three_seeds():
    points = sweep.load_sweep(str(ROOT / 'experiments' / 'ratio_sweep.py'))
    assert points == [
        {'model.width_ratio': r, 'seed': s} for r in (1, 2, 4, 8, 16) for s in range(3)
    ]


def test_seeds_flag_repeats_every_point(sweep_file, tmp_path, run_sweep):
    done = run_sweep(sweep_file, tmp_path / 'sweep', '--seeds=2', '--config.seed=5', '--list')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split('\n')[:3] == [
        '  0  missing  model.width_ratio=8,seed=5',
        '  1  missing  model.width_ratio=8,seed=6',
        '  2  missing  model.width_ratio=16,seed=5',
    ]
    ratio_sweep = ROOT / 'experiments' / 'ratio_sweep.py'
    done = run_sweep(ratio_sweep, tmp_path / 'ratio', '--seeds=2', '--list')
    assert done.returncode == 1 and 'the sweep sets seed itself' in done.stderr


def test_a_population_sweep_reports_what_separate_runs_report(sweep_file, tmp_path, run_sweep):
    """--population trains each point's seeds as one population; the report keeps a row per
    seed, with the numbers the separate runs give (to float noise), and a failing point fails
    for all its seeds."""
    reports = {}
    for mode in ('separate', 'population'):
        flags = ['--seeds=2'] + (['--population'] if mode == 'population' else [])
        done = run_sweep(sweep_file, tmp_path / mode, *flags)
        assert done.returncode == 1 and 'failed: model.width_ratio=3,seed=0' in done.stderr, (
            done.stderr
        )
        reports[mode] = read_csv(tmp_path / mode / 'results.csv')
    assert (tmp_path / 'population' / 'model.width_ratio=8,seeds=0-1' / 'results.json').is_file()
    assert not (tmp_path / 'population' / 'model.width_ratio=8,seed=0').exists()
    separate, population = reports['separate'], reports['population']
    assert (
        [(r['model.width_ratio'], r['seed'], r['status']) for r in population]
        == [(r['model.width_ratio'], r['seed'], r['status']) for r in separate]
        == [
            ('8', '0', 'done'),
            ('8', '1', 'done'),
            ('16', '0', 'done'),
            ('16', '1', 'done'),
            ('3', '0', 'failed'),
            ('3', '1', 'failed'),
        ]
    )
    for a, b in zip(separate[:4], population[:4], strict=True):
        assert float(a['test_accuracy']) == pytest.approx(float(b['test_accuracy']), abs=0.03)
        assert a['params'] == b['params']
    done = run_sweep(sweep_file, tmp_path / 'population', '--population', '--index=0')
    assert done.returncode == 1 and 'drop --index' in done.stderr


def test_a_point_that_another_process_trains_is_skipped_and_left_alone(
    sweep_file, tmp_path, run_sweep
):
    """The same point started twice at once: the second sweep neither trains it nor marks it
    failed, says who holds it, and exits 1; the first one's directory is untouched."""
    workdir = tmp_path / 'sweep'
    point_dir = workdir / 'model.width_ratio=16'
    with run_dir.hold_workdir(str(point_dir)):
        listed = run_sweep(sweep_file, workdir, '--list')
        second = run_sweep(sweep_file, workdir, '--index=1')
    assert '  1  running  model.width_ratio=16' in listed.stdout
    assert second.returncode == 1
    assert '[1] model.width_ratio=16: in use by another run (host ' in second.stderr
    assert '1 point(s) in use by another run: model.width_ratio=16' in second.stderr
    assert sorted(p.name for p in point_dir.iterdir()) == [run_dir.LOCK_FILE]
    assert run_sweep(sweep_file, workdir, '--index=1').returncode == 0  # Once it has ended.


def test_sigterm_mid_sweep_then_the_same_command_finishes_without_redoing_a_point(
    tmp_path, idx_dir, run_sweep
):
    path = tmp_path / 'two_points.py'
    path.write_text(
        SWEEP_FILE.format(idx_dir=str(idx_dir))
        .replace('[8, 16, 3]', '[16, 8]')
        .replace('num_epochs = 1', 'num_epochs = 8')
    )
    workdir = tmp_path / 'sweep'
    process = subprocess.Popen(
        [sys.executable, '-m', 'vgg_flax.sweep', f'--config={path}', f'--workdir={workdir}'],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = sigterm_once_training(process, workdir / 'model.width_ratio=8' / 'steps.jsonl')
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert 'SIGTERM stopped the run at step' in stderr
    first_results = (workdir / 'model.width_ratio=16' / 'results.json').read_text()
    again = run_sweep(path, workdir)
    assert again.returncode == 0, again.stderr
    assert '[0] model.width_ratio=16: done, skipped' in again.stdout
    assert 'Resuming' in again.stdout
    assert (workdir / 'model.width_ratio=16' / 'results.json').read_text() == first_results
    assert [row['status'] for row in read_csv(workdir / 'results.csv')] == ['done', 'done']


def test_seeds_killed_mid_seed_resume_to_the_uninterrupted_runs(tmp_path):
    """kill -9 in the second seed's second epoch, then the same command: the first seed is
    skipped, the second resumes from its checkpoint, and every seed's metrics equal those of an
    uninterrupted sweep (both run as the CLI, whose CPU tuning flags change the last digits)."""
    idx_dir = write_fashion_idx_dir(tmp_path / 'idx', num_train=800)  # 25 steps an epoch.
    path = tmp_path / 'one_point.py'
    path.write_text(
        SWEEP_FILE.format(idx_dir=str(idx_dir))
        .split('\n\ndef get_sweep')[0]
        .replace('num_epochs = 1', 'num_epochs = 2\n    config.train.log_every_steps = 5')
    )

    def start(workdir):
        """The sweep, its output in a file beside `workdir`: a pipe nobody reads could fill."""
        with open(f'{workdir}.log', 'w') as log:
            return subprocess.Popen(
                [
                    sys.executable,
                    '-m',
                    'vgg_flax.sweep',
                    f'--config={path}',
                    f'--workdir={workdir}',
                    '--seeds=2',
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def output(workdir):
        return pathlib.Path(f'{workdir}.log').read_text()

    def metrics(workdir):
        return [epoch_metrics(workdir / seed) for seed in ('seed=0', 'seed=1')]

    straight = tmp_path / 'straight'
    assert start(straight).wait(timeout=600) == 0, output(straight)
    workdir = tmp_path / 'killed'
    second_seed = workdir / 'seed=1'
    process, deadline = start(workdir), time.time() + 600
    while not ((second_seed / 'checkpoints' / '25').is_dir() and logged_past(second_seed, 25)):
        assert process.poll() is None and time.time() < deadline, output(workdir)
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (second_seed / 'results.json').exists()
    assert start(workdir).wait(timeout=600) == 0, output(workdir)
    assert '[0] seed=0: done, skipped' in output(workdir) and 'Resuming' in output(workdir)
    resumed = metrics(workdir)
    assert resumed == metrics(straight)
    assert [len(seed) for seed in resumed] == [2, 2]
    rows = [read_csv(w / 'results.csv') for w in (workdir, straight)]
    assert [r['test_accuracy'] for r in rows[0]] == [r['test_accuracy'] for r in rows[1]]
