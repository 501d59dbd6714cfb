"""The sweep CLI: listing, job-array indices, skipping, resuming, failures and the report."""

from __future__ import annotations

import csv
import errno
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from vgg_flax import config_schema, errors, hyper, run_dir, sweep, sweep_dir, sweep_report

from conftest import (
    PNG_MAGIC,
    ROOT,
    epoch_metrics,
    load_experiment,
    logged_past,
    sigterm_once_training,
    tiny_config,
    write_fashion_idx_dir,
)

SWEEP_FILE = """
from vgg_flax import config_schema, hyper


def get_config():
    config = config_schema.default_config()
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


@pytest.mark.slow
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
    base = config_schema.default_config()
    config = sweep.point_config(base, {'model.width_ratio': 8, 'model.dense_features': (64,)})
    assert config.model.width_ratio == 8 and base.model.width_ratio == 4
    assert hyper.point_name({'model.width_ratio': 8, 'model.dense_features': (64, 32)}) == (
        'model.width_ratio=8,model.dense_features=64-32'
    )
    with pytest.raises(ValueError, match=r"the sweep sets 'model.widht_ratio'"):
        sweep.point_config(base, {'model.widht_ratio': 8})


def test_a_points_value_must_be_of_its_fields_type():
    base = config_schema.default_config()
    config = sweep.point_config(base, {'train.learning_rate': 1, 'model.conv_arch': [[1, 64]]})
    assert type(config.train.learning_rate) is float and config.model.conv_arch == ((1, 64),)
    for value in ('0.1', None):
        with pytest.raises(
            errors.ConfigError,
            match=re.escape(
                f'the sweep point train.learning_rate={value} sets '
                f'config.train.learning_rate={value!r}; it must be a number'
            ),
        ):
            sweep.point_config(base, {'train.learning_rate': value})


def test_a_sweep_of_a_bad_point_or_a_raising_get_sweep_fails_in_one_line(tmp_path, run_cli):
    """Before any point trains, and before the workdir is made."""
    config = 'from vgg_flax import config_schema, hyper\n\n\ndef get_config():\n'
    config += '    return config_schema.default_config()\n\n\ndef get_sweep():\n'
    for name, get_sweep, message in (
        (
            'bad_type',
            "    return hyper.axis('train.learning_rate', [0.1, 'fast'])\n",
            "sets config.train.learning_rate='fast'; it must be a number",
        ),
        (
            'raises',
            "    raise KeyError('oops')\n",
            "bad_type_raises.py: get_sweep() raised KeyError: 'oops'",
        ),
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def fake_finished(runs, epochs=None):
    """What finished runs leave for their sweep to read (their config.json and results.json),
    without training them."""
    for run in runs:
        os.makedirs(run.workdir, exist_ok=True)
        config = config_schema.to_plain(run.config)
        if epochs:
            config['train']['num_epochs'] = epochs
        run_dir.write_json_atomic(os.path.join(run.workdir, run_dir.CONFIG_FILE), config)
        results = {'epochs': epochs or run.config.train.num_epochs, 'test_accuracy': 0.5}
        if run.member is not None:
            results['members'] = [dict(results) for _ in range(run.config.population_size)]
        run_dir.write_json_atomic(os.path.join(run.workdir, run_dir.RESULTS_FILE), results)


def one_error_line(done, *says):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith('error: '), done.stderr
    for text in says:
        assert text in lines[0], (text, lines[0])


def test_a_sweep_records_its_definition_refuses_another_and_reports_its_own(
    sweep_file, tmp_path, run_sweep, run_cli, monkeypatch
):
    """The finished runs of one sweep are never reported or skipped as another's: a workdir
    that records no definition yet has its runs checked against the command, the first training
    command records it, a later one must ask for the same sweep (up to what a resume may
    change), and --list and --report need no flag but --workdir."""
    sweep_file.write_text(sweep_file.read_text().replace('[8, 16, 3]', '[8, 16]'))
    workdir = tmp_path / 'sweep'
    flags = ['--config.train.learning_rate=0.1', '--config.data.image_size=28']
    base = load_experiment(sweep_file)
    base.train.learning_rate, base.data.image_size = 0.1, 28
    fake_finished(sweep.plan(base, sweep.load_sweep(str(sweep_file)), str(workdir)))

    done = run_sweep(sweep_file, workdir, '--report')  # Without the sweep's flags.
    one_error_line(
        done,
        f'error: [0] model.width_ratio=8: {workdir}/model.width_ratio=8 holds a run of another '
        'config (data.image_size: 28 in the run, 32 now; train.learning_rate: 0.1 in the run, '
        '0.05 now)',
        '1 more point(s) likewise.',
    )
    assert not (workdir / 'results.md').exists() and not (workdir / 'sweep.json').exists()

    done = run_sweep(sweep_file, workdir, *flags)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(': done, skipped') == 2
    assert (workdir / sweep_dir.SWEEP_FILE).is_file()
    report = (workdir / 'results.md').read_text()

    for other, differ in (
        ([], 'data.image_size: 28 in the run, 32 now; train.learning_rate: 0.1 in the run, 0.05'),
        (
            ['--config.train.learning_rate=0.2', '--config.data.image_size=28'],
            'train.learning_rate: 0.1 in the run, 0.2 now',
        ),
        ([*flags, '--seeds=2'], '--seeds: 1 in the run, 2 now'),
        (
            [*flags, '--seeds=2', '--population', '--list'],
            '--seeds: 1 in the run, 2 now; --population: off in the run, on now',
        ),
        (
            [*flags, '--config.train.num_epochs=2', '--config.train.lr_schedule=cosine'],
            "train.lr_schedule: 'constant' in the run, 'cosine' now; train.num_epochs: 1 in the "
            'run, 2 now (the cosine schedule',
        ),
    ):
        one_error_line(
            run_sweep(sweep_file, workdir, *other),
            f'error: {workdir} holds another sweep ({differ}',
            f"pass another --workdir for this one, or that sweep's own flags, "
            f'--config={sweep_file} --config.train.learning_rate=0.1 '
            '--config.data.image_size=28 (--list and --report need none).',
        )
    assert (workdir / 'results.md').read_text() == report

    listed = run_cli(sweep, f'--workdir={workdir}', '--list')
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        '  0  done     model.width_ratio=8',
        '  1  done     model.width_ratio=16',
    ]
    done = run_sweep(sweep_file, workdir, '--report')
    assert done.returncode == 0, done.stderr
    rows = read_csv(workdir / 'results.csv')
    assert [(row['status'], row['test_accuracy']) for row in rows] == [('done', '0.5')] * 2
    assert (workdir / 'results.md').read_text() == report  # The same sweep, the same FLOPs.

    # More epochs at a constant learning rate continue the runs, as a resume would.
    done = run_sweep(sweep_file, workdir, '--report', *flags, '--config.train.num_epochs=2')
    assert done.returncode == 1 and '2 point(s) not done.' in done.stderr, done.stderr
    # A point trained longer than the sweep asks is not reported as the sweep's.
    run = sweep.plan(base, [{'model.width_ratio': 16}], str(workdir))[0]
    fake_finished([run], epochs=3)
    one_error_line(
        run_sweep(sweep_file, workdir, '--report'),
        f'error: [1] model.width_ratio=16: {workdir}/model.width_ratio=16 has trained 3 '
        'epochs, more than config.train.num_epochs=1: ask for 3 or more',
    )
    fake_finished([run])

    # A point added to the sweep file shifts no job-array task onto another sweep's point.
    sweep_file.write_text(sweep_file.read_text().replace('[8, 16]', '[8, 16, 4]'))
    one_error_line(
        run_sweep(sweep_file, workdir, *flags, '--index=2'),
        'its points: 1 new (model.width_ratio=4)',
    )
    # A report that cannot be written (a full disk) says so, and the runs stay as they were.
    runs_before = sorted(str(p) for p in workdir.rglob('*'))

    def full_disk(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sweep_report, 'write_report', full_disk)
    one_error_line(
        run_cli(sweep, f'--workdir={workdir}', '--report'),
        f'error: the report cannot be written in {workdir} (No space left on device); the '
        'runs are intact',
    )
    assert sorted(str(p) for p in workdir.rglob('*')) == runs_before

    (workdir / sweep_dir.SWEEP_FILE).write_text(json.dumps({'points': 'all'}))
    one_error_line(
        run_cli(sweep, f'--workdir={workdir}', '--list'),
        f'{workdir}/sweep.json does not hold a sweep definition; delete it',
    )


def test_a_point_is_done_only_where_its_run_has_the_config_asked_for(tmp_path):
    """A run of another config, or one trained longer, is not the point's; what a resume may
    change (more epochs at a constant rate, a moved data directory) does not make it another's."""
    base = tiny_config(str(tmp_path / 'idx'))
    points = hyper.axis('model.width_ratio', [8, 16])
    workdir = str(tmp_path / 'sweep')
    fake_finished(sweep.plan(base, points, workdir))

    def plan(**fields):
        config = ml_collections.ConfigDict(base.to_dict())
        config.update_from_flattened_dict(fields)
        return sweep.plan(config, points, workdir)

    assert [(run.status(), run.problem()) for run in plan()] == [('done', None)] * 2
    assert [run.status() for run in plan(**{'data.idx_dir': '/moved'})] == ['done'] * 2
    longer = plan(**{'train.num_epochs': 3})
    assert [(run.status(), run.problem()) for run in longer] == [('missing', None)] * 2
    assert plan(**{'train.num_epochs': 1})[0].problem() == (
        f'{workdir}/model.width_ratio=8 has trained 2 epochs, more than '
        'config.train.num_epochs=1: ask for 2 or more, or pass another --workdir.'
    )
    assert plan(**{'train.momentum': 0.5})[1].problem() == (
        f'{workdir}/model.width_ratio=16 holds a run of another config (train.momentum: 0.9 in '
        'the run, 0.5 now): ask for the config it ran, or pass another --workdir.'
    )
    cosine = plan(**{'train.lr_schedule': 'cosine', 'train.num_epochs': 3})[0].problem()
    assert cosine and 'the cosine schedule spans' in cosine


def test_damaged_point_directories_are_named_with_their_fix(tmp_path):
    base = tiny_config(str(tmp_path / 'idx'))
    workdir = str(tmp_path / 'sweep')
    first, second = sweep.plan(base, hyper.axis('seed', [0, 1]), workdir)
    population = sweep.plan(base, hyper.axis('seed', [0, 1]), workdir, population=True)
    fake_finished([first, population[0]])
    results = pathlib.Path(first.workdir) / run_dir.RESULTS_FILE
    for damaged, says in (
        ('{', 'results.json is damaged'),
        ('[1]', 'results.json does not hold the results of this run'),
        ('{"epochs": "2"}', 'results.json does not hold the results of this run'),
        ('{"epochs": 2, "test_accuracy": "high"}', 'does not hold the results of this run'),
    ):
        results.write_text(damaged)
        problem = first.problem()
        assert problem and says in problem and problem.endswith(run_dir.RESULTS_FIX), damaged
        assert first.status() == 'missing' and first.results() is None
    members = pathlib.Path(population[0].workdir) / run_dir.RESULTS_FILE
    for damaged in ({}, {'members': [{}]}, {'members': [1, 2]}):
        members.write_text(json.dumps({'epochs': 2, **damaged}))
        assert [run.results() for run in population] == [None, None]
        assert 'does not hold the results of this run' in (population[1].problem() or '')
    (pathlib.Path(first.workdir) / run_dir.CONFIG_FILE).write_text('[]')
    assert 'config.json does not hold a config of this package' in (first.problem() or '')
    pathlib.Path(second.workdir).write_text('')
    assert second.problem() == (
        f"{second.workdir} is not a directory: move it out of the sweep's --workdir."
    )


def test_commands_that_cannot_be_a_sweep_are_refused_in_one_line_before_anything_runs(
    sweep_file, tmp_path, run_sweep, run_cli
):
    not_a_directory = tmp_path / 'file'
    not_a_directory.write_text('')
    one_error_line(run_sweep(sweep_file, not_a_directory), f'--workdir={not_a_directory} is a file')
    one_error_line(run_sweep(sweep_file, ''), '--workdir is empty')
    missing = tmp_path / 'missing'
    one_error_line(run_sweep(sweep_file, missing, '--report'), 'there is no sweep to report')
    one_error_line(run_cli(sweep, f'--workdir={missing}', '--list'), 'pass --config=FILE')
    for body, says in (
        ("raise KeyError('ratio')", "get_sweep() raised KeyError: 'ratio'"),
        ('return None', 'get_sweep() returns NoneType, not a list of points'),
        (
            "return hyper.axis('model.width_ratio', ['8'])",
            "sets config.model.width_ratio='8'; it must be an integer",
        ),
    ):
        definitions = SWEEP_FILE.format(idx_dir='unread').split('def get_sweep')[0]
        sweep_file.write_text(f'{definitions}def get_sweep():\n    {body}\n')
        one_error_line(run_sweep(sweep_file, missing), says)
    assert not missing.exists()
