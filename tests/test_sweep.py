"""The sweep CLI: listing, job-array indices, skipping, resuming, failures and the report."""

from __future__ import annotations

import csv

import pytest

from vgg_flax import config_utils, sweep

from conftest import PNG_MAGIC, ROOT

SWEEP_FILE = '''
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
'''


@pytest.fixture
def sweep_file(tmp_path, idx_dir):
    path = tmp_path / 'tiny_sweep.py'
    path.write_text(SWEEP_FILE.format(idx_dir=str(idx_dir)))
    return path


@pytest.fixture
def run_sweep(run_cli):
    return lambda sweep_file, workdir, *args: run_cli(
        sweep, f'--config={sweep_file}', f'--workdir={workdir}', *args)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sweep_lists_runs_skips_resumes_and_reports(sweep_file, tmp_path, run_sweep):
    workdir = tmp_path / 'sweep'
    done = run_sweep(sweep_file, workdir, '--list')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split('\n')[:3] == ['  0  missing  model.width_ratio=8',
                                           '  1  missing  model.width_ratio=16',
                                           '  2  missing  model.width_ratio=3']

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
        ('8', 'done'), ('16', 'done'), ('3', 'failed')]
    assert int(rows[0]['params']) > int(rows[1]['params']) > 0
    for column in ('forward_gflops', 'step_memory_mib', 'test_accuracy', 'best_epoch',
                   'examples_per_sec', 'wall_seconds'):
        assert rows[0][column] and rows[1][column] and not rows[2][column], column
    assert float(rows[0]['test_accuracy']) > 0.3
    markdown = (workdir / 'results.md').read_text().splitlines()
    assert markdown[0].startswith('| index | model.width_ratio | status | params |')
    assert len(markdown) == 5 and '| failed |' in markdown[4]
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


def test_index_out_of_range_and_a_file_without_sweep(sweep_file, tmp_path, run_sweep):
    done = run_sweep(sweep_file, tmp_path / 'sweep', '--index=3')
    assert done.returncode == 1 and '--index=3 is out of range: the sweep has 3 points' in (
        done.stderr)
    done = run_sweep(ROOT / 'experiments' / 'quick.py', tmp_path / 'sweep', '--list')
    assert done.returncode == 1 and 'has no get_sweep()' in done.stderr


def test_point_config_and_names():
    base = config_utils.default_config()
    config = sweep.point_config(base, {'model.width_ratio': 8, 'model.dense_features': (64,)})
    assert config.model.width_ratio == 8 and base.model.width_ratio == 4
    assert sweep.point_name({'model.width_ratio': 8, 'model.dense_features': (64, 32)}) == (
        'model.width_ratio=8,model.dense_features=64-32')
    with pytest.raises(ValueError, match="the sweep sets 'model.widht_ratio'"):
        sweep.point_config(base, {'model.widht_ratio': 8})


def test_ratio_sweep_experiment_covers_the_lessons_ratios():
    points = sweep.load_sweep(str(ROOT / 'experiments' / 'ratio_sweep.py'))
    assert points == [{'model.width_ratio': r} for r in (1, 2, 4, 8, 16)]
