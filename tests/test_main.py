"""The training and evaluation CLIs end to end, as a user runs them, checking every output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator

from vgg_flax import checkpointing, config_schema, evaluate, main, run_dir

from conftest import PNG_MAGIC, ROOT, sigterm_once_training, write_fashion_idx_dir

TINY = (
    f'--config={ROOT / "experiments" / "quick.py"}',
    '--config.model.width_ratio=16',
    '--config.model.use_bn=True',
    '--config.model.dense_features=(64,64)',
    '--config.train.batch_size=32',
    '--config.train.momentum=0.9',
)


def train_args(idx_dir, workdir, *extra):
    return (
        *TINY,
        '--config.data.source=idx',
        f'--config.data.idx_dir={idx_dir}',
        f'--workdir={workdir}',
        *extra,
    )


@pytest.mark.slow
def test_main_writes_every_file_of_a_run(idx_dir, tmp_path, run_cli):
    workdir = tmp_path / 'run'
    done = run_cli(main, *train_args(idx_dir, workdir, '--config.train.num_epochs=2'))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith('epoch ')]
    assert len(lines) == 2 and 'examples/sec' in lines[0] and 'test acc' in lines[0]
    assert sorted(os.listdir(workdir)) == [
        '.lock',
        'checkpoints',
        'config.json',
        'curves.png',
        'data.json',
        'environment.json',
        'metrics.jsonl',
        'results.json',
        'steps.jsonl',
        'tensorboard',
    ]
    config = run_dir.read_config(str(workdir))
    assert config.model.width_ratio == 16 and config.data.image_size == 32
    assert config.train.num_epochs == 2 and config.model.dense_features == (64, 64)
    env = json.loads((workdir / 'environment.json').read_text())
    assert env['backend'] == 'cpu' and env['packages']['jax']
    history = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in history] == [1, 2]
    assert set(history[0]) >= {
        'train_loss',
        'train_accuracy',
        'test_loss',
        'test_accuracy',
        'examples_per_sec',
        'epoch_seconds',
        'learning_rate',
    }
    results = json.loads((workdir / 'results.json').read_text())
    assert results['test_accuracy'] == history[-1]['test_accuracy'] > 0.5
    assert (workdir / 'curves.png').read_bytes()[:8] == PNG_MAGIC
    assert checkpointing.Checkpointer(str(workdir), keep=3).all_steps() == [10, 20]
    # TensorBoard reads the event file written without TensorFlow.
    events = event_accumulator.EventAccumulator(str(workdir / 'tensorboard'))
    events.Reload()
    assert 'test_accuracy' in events.Tags()['scalars']
    test_acc = events.Scalars('test_accuracy')
    assert [e.step for e in test_acc] == [r['step'] for r in history] == [10, 20]
    assert test_acc[-1].value == pytest.approx(history[-1]['test_accuracy'])

    done = run_cli(evaluate, f'--workdir={workdir}')
    assert done.returncode == 0, done.stderr
    assert f'checkpoint step 20: test accuracy {results["test_accuracy"]:.4f}' in done.stdout
    assert 'confusion matrix' in done.stdout and 'Ankle boot' in done.stdout
    evaluation = json.loads((workdir / evaluate.EVALUATION_FILE).read_text())
    assert evaluation['test_accuracy'] == pytest.approx(results['test_accuracy'])
    assert evaluation['num_examples'] == 100
    assert sum(map(sum, evaluation['confusion_matrix'])) == 100
    assert len(evaluation['per_class_accuracy']) == 10
    assert (workdir / evaluate.PREDICTIONS_FILE).read_bytes()[:8] == PNG_MAGIC
    done = run_cli(evaluate, f'--workdir={workdir}', '--tta_translate=1', '--tta=false')
    assert done.returncode == 0, done.stderr
    evaluation = json.loads((workdir / evaluate.EVALUATION_FILE).read_text())
    assert (evaluation['tta'], evaluation['tta_translate']) == (False, 1)
    done = run_cli(evaluate, f'--workdir={workdir}', '--split=validation')
    assert done.returncode == 1
    assert 'held out no validation set (config.data.validation_examples=0)' in done.stderr

    done = run_cli(main, *train_args(idx_dir, workdir, '--config.model.width_ratio=8'))
    assert done.returncode == 1
    assert 'model.width_ratio: 16 in the run, 8 now' in done.stderr

    done = run_cli(evaluate, f'--workdir={workdir}', '--step=7')
    assert done.returncode == 1 and 'no checkpoint at step 7; it has 10, 20' in done.stderr


@pytest.mark.slow
def test_sigterm_saves_and_the_same_command_resumes(tmp_path, run_cli):
    idx_dir = write_fashion_idx_dir(tmp_path / 'idx', num_train=6400)
    workdir = tmp_path / 'run'
    args = train_args(idx_dir, workdir, '--config.train.num_epochs=2')
    process = subprocess.Popen(
        [sys.executable, '-m', 'vgg_flax.main', *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = sigterm_once_training(process, workdir / 'steps.jsonl')
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert 'SIGTERM stopped the run at step' in stderr
    assert checkpointing.Checkpointer(str(workdir), keep=3).latest_step() is not None
    done = run_cli(main, *args)
    assert done.returncode == 0, done.stderr
    assert 'Resuming' in done.stdout
    results = json.loads((workdir / 'results.json').read_text())
    assert results['epochs'] == 2 and results['steps'] == 400


def test_main_reports_missing_data_before_training(tmp_path, run_cli):
    done = run_cli(main, *train_args(tmp_path / 'nowhere', tmp_path / 'run'))
    assert done.returncode == 1
    assert 'train-images-idx3-ubyte(.gz) is missing' in done.stderr


def test_main_rejects_a_bad_value_before_reading_data(tmp_path, run_cli):
    done = run_cli(
        main,
        *train_args(tmp_path / 'nowhere', tmp_path / 'run', '--config.train.lr_schedule=linear'),
    )
    assert done.returncode == 1
    assert "config.train.lr_schedule='linear' is not supported" in done.stderr
    assert not (tmp_path / 'run').exists()


def test_config_json_round_trips(tmp_path):
    config = config_schema.default_config()
    run_dir.write_run_files(str(tmp_path), config, {})
    assert run_dir.read_config(str(tmp_path)).to_dict() == config.to_dict()


def test_a_second_run_of_a_held_workdir_exits_1_naming_the_holder(idx_dir, tmp_path, run_cli):
    workdir = tmp_path / 'run'
    with run_dir.hold_workdir(str(workdir)):
        done = run_cli(main, *train_args(idx_dir, workdir))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f'error: {workdir} is in use by another run (host {socket.gethostname()}, pid '
        f'{os.getpid()}); wait for it to end or stop it, or pass another --workdir.'
    ]


@pytest.mark.slow
def test_a_diverged_run_exits_1(idx_dir, tmp_path, run_cli):
    done = run_cli(
        main,
        *train_args(
            idx_dir,
            tmp_path / 'run',
            '--config.train.learning_rate=1e6',
            '--config.data.max_train_examples=32',
        ),
    )
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith('error: the ') and 'became' in line and 'Lower config.train' in line
