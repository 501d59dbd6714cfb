"""Checkpoints that survive damage and a full disk, and that a notebook can read without the
package's config."""

from __future__ import annotations

import os
import pathlib
import re
import resource
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from vgg_flax import (
    checkpointing,
    errors,
    main,
    metric_writers,
    models,
    run_dir,
    train,
    train_state,
)

from conftest import ROOT, tiny_config

# Orbax's reads of arrays a test damaged leave coroutines that the garbage collector reports as
# unraisable; the tests check what the run itself says.
DAMAGED_READS = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict]:
    """A 3-epoch run of the tiny config (10 steps per epoch), checkpointed at steps 10, 20, 30."""
    from conftest import write_fashion_idx_dir  # Imported when used: slow to import.

    root = tmp_path_factory.mktemp('finished')
    config = tiny_config(str(write_fashion_idx_dir(root / 'idx')))
    config.train.num_epochs = 3
    results = train.train_and_evaluate(config, str(root / 'run'))
    return root / 'run', results


def tiny_args(idx_dir: pathlib.Path, workdir: pathlib.Path) -> list[str]:
    """`tiny_config` as command-line flags, for 3 epochs."""
    return [
        f'--config={ROOT / "experiments" / "quick.py"}',
        '--config.model.width_ratio=16',
        '--config.model.use_bn=True',
        '--config.model.dense_features=(64,64)',
        '--config.train.batch_size=32',
        '--config.train.num_epochs=3',
        '--config.data.source=idx',
        f'--config.data.idx_dir={idx_dir}',
        f'--workdir={workdir}',
    ]


def copy_without_results(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """The run as a kill right after its last checkpoint leaves it: not finished."""
    workdir = tmp_path / 'run'
    shutil.copytree(run, workdir)
    (workdir / run_dir.RESULTS_FILE).unlink()
    return workdir


def truncate_largest_array_file(step_dir: pathlib.Path) -> None:
    largest = max(
        (p for p in (step_dir / 'arrays').rglob('*') if p.is_file()), key=lambda p: p.stat().st_size
    )
    os.truncate(largest, 100)


def delete_manifests(step_dir: pathlib.Path) -> None:
    for manifest in (step_dir / 'arrays').rglob('manifest.ocdbt'):
        manifest.unlink()


def delete_metadata(step_dir: pathlib.Path) -> None:
    (step_dir / 'arrays' / '_METADATA').unlink()
    (step_dir / 'history' / 'metadata').unlink()


@DAMAGED_READS
@pytest.mark.slow
@pytest.mark.parametrize('damage', [truncate_largest_array_file, delete_manifests, delete_metadata])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_readable(
    damage, finished_run, tmp_path, capfd
):
    run, results = finished_run
    workdir = copy_without_results(run, tmp_path)
    damage(workdir / checkpointing.CHECKPOINT_DIR / '30')
    config = run_dir.read_config(str(workdir))

    # Evaluating reads the newest readable checkpoint and leaves the damaged one in place.
    state, step = checkpointing.restore_state(config, str(workdir))
    assert step == int(state.step) == 20
    assert checkpointing.Checkpointer(str(workdir), keep=3).all_steps() == [10, 20, 30]
    err = capfd.readouterr().err
    assert f'the checkpoint of step 30 in {workdir / "checkpoints"} is damaged (' in err
    assert 'using step 20.' in err and 'moved' not in err and 'Traceback' not in err

    # Training sets it aside, resumes from step 20 and ends as the undamaged run did.
    resumed = train.train_and_evaluate(config, str(workdir))
    out, err = capfd.readouterr()
    [warning] = [line for line in err.splitlines() if 'damaged' in line]
    assert warning.endswith(
        f'moved it to {workdir / checkpointing.DAMAGED_DIR} and using step 20.'
    ), warning
    assert 'Traceback' not in err and 'Event loop' not in err, err
    assert 'Resuming' in out and 'at step 20' in out
    assert os.listdir(workdir / checkpointing.DAMAGED_DIR) == ['30']
    assert checkpointing.Checkpointer(str(workdir), keep=3).all_steps() == [10, 20, 30]
    assert resumed['test_accuracy'] == results['test_accuracy']
    assert resumed['test_loss'] == results['test_loss']


@DAMAGED_READS
def test_no_readable_checkpoint_is_one_line_and_moves_nothing(finished_run, tmp_path, capfd):
    workdir = copy_without_results(finished_run[0], tmp_path)
    for step in ('10', '20', '30'):
        truncate_largest_array_file(workdir / checkpointing.CHECKPOINT_DIR / step)
    config = run_dir.read_config(str(workdir))
    with pytest.raises(errors.RunDirError) as error:
        train.train_and_evaluate(config, str(workdir))
    message = str(error.value)
    assert message.startswith(f'no checkpoint in {workdir / "checkpoints"} is readable (step 30: ')
    assert '; step 20: ' in message and '; step 10: ' in message
    assert message.endswith('to train from scratch, or pass another --workdir.')
    assert '\n' not in message and 'Traceback' not in capfd.readouterr().err
    assert not (workdir / checkpointing.DAMAGED_DIR).exists()


def delete_step(step_dir: pathlib.Path) -> None:
    shutil.rmtree(step_dir)


def delete_step_arrays(step_dir: pathlib.Path) -> None:
    """As orbax leaves a step it is deleting, halfway."""
    shutil.rmtree(step_dir / 'arrays')


@pytest.mark.parametrize('deletion', [delete_step, delete_step_arrays])
def test_evaluate_reads_the_new_checkpoint_of_a_run_that_replaced_it_while_it_was_read(
    deletion, finished_run, tmp_path, monkeypatch, capfd
):
    """A run that keeps one checkpoint saves step 30 and deletes step 20 between evaluate's
    listing of the steps and its read of step 20: evaluate reads step 30 and moves nothing."""
    workdir = copy_without_results(finished_run[0], tmp_path)
    checkpoints = workdir / checkpointing.CHECKPOINT_DIR
    shutil.rmtree(checkpoints / '10')
    (checkpoints / '30').rename(tmp_path / 'saving')
    restore = checkpointing.Checkpointer.restore

    def run_saves_while_read(self, step, like):
        if (tmp_path / 'saving').exists():
            (tmp_path / 'saving').rename(checkpoints / '30')
            deletion(checkpoints / '20')
        return restore(self, step, like)

    monkeypatch.setattr(checkpointing.Checkpointer, 'restore', run_saves_while_read)
    config = run_dir.read_config(str(workdir))
    config.train.keep_checkpoints = 1
    state, step = checkpointing.restore_state(config, str(workdir))
    assert step == int(state.step) == 30
    assert 'damaged' not in capfd.readouterr().err
    assert not (workdir / checkpointing.DAMAGED_DIR).exists()
    assert (checkpoints / '30').is_dir()


def test_a_step_asked_for_that_the_run_deletes_while_it_is_read_is_one_line(
    finished_run, tmp_path, monkeypatch
):
    workdir = copy_without_results(finished_run[0], tmp_path)
    restore = checkpointing.Checkpointer.restore

    def run_deletes_while_read(self, step, like):
        shutil.rmtree(workdir / checkpointing.CHECKPOINT_DIR / str(step), ignore_errors=True)
        return restore(self, step, like)

    monkeypatch.setattr(checkpointing.Checkpointer, 'restore', run_deletes_while_read)
    with pytest.raises(errors.RunDirError, match=r'no checkpoint at step 20; it has 10, 30\.$'):
        checkpointing.restore_state(run_dir.read_config(str(workdir)), str(workdir), step=20)


def test_checkpoints_that_change_during_every_read_are_given_up_in_one_line(
    finished_run, tmp_path, monkeypatch
):
    """A run that saves a checkpoint (and deletes the last) faster than one is read."""
    workdir = copy_without_results(finished_run[0], tmp_path)
    listings = iter([[10], [20], [20], [30], [30], [40], [40], [50], [50], [60]])
    monkeypatch.setattr(checkpointing, 'saved_steps', lambda _: next(listings))

    def deleted(self, step, like):
        raise FileNotFoundError(f'Checkpoint at {step} not found.')

    monkeypatch.setattr(checkpointing.Checkpointer, 'restore', deleted)
    with pytest.raises(errors.RunDirError) as error:
        checkpointing.restore_state(run_dir.read_config(str(workdir)), str(workdir))
    assert str(error.value) == (
        f'the checkpoints in {workdir / "checkpoints"} changed during each of 5 reads: the run '
        'there, still training, saves a new one and deletes the oldest (it keeps 3) before one '
        'is read. Evaluate once the run has ended, or resume it with a larger '
        'config.train.keep_checkpoints.'
    )


@DAMAGED_READS
def test_evaluating_a_damaged_step_asked_for_is_one_line_and_moves_nothing(
    finished_run, tmp_path, capfd
):
    workdir = copy_without_results(finished_run[0], tmp_path)
    truncate_largest_array_file(workdir / checkpointing.CHECKPOINT_DIR / '20')
    config = run_dir.read_config(str(workdir))
    with pytest.raises(errors.RunDirError) as error:
        checkpointing.restore_state(config, str(workdir), step=20)
    message = str(error.value)
    assert message.startswith(
        f'the checkpoint of step 20 in {workdir / "checkpoints"} is damaged ('
    )
    assert message.endswith(
        'evaluating moves nothing there: pass another --step (the run has 10, 20, 30), or none '
        'for the newest readable one.'
    )
    assert '\n' not in message and 'Traceback' not in capfd.readouterr().err
    assert checkpointing.saved_steps(str(workdir)) == [10, 20, 30]
    assert not (workdir / checkpointing.DAMAGED_DIR).exists()


@DAMAGED_READS
def test_evaluating_a_run_with_no_readable_checkpoint_is_one_line_and_moves_nothing(
    finished_run, tmp_path, capfd
):
    workdir = copy_without_results(finished_run[0], tmp_path)
    for step in ('10', '20', '30'):
        truncate_largest_array_file(workdir / checkpointing.CHECKPOINT_DIR / step)
    with pytest.raises(errors.RunDirError) as error:
        checkpointing.restore_state(run_dir.read_config(str(workdir)), str(workdir))
    message = str(error.value)
    assert message.startswith(f'no checkpoint in {workdir / "checkpoints"} is readable (step 30: ')
    assert message.endswith(
        'evaluating moves nothing there: evaluate again once the run has saved a readable '
        'checkpoint, or pass another --workdir.'
    )
    assert 'Move' not in message and '\n' not in message
    assert 'Traceback' not in capfd.readouterr().err
    assert checkpointing.saved_steps(str(workdir)) == [10, 20, 30]
    assert not (workdir / checkpointing.DAMAGED_DIR).exists()


@DAMAGED_READS
@pytest.mark.slow
def test_a_failed_save_stops_the_run_and_its_log_does_not_run_ahead(idx_dir, tmp_path, run_cli):
    """A file-size limit makes every checkpoint write fail as a full disk does, from the first."""
    workdir = tmp_path / 'run'
    args = tiny_args(idx_dir, workdir)
    limit = 64 * 1024  # Above every log file, below the checkpoint's largest array file.
    done = subprocess.run(
        [sys.executable, '-m', 'vgg_flax.main', *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert done.returncode == 1, done.stderr
    # Tensorstore's threads may print tracebacks of the writes cut short; the run says it once.
    [error] = [line for line in done.stderr.splitlines() if line.startswith('error:')]
    assert error.startswith('error: saving the checkpoint of step 10 failed (')
    assert 'File too large' in error
    assert error.endswith(
        'No checkpoint is saved yet: free some disk space (or fix the cause) '
        'and run the same command to resume.'
    )
    # The failure is known by the next save at the latest (each save waits for the last).
    assert 'epoch 1/3' in done.stdout and 'epoch 3/3' not in done.stdout
    # Nothing is logged beyond what the checkpoints hold (none): a resume logs it all again.
    assert metric_writers.read_history(str(workdir)) == []
    assert metric_writers.read_steps(str(workdir)) == []
    assert checkpointing.Checkpointer(str(workdir), keep=3).all_steps() == []

    done = run_cli(main, *args)
    assert done.returncode == 0, done.stderr
    assert [r['epoch'] for r in metric_writers.read_history(str(workdir))] == [1, 2, 3]


@DAMAGED_READS
@pytest.mark.slow
def test_too_little_disk_for_a_checkpoint_stops_the_run_before_writing(
    idx_dir, tmp_path, monkeypatch, run_cli
):
    real_disk_usage, calls = shutil.disk_usage, []

    def disk_full_after_the_first_save(path):
        calls.append(path)
        usage = real_disk_usage(path)
        return usage if len(calls) == 1 else usage._replace(free=0)

    monkeypatch.setattr(shutil, 'disk_usage', disk_full_after_the_first_save)
    workdir = tmp_path / 'run'
    done = run_cli(main, *tiny_args(idx_dir, workdir))
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert re.fullmatch(
        r'error: saving the checkpoint of step 20 failed \(it needs about \d+ MiB and 0 MiB are '
        f'free on the disk of {re.escape(str(workdir / "checkpoints"))}\\); the run stopped. The '
        r'last saved checkpoint is step 10: free some disk space \(or fix the cause\) and run '
        r'the same command to resume.',
        line,
    ), line
    assert [r['epoch'] for r in metric_writers.read_history(str(workdir))] == [1]
    assert max(r['step'] for r in metric_writers.read_steps(str(workdir))) == 10
    assert checkpointing.Checkpointer(str(workdir), keep=3).all_steps() == [10]


@pytest.mark.slow
def test_load_variables_reads_a_run_without_its_config(finished_run):
    run, _ = finished_run
    config = run_dir.read_config(str(run))
    like = train_state.create_train_state(config, jax.random.key(0))
    state, _ = checkpointing.Checkpointer(str(run), keep=3).restore(20, like)
    variables = checkpointing.load_variables(str(run), step=20)
    assert set(variables) == {'params', 'batch_stats'}
    for saved, restored in (
        (variables['params'], state.params),
        (variables['batch_stats'], state.batch_stats),
    ):
        assert jax.tree.structure(saved) == jax.tree.structure(restored)
        jax.tree.map(np.testing.assert_array_equal, saved, restored)
    latest = checkpointing.load_variables(str(run))
    model = models.create_model(config.model)
    images = np.zeros((2, 32, 32, 1), np.float32)
    logits = model.apply(latest, images, train=False)
    assert logits.shape == (2, 10) and np.isfinite(logits).all()
    with pytest.raises(errors.RunDirError, match='no checkpoint at step 7; it has 10, 20, 30'):
        checkpointing.load_variables(str(run), step=7)
