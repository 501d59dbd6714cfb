"""Data parallelism: 4 CPU devices give the metrics of 1, checkpoints move between them, and two
processes train as one."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from vgg_flax import distributed, metric_writers, train
from vgg_flax.checkpointing import Checkpointer

from conftest import ROOT, tiny_config

SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import jax
from conftest import tiny_config
from vgg_flax import distributed, environment, errors, input_pipeline, train
distributed.initialize_if_launched()
environment.enable_compilation_cache()
shares = []
load_split = input_pipeline.load_split
def recording_load_split(*args, **kwargs):
    split = load_split(*args, **kwargs)
    shares.append(len(split))
    return split
input_pipeline.load_split = recording_load_split
config = tiny_config({idx_dir!r})
config.data.max_train_examples, config.data.max_test_examples = {max_examples}
config.train.num_epochs = {epochs}
config.train.batch_size = {batch_size}
try:
    train.train_and_evaluate(config, {workdir!r})
except (ValueError, errors.TrainingInterrupted) as e:
    print(type(e).__name__ + ':', e)
print(json.dumps({{'devices': jax.device_count(), 'shares': shares}}))
"""


def script(
    idx_dir, workdir, epochs: int, batch_size: int = 32, max_examples: tuple[int, int] = (0, 0)
) -> list[str]:
    return [
        sys.executable,
        '-c',
        SCRIPT.format(
            tests=str(ROOT / 'tests'),
            idx_dir=str(idx_dir),
            epochs=epochs,
            batch_size=batch_size,
            max_examples=max_examples,
            workdir=str(workdir),
        ),
    ]


def run_on_devices(
    devices: int, idx_dir, workdir, epochs: int, batch_size: int = 32
) -> tuple[str, list[int]]:
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    done = subprocess.run(
        script(idx_dir, workdir, epochs, batch_size),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record['devices'] == devices
    return done.stdout, record['shares']


def assert_same_metrics(a, b):
    assert [r['step'] for r in a] == [r['step'] for r in b]
    for x, y in zip(a, b, strict=True):
        for key in ('train_loss', 'test_loss'):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-5), key
        for key in ('train_accuracy', 'test_accuracy'):
            assert x[key] == pytest.approx(y[key], abs=0.02), key


@pytest.mark.slow
def test_four_devices_match_one_and_checkpoints_move_between_them(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 2
    train.train_and_evaluate(config, str(tmp_path / 'one'))
    one = metric_writers.read_history(str(tmp_path / 'one'))

    # Epoch 1 on 4 devices, saved; epoch 2 resumed on 2.
    _, shares = run_on_devices(4, idx_dir, tmp_path / 'moved', epochs=1)
    assert shares == [320, 100]  # One process reads the whole of each split.
    assert_same_metrics(metric_writers.read_history(str(tmp_path / 'moved')), one[:1])
    out, _ = run_on_devices(2, idx_dir, tmp_path / 'moved', epochs=2)
    assert 'Resuming' in out and 'The run last ran on 4 devices, now on 2: ' in out
    assert_same_metrics(metric_writers.read_history(str(tmp_path / 'moved')), one)


@pytest.mark.slow
def test_batch_that_does_not_split_over_the_devices_is_refused(idx_dir, tmp_path):
    out, shares = run_on_devices(3, idx_dir, tmp_path / 'run', epochs=1, batch_size=32)
    assert shares == []  # Refused before any data is read.
    assert (
        'ValueError: config.train.batch_size=32 does not split evenly over 3 devices; use '
        'a multiple of 3.'
    ) in out


def start_two_processes(idx_dir, workdir, **script_args) -> list[subprocess.Popen]:
    """Two processes of two CPU devices on this machine, joined by jax.distributed."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return [
        subprocess.Popen(
            script(idx_dir, workdir, **script_args),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(
                os.environ,
                JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
                JAX_NUM_PROCESSES='2',
                JAX_PROCESS_ID=str(rank),
                XLA_FLAGS='--xla_force_host_platform_device_count=2',
            ),
        )
        for rank in (0, 1)
    ]


def finish(processes: list[subprocess.Popen]) -> list[str]:
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    return [stdout for stdout, _ in outputs]


ODD_SIZES = (317, 99)  # Train and test examples: each splits into halves one example apart.


@pytest.mark.slow
def test_two_processes_match_one_device_and_a_signal_to_one_stops_both_at_one_step(
    idx_dir, tmp_path
):
    """Multi-host in miniature: two processes of two CPU devices on this machine, joined by
    jax.distributed. Each reads only its half of each split (odd sizes, so the halves differ by
    one example). A scheduler's SIGTERM reaches the hosts at different steps: they agree on one
    to save, and the resumed run equals the uninterrupted one."""
    config = tiny_config(str(idx_dir))
    config.data.max_train_examples, config.data.max_test_examples = ODD_SIZES
    train.train_and_evaluate(config, str(tmp_path / 'one'))
    outputs = finish(
        start_two_processes(idx_dir, tmp_path / 'two_hosts', epochs=2, max_examples=ODD_SIZES)
    )
    expected_shares = ([159, 50], [158, 49])  # Train and test rows each process read.
    for stdout, shares in zip(outputs, expected_shares, strict=True):
        assert json.loads(stdout.strip().splitlines()[-1]) == {'devices': 4, 'shares': shares}
    assert 'epoch 2/2' in outputs[0] and 'epoch 2/2' not in outputs[1]  # Chief logs.
    straight = metric_writers.read_history(str(tmp_path / 'two_hosts'))
    assert_same_metrics(straight, metric_writers.read_history(str(tmp_path / 'one')))

    workdir = tmp_path / 'stopped'
    processes = start_two_processes(idx_dir, workdir, epochs=2, max_examples=ODD_SIZES)
    while not (workdir / metric_writers.TENSORBOARD_DIR).is_dir():  # Process 0 compiled.
        assert all(p.poll() is None for p in processes)
        time.sleep(0.01)
    processes[1].send_signal(signal.SIGTERM)
    stops = [
        re.search(r'TrainingInterrupted: SIGTERM stopped the run at step (\d+)', out)
        for out in finish(processes)
    ]
    assert all(stops), stops
    step = int(stops[0].group(1))
    assert step == int(stops[1].group(1)) and 0 < step < straight[-1]['step'], step
    assert Checkpointer(str(workdir), keep=3).latest_step() == step
    finish(start_two_processes(idx_dir, workdir, epochs=2, max_examples=ODD_SIZES))
    resumed = metric_writers.read_history(str(workdir))
    keys = ('epoch', 'step', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy')
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]


@pytest.mark.slow
@pytest.mark.parametrize('victim', [1, 0])
def test_a_process_killed_stops_the_other_in_bounded_time_and_the_job_resumes(
    idx_dir, tmp_path, monkeypatch, victim
):
    """kill -9 of one process mid-run: the other does not wait in its next collective for JAX's
    100 s heartbeat. Killed process 1: process 0 hears nothing for $VGG_FLAX_PEER_TIMEOUT s and
    stops in one line; killed process 0 (the coordination service): JAX ends process 1 at
    once. Then the same command on both resumes and finishes."""
    monkeypatch.setenv(distributed.PEER_TIMEOUT_ENV, '3')
    workdir = tmp_path / 'killed'
    processes = start_two_processes(idx_dir, workdir, epochs=6, max_examples=ODD_SIZES)
    while not (workdir / metric_writers.STEPS_FILE).exists():  # Both train.
        assert all(p.poll() is None for p in processes)
        time.sleep(0.01)
    processes[victim].kill()
    killed_at = time.monotonic()
    survivor = processes[1 - victim]
    _, stderr = survivor.communicate(timeout=120)
    assert time.monotonic() - killed_at < 30, stderr
    if victim == 1:
        assert survivor.returncode == 1
        assert stderr.strip().splitlines()[-1] == (
            'error: process 1 has given no sign of life for 3 s (killed, crashed or cut off); '
            'process 0 of 2 stops too. Start the job again with the same command: it resumes '
            'from the last checkpoint.'
        )
    else:
        assert survivor.returncode != 0 and 'leader task was preempted/died' in stderr
    processes[victim].wait()
    finish(start_two_processes(idx_dir, workdir, epochs=6, max_examples=ODD_SIZES))
    assert [r['epoch'] for r in metric_writers.read_history(str(workdir))] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize('value', ['0', '-1', 'nan', 'soon'])
def test_a_bad_peer_timeout_is_one_line(monkeypatch, value):
    monkeypatch.setenv(distributed.PEER_TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=f"VGG_FLAX_PEER_TIMEOUT='{value}' must be a positive"):
        distributed.peer_timeout()


def test_a_slurm_allocation_entered_without_srun_is_one_line(monkeypatch):
    """A batch script or salloc shell has SLURM_NTASKS but only srun starts its tasks."""
    for name in ('JAX_COORDINATOR_ADDRESS', 'OMPI_COMM_WORLD_SIZE', 'SLURM_STEP_NUM_TASKS'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('SLURM_NTASKS', '2')
    with pytest.raises(SystemExit) as error:
        distributed.initialize_if_launched()
    assert error.value.code == (
        'error: SLURM_NTASKS=2 says this job has 2 processes, but this one was not started by '
        'srun, which starts them all; run it as `srun python -m vgg_flax.main ...`, or as '
        '`srun --ntasks=1 ...` to train in one process.'
    )
