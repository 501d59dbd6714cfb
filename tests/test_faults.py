"""Faults a user meets, each tried as a user would meet it: nothing saved is lost, and a run that
cannot go on says so in one line and exits non-zero."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pty
import shutil
import signal
import subprocess
import sys
import threading
import time

import ml_collections
import pytest

from vgg_flax import (
    checkpointing,
    config_schema,
    errors,
    evaluate,
    input_pipeline,
    main,
    metric_writers,
    run_dir,
    train,
    validation,
)

from conftest import (
    PNG_MAGIC,
    ROOT,
    TINY_CONV_ARCH,
    epoch_metrics,
    tiny_config,
    write_fashion_idx_dir,
)

FAULT_CHILD = ROOT / 'tests' / 'fault_child.py'
TINY = (
    f'--config={ROOT / "experiments" / "quick.py"}',
    '--config.model.width_ratio=16',
    f'--config.model.conv_arch={TINY_CONV_ARCH}',
    '--config.model.use_bn=True',
    '--config.model.dense_features=(64,64)',
    '--config.train.batch_size=32',
    '--config.train.momentum=0.9',
    '--config.train.num_epochs=3',
)


def run_args(idx_dir, workdir, *extra) -> list[str]:
    return [
        *TINY,
        '--config.data.source=idx',
        f'--config.data.idx_dir={idx_dir}',
        f'--workdir={workdir}',
        *extra,
    ]


def run_with_fault(fault: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m vgg_flax.main ARGS` with `fault` injected (tests/fault_child.py)."""
    return subprocess.run(
        [sys.executable, str(FAULT_CHILD), *fault.split(), '--', *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_kill_9_while_a_checkpoint_is_written_resumes_to_the_uninterrupted_metrics(
    idx_dir, tmp_path, run_cli
):
    straight = run_cli(main, *run_args(idx_dir, tmp_path / 'straight'))
    assert straight.returncode == 0, straight.stderr
    workdir = tmp_path / 'killed'
    killed = run_with_fault('kill_in_save 20', *run_args(idx_dir, workdir))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The kill left the save of step 20 unfinished, beside the complete one of step 10.
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == [
        '10',
        '20.orbax-checkpoint-tmp',
    ]
    resumed = run_cli(main, *run_args(idx_dir, workdir))
    assert resumed.returncode == 0, resumed.stderr
    assert 'Resuming' in resumed.stdout and 'step 10 ' in resumed.stdout
    assert epoch_metrics(workdir) == epoch_metrics(tmp_path / 'straight')
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['10', '20', '30']


@pytest.mark.slow
def test_ctrl_c_while_compiling_is_one_line_and_the_same_command_then_trains(
    idx_dir, tmp_path, run_cli
):
    workdir = tmp_path / 'run'
    stopped = run_with_fault('sigint_in_compile', *run_args(idx_dir, workdir))
    assert stopped.returncode == 128 + signal.SIGINT
    assert stopped.stderr.strip().splitlines() == [
        f'SIGINT stopped the run while it started (loading data or compiling), before it '
        f'trained a step; what {workdir} held is intact: run the same command again to start '
        'or resume.'
    ]
    again = run_cli(main, *run_args(idx_dir, workdir))
    assert again.returncode == 0, again.stderr
    assert json.loads((workdir / 'results.json').read_text())['epochs'] == 3


@pytest.mark.slow
def test_ctrl_c_twice_stops_at_once_and_the_same_command_resumes_exactly(
    idx_dir, tmp_path, run_cli
):
    straight = run_cli(main, *run_args(idx_dir, tmp_path / 'straight'))
    workdir = tmp_path / 'run'
    stopped = run_with_fault('sigint_twice 25', *run_args(idx_dir, workdir))
    assert stopped.returncode == -signal.SIGINT  # Ended by the second one, as by a kill.
    assert (
        'SIGINT: saving a checkpoint after the current step, then stopping (SIGINT again '
        'stops at once, without saving).'
    ) in stopped.stderr
    assert 'Traceback' not in stopped.stderr
    resumed = run_cli(main, *run_args(idx_dir, workdir))
    assert resumed.returncode == 0, resumed.stderr
    assert 'Resuming' in resumed.stdout  # From step 10 or 20, as the second Ctrl-C let saves end.
    assert (
        epoch_metrics(workdir) == epoch_metrics(tmp_path / 'straight') and straight.returncode == 0
    )


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory) -> tuple[pathlib.Path, ml_collections.ConfigDict]:
    """A finished one-epoch run of the tiny config, for tests to copy and damage."""
    base = tmp_path_factory.mktemp('finished')
    config = tiny_config(str(write_fashion_idx_dir(base / 'idx')))
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(base / 'run'))
    return base / 'run', config


def copy_of(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    workdir = tmp_path / 'run'
    shutil.copytree(run, workdir)
    (workdir / run_dir.LOCK_FILE).unlink()
    return workdir


@pytest.mark.parametrize(
    'damage, message',
    [
        (lambda text: text[: len(text) // 2], 'config.json is damaged ('),
        (lambda text: '', 'config.json is damaged (Expecting value: line 1 column 1'),
        (lambda text: '[1, 2]', 'config.json does not hold a config of this package (a JSON list'),
        (
            lambda text: text.replace('"batch_size": 32', '"batch_size": "32"'),
            'config.json does not hold a config of this package (Could not override field '
            "'batch_size'",
        ),
    ],
)
def test_a_damaged_or_hand_edited_config_json_is_one_line_naming_it(
    finished_run, tmp_path, damage, message
):
    run, config = finished_run
    workdir = copy_of(run, tmp_path)
    path = workdir / run_dir.CONFIG_FILE
    path.write_text(damage(path.read_text()))
    for attempt in (
        lambda: train.train_and_evaluate(config, str(workdir)),
        lambda: evaluate.evaluate_run(str(workdir)),
    ):
        with pytest.raises(errors.RunDirError) as error:
            attempt()
        assert message in str(error.value) and str(path) in str(error.value)
        assert 'restore it from a copy' in str(error.value) and '\n' not in str(error.value)


def test_a_damaged_results_json_is_one_line_and_deleting_it_rewrites_it(finished_run, tmp_path):
    run, config = finished_run
    workdir = copy_of(run, tmp_path)
    path = workdir / run_dir.RESULTS_FILE
    results = json.loads(path.read_text())
    path.write_text('{"epochs": 1, "test_acc')
    with pytest.raises(
        errors.RunDirError,
        match=r'results.json is damaged .*delete it, and the same command writes it again',
    ):
        train.train_and_evaluate(config, str(workdir))
    path.unlink()
    assert (
        train.train_and_evaluate(config, str(workdir))['test_accuracy'] == results['test_accuracy']
    )


def test_a_step_log_cut_mid_line_by_a_kill_loses_that_line_only(finished_run, tmp_path, capsys):
    run, _ = finished_run
    workdir = copy_of(run, tmp_path)
    path = workdir / metric_writers.STEPS_FILE
    kept = metric_writers.read_steps(str(workdir))
    path.write_text(path.read_text() + '{"step": 11, "epo')
    assert metric_writers.read_steps(str(workdir)) == kept
    assert 'steps.jsonl line 2 is damaged' in capsys.readouterr().err


@pytest.mark.parametrize('change', ['other images', 'fewer examples'])
def test_resuming_on_other_data_is_refused_in_one_line(idx_dir, tmp_path, change):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 1
    workdir = tmp_path / 'run'
    train.train_and_evaluate(config, str(workdir))
    other = tmp_path / 'other'
    if change == 'other images':  # The same size and labels, one image changed by one level.
        shutil.copytree(idx_dir, other)
        name = other / 'train-images-idx3-ubyte.gz'
        images = input_pipeline.read_idx(str(name), ndim=3).copy()
        images[7, 3, 3] ^= 1
        input_pipeline.write_idx(str(name), images)
    elif change == 'fewer examples':
        write_fashion_idx_dir(other, num_train=288)
    config.data.idx_dir, config.train.num_epochs = str(other), 2
    with pytest.raises(errors.RunDirError) as error:
        train.train_and_evaluate(config, str(workdir))
    message = str(error.value)
    assert 'was trained on other data than config.data gives now (train: ' in message
    assert 'Point config.data at the files the run used' in message and '\n' not in message
    assert 'test:' not in message  # Only the split that changed.
    assert len(metric_writers.read_history(str(workdir))) == 1  # Nothing trained on it.


@pytest.mark.slow
def test_the_same_data_at_another_path_resumes(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(tmp_path / 'run'))
    shutil.copytree(idx_dir, tmp_path / 'moved')
    config.data.idx_dir, config.train.num_epochs = str(tmp_path / 'moved'), 2
    assert train.train_and_evaluate(config, str(tmp_path / 'run'))['epochs'] == 2


@pytest.mark.parametrize(
    'field, value, message',
    [
        ('train.batch_size', 0, 'config.train.batch_size=0 must be a positive integer'),
        ('model.width_ratio', 0, 'config.model.width_ratio=0 must be a positive integer'),
        ('model.width_ratio', 3, 'config.model.width_ratio=3 does not divide every conv width'),
        ('data.image_size', 2, 'config.data.image_size=2 is too small'),
        (
            'data.image_size',
            100_000,
            'config.data.image_size=100000 needs at least 4,768.4 GiB for '
            "the first convolution's output of a batch of 32",
        ),
        ('model.dtype', 'float8', "config.model.dtype='float8' is not supported"),
        ('model.arch', 'vgg12', "config.model.arch='vgg12' is not supported"),
        ('train.learning_rate', -0.1, 'config.train.learning_rate=-0.1 must be a finite number'),
        ('train.learning_rate', float('nan'), 'config.train.learning_rate=nan must be a finite'),
        ('train.keep_checkpoints', 0, 'config.train.keep_checkpoints=0 must be a positive integer'),
        ('population_size', 0, 'config.population_size=0 must be a positive integer'),
        ('train.num_epochs', 0, 'config.train.num_epochs=0 must be a positive integer'),
        ('train.num_epochs', -3, 'config.train.num_epochs=-3 must be a positive integer'),
        ('model.dropout_rate', 1.0, 'config.model.dropout_rate=1.0 must be in [0, 1)'),
        ('model.dropout_rate', -0.5, 'config.model.dropout_rate=-0.5 must be in [0, 1)'),
    ],
)
def test_a_bad_value_is_one_line_naming_the_field_before_any_data_is_read(field, value, message):
    config = tiny_config('/nowhere')  # Reading it would fail: the check comes first.
    section, _, name = field.rpartition('.')
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError) as error:
        validation.validate_config(config)
    assert message in str(error.value) and '\n' not in str(error.value)


@pytest.mark.parametrize('make', [lambda tmp: tmp / 'nowhere', lambda tmp: tmp])
def test_evaluate_on_a_missing_or_empty_directory_is_one_line(tmp_path, run_cli, make):
    done = run_cli(evaluate, f'--workdir={make(tmp_path)}')
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f'error: {make(tmp_path)}/config.json is missing: {make(tmp_path)} holds no run of '
        'vgg_flax.main. Pass the workdir that a training run wrote.'
    ]


@pytest.mark.slow
def test_evaluate_on_a_run_in_progress_says_so_and_which_step(finished_run, tmp_path, run_cli):
    run, _ = finished_run
    workdir = copy_of(run, tmp_path)
    with run_dir.hold_workdir(str(workdir)):  # As the training run holds it.
        done = run_cli(evaluate, f'--workdir={workdir}')
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f'{workdir} is still training (host ')
    assert 'evaluating its latest checkpoint so far, step 10.' in done.stdout
    assert 'still training' not in run_cli(evaluate, f'--workdir={workdir}').stdout


@pytest.mark.parametrize('num_images, num_test', [(12, 100), (18, 12), (1000, 100)])
def test_evaluate_shows_any_number_of_images_and_writes_both_reports(
    finished_run, tmp_path, run_cli, num_images, num_test
):
    """A last row of the plot left part empty, or a test split smaller than the plot."""
    workdir = copy_of(finished_run[0], tmp_path)
    idx_dir = write_fashion_idx_dir(tmp_path / 'idx', num_test=num_test)
    done = run_cli(
        evaluate, f'--workdir={workdir}', f'--idx_dir={idx_dir}', f'--num_images={num_images}'
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((workdir / evaluate.EVALUATION_FILE).read_text())['num_examples'] == num_test
    assert (workdir / evaluate.PREDICTIONS_FILE).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize('num_images', ['0', '-3', '1001'])
def test_evaluate_refuses_a_number_of_images_out_of_range_in_one_line_first(
    tmp_path, run_cli, num_images
):
    done = run_cli(evaluate, f'--workdir={tmp_path / "nowhere"}', f'--num_images={num_images}')
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f'error: --num_images={num_images} must be an integer from 1 to 1000: the images '
        'predictions.png shows.'
    ]


@pytest.mark.parametrize(
    'args, message',
    [
        (['--step=15'], 'has no checkpoint at step 15; it has 10.'),
        (['--step=-1'], 'has no checkpoint at step -1; it has 10.'),
        (['--idx_dir=/nowhere'], 'error: /nowhere/t10k-images-idx3-ubyte(.gz) is missing.'),
    ],
)
def test_evaluate_refuses_a_step_or_data_it_cannot_use_in_one_line(
    finished_run, tmp_path, run_cli, args, message
):
    workdir = copy_of(finished_run[0], tmp_path)
    done = run_cli(evaluate, f'--workdir={workdir}', *args)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith('error: ') and message in line
    assert not (workdir / evaluate.EVALUATION_FILE).exists()


def test_evaluate_on_other_test_data_than_the_runs_says_so(finished_run, tmp_path, run_cli):
    workdir = copy_of(finished_run[0], tmp_path)
    same = run_cli(evaluate, f'--workdir={workdir}')
    assert same.returncode == 0 and 'warning' not in same.stderr
    other = write_fashion_idx_dir(tmp_path / 'other', num_test=60)
    done = run_cli(evaluate, f'--workdir={workdir}', f'--idx_dir={other}')
    assert done.returncode == 0
    assert 'this test split' in done.stderr
    assert f'is not the one {workdir} was trained and evaluated on' in done.stderr
    assert 'on 60 images' in done.stdout


def test_evaluate_of_damaged_idx_files_is_one_line_naming_the_file(finished_run, tmp_path, run_cli):
    workdir = copy_of(finished_run[0], tmp_path)
    idx_dir = write_fashion_idx_dir(tmp_path / 'idx')
    images = idx_dir / 't10k-images-idx3-ubyte.gz'
    images.write_bytes(images.read_bytes()[:-1000])
    done = run_cli(evaluate, f'--workdir={workdir}', f'--idx_dir={idx_dir}')
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f'error: {images} cannot be read (Compressed file ended before the end-of-stream marker '
        'was reached); the file is corrupt or truncated, download it again.'
    ]


def test_evaluate_of_a_run_without_checkpoints_is_one_line_and_changes_nothing(
    finished_run, tmp_path, run_cli
):
    workdir = copy_of(finished_run[0], tmp_path)
    shutil.rmtree(workdir / 'checkpoints')
    before = sorted(p.name for p in workdir.iterdir())
    done = run_cli(evaluate, f'--workdir={workdir}')
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f'error: {workdir} has no checkpoint yet; train first.'
    ]
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_evaluate_that_cannot_write_its_reports_says_so_in_one_line(
    finished_run, tmp_path, run_cli
):
    workdir = copy_of(finished_run[0], tmp_path)
    (workdir / evaluate.EVALUATION_FILE).mkdir()  # Fails to be replaced, as a read-only disk.
    done = run_cli(evaluate, f'--workdir={workdir}')
    assert done.returncode == 1 and 'checkpoint step 10: test accuracy' in done.stdout
    assert done.stderr.strip().splitlines() == [
        f'error: writing {workdir / evaluate.EVALUATION_FILE} failed (Is a directory); the '
        f'numbers above are not saved: make {workdir} writable (or free disk space) and '
        'evaluate again.'
    ]


@pytest.mark.slow
@pytest.mark.parametrize('name', ['with space/run 1', 'ünï/ç😀', 'y' * 250, 'sub/../dotdot'])
def test_workdir_names_a_user_may_choose_train_resume_and_evaluate(
    idx_dir, tmp_path, run_cli, name
):
    (tmp_path / 'sub').mkdir()
    workdir = tmp_path / name
    constant = '--config.train.lr_schedule=constant'  # Lets a resumed run train longer.
    done = run_cli(main, *run_args(idx_dir, workdir, constant, '--config.train.num_epochs=1'))
    assert done.returncode == 0, done.stderr
    resumed = run_cli(main, *run_args(idx_dir, workdir, constant, '--config.train.num_epochs=2'))
    assert resumed.returncode == 0 and 'Resuming' in resumed.stdout, resumed.stderr
    assert run_cli(evaluate, f'--workdir={workdir}').returncode == 0
    assert json.loads((workdir / 'results.json').read_text())['epochs'] == 2


def test_a_workdir_name_longer_than_the_filesystem_allows_is_one_line(idx_dir, tmp_path, run_cli):
    workdir = tmp_path / ('x' * 300)
    done = run_cli(main, *run_args(idx_dir, workdir))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f'error: cannot write to --workdir={workdir} (File name too long); pass a directory you '
        'can write to.'
    ]


@pytest.mark.slow
def test_a_log_write_that_fails_mid_run_stops_it_in_one_line_and_the_rerun_resumes(
    idx_dir, tmp_path, run_cli
):
    workdir = tmp_path / 'run'
    args = run_args(idx_dir, workdir, '--config.train.log_every_steps=2')
    stopped = run_with_fault('unwritable_log 15', *args)
    assert stopped.returncode == 1, stderr_of(stopped)
    assert stopped.stderr.strip().splitlines()[-1] == (
        f'error: writing {workdir / "steps.jsonl"} failed (Is a directory); the run stopped, its '
        'last checkpoint intact: fix the cause (a read-only or full disk, a file-size limit) '
        'and run the same command to resume.'
    )
    assert 'Traceback' not in stopped.stderr
    (workdir / 'steps.jsonl').rmdir()
    (workdir / 'steps.jsonl.moved').rename(workdir / 'steps.jsonl')
    resumed = run_cli(main, *args)
    assert resumed.returncode == 0 and 'from the checkpoint at step 10 ' in resumed.stdout


@pytest.mark.slow
def test_a_thread_left_waiting_does_not_hold_the_exit(idx_dir, tmp_path):
    """A failed save can leave orbax waiting minutes for a signal: the CLI exits all the same."""
    start = time.monotonic()
    done = run_with_fault('blocked_thread', *run_args(idx_dir, tmp_path / 'run'), timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'test accuracy' in done.stdout and time.monotonic() - start < 100


def stderr_of(done: subprocess.CompletedProcess) -> str:
    return done.stderr[-3000:]


def test_resuming_with_fewer_epochs_than_trained_is_refused_in_one_line(finished_run, tmp_path):
    run, config = finished_run
    workdir = copy_of(run, tmp_path)
    config = ml_collections.ConfigDict(config.to_dict())
    config.train.lr_schedule, config.train.num_epochs = 'constant', 1
    run_dir.write_json_atomic(str(workdir / run_dir.CONFIG_FILE), config_schema.to_plain(config))
    (workdir / run_dir.RESULTS_FILE).unlink()  # As if stopped after its last save.
    config.train.num_epochs = 2  # The run has trained 1; asking for 2 trains on.
    assert train.train_and_evaluate(config, str(workdir))['epochs'] == 2
    config.train.num_epochs = 1
    with pytest.raises(errors.RunDirError) as error:
        train.train_and_evaluate(config, str(workdir))
    assert str(error.value).startswith(
        f'{workdir} has trained 2 epochs already, more than '
        'config.train.num_epochs=1; ask for at least that many'
    )


@pytest.mark.slow
def test_a_save_that_fails_in_the_background_exits_at_once_in_one_line(idx_dir, tmp_path):
    """A file where `checkpoints/` was fails the save as a read-only directory does, leaving a
    thread of orbax's waiting minutes: the run says so in one line and exits all the same. It
    is the run's last save: the run is not finished without it."""
    workdir = tmp_path / 'run'
    args = run_args(idx_dir, workdir, '--config.train.num_epochs=1')
    start = time.monotonic()
    stopped = run_with_fault('checkpoints_file 10', *args, timeout=250)
    assert stopped.returncode == 1 and time.monotonic() - start < 100, stderr_of(stopped)
    assert stopped.stderr.strip().splitlines() == [
        f'error: saving the checkpoint of step 10 failed ({workdir / "checkpoints"} was deleted, '
        'moved or replaced while the run trained); the run stopped. No checkpoint is saved yet: '
        'put it back (a run without it starts from scratch) and run the same command to resume.'
    ]
    # Nothing is logged beyond what the checkpoints hold (none): a resume logs it all again.
    assert metric_writers.read_history(str(workdir)) == []
    assert not (workdir / run_dir.RESULTS_FILE).exists()
    assert (workdir / 'checkpoints').read_text() == ''  # Left as the run found it.


@pytest.mark.slow
def test_sighup_from_a_closed_terminal_saves_and_stops(idx_dir, tmp_path):
    """The terminal hangs up (its writes fail from then on) and sends SIGHUP, maybe twice."""
    workdir = tmp_path / 'run'
    terminal, child_side = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, '-m', 'vgg_flax.main', *run_args(idx_dir, workdir)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=child_side,
        stderr=child_side,
    )
    os.close(child_side)
    shown = []  # What the terminal shows (a progress bar): read, lest the child block on it.
    reader = threading.Thread(target=lambda: read_until_closed(terminal, shown), daemon=True)
    reader.start()
    steps_log = workdir / metric_writers.STEPS_FILE
    deadline = time.time() + 300
    while not (steps_log.is_file() and steps_log.read_text()) and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGHUP)
    process.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    os.close(terminal)
    assert process.wait(timeout=300) == 128 + signal.SIGHUP, b''.join(shown)[-2000:]
    assert b'Traceback' not in b''.join(shown)
    assert checkpointing.Checkpointer(str(workdir), keep=3).all_steps()


def read_until_closed(fd: int, into: list[bytes]) -> None:
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 4096):
            into.append(chunk)


@pytest.mark.slow
def test_a_run_that_lost_its_config_json_is_checked_against_its_checkpoints(
    finished_run, tmp_path, capsys
):
    run, config = finished_run
    workdir = copy_of(run, tmp_path)
    for name in (run_dir.CONFIG_FILE, run_dir.DATA_FILE, run_dir.RESULTS_FILE):
        (workdir / name).unlink()
    other = ml_collections.ConfigDict(config.to_dict())
    other.train.learning_rate = 0.1
    with pytest.raises(errors.RunDirError) as error:
        train.train_and_evaluate(other, str(workdir))
    assert 'train.learning_rate: 0.05 in the run, 0.1 now' in str(error.value)
    assert capsys.readouterr().err.splitlines() == [
        f'warning: {workdir / name} was missing; wrote it back from the checkpoint of step 10.'
        for name in (run_dir.CONFIG_FILE, run_dir.DATA_FILE)
    ]
    for name in (run_dir.CONFIG_FILE, run_dir.DATA_FILE):
        assert (workdir / name).read_text() == (run / name).read_text()
    # Results that cannot be written (a directory in their place) stop the run in one line.
    (workdir / run_dir.RESULTS_FILE).mkdir()
    with pytest.raises(errors.RunDirError) as error:
        train.train_and_evaluate(config, str(workdir))
    assert str(error.value).startswith(
        f'writing {workdir / run_dir.RESULTS_FILE} failed (Is a directory); the run stopped, '
    )
    (workdir / run_dir.RESULTS_FILE).rmdir()
    assert train.train_and_evaluate(config, str(workdir))['epochs'] == 1
    # Checkpoints without a record of the run's files cannot say what they trained.
    (workdir / run_dir.CONFIG_FILE).unlink()
    shutil.rmtree(workdir / checkpointing.CHECKPOINT_DIR / '10' / checkpointing.RUN_ITEM)
    with pytest.raises(errors.RunDirError) as error:
        train.train_and_evaluate(other, str(workdir))
    assert str(error.value) == (
        f'{workdir / run_dir.CONFIG_FILE} is missing and the checkpoints in '
        f'{workdir / checkpointing.CHECKPOINT_DIR} do not say which config they were trained '
        'with, so the run cannot be checked against this one; restore config.json from a copy, '
        'or pass another --workdir (or move the checkpoints elsewhere to train from scratch).'
    )


def test_a_checkpoint_whose_history_is_not_a_list_of_records_is_damaged(finished_run, tmp_path):
    run, config = finished_run
    workdir = copy_of(run, tmp_path)
    (workdir / run_dir.RESULTS_FILE).unlink()
    (workdir / checkpointing.CHECKPOINT_DIR / '10' / 'history' / 'metadata').write_text('{}')
    with pytest.raises(errors.RunDirError) as error:
        train.train_and_evaluate(config, str(workdir))
    assert str(error.value).startswith(
        f'no checkpoint in {workdir / checkpointing.CHECKPOINT_DIR} is readable (step 10: its '
        'history is not a list of records of steps). Move '
    )
