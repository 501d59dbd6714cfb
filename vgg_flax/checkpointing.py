"""The run's checkpoints (orbax): saved in the background, restored falling back from a damaged
one.

A checkpoint holds the train state, the running sums of the epoch in progress and the metrics
history, so a resumed run continues exactly where the saved one stopped, mid-epoch included; and
the run's config and data fingerprints, so a run whose config.json or data.json is lost is still
checked against what it was trained with.
A trained model is read back by `restore_state`, whatever reads it (`evaluate`, `load_variables`
in a notebook); a run resumes through `Checkpointer.restore_latest`. Both restore through
`Checkpointer.restore`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import pathlib
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vgg_flax import errors, population, run_dir, train_state

CHECKPOINT_DIR = 'checkpoints'
DAMAGED_DIR = 'checkpoints.damaged'  # Where a run moves the damaged checkpoints it skipped.
READ_ATTEMPTS = 5  # Reads of a run whose checkpoints keep changing meanwhile, before giving up.
RUN_ITEM = 'run'  # The item of a checkpoint that keeps the run's files: `RUN_FILES` by name.
RUN_FILES = (run_dir.CONFIG_FILE, run_dir.DATA_FILE)


def _reason(error: BaseException, handled: BaseException | None = None) -> str:
    """The gist of an orbax or tensorstore error: the first line of its root cause, shortened.
    The chain ends before `handled`, what was being handled when the storage raised (another
    error that stops the run, as it waits for the save in flight)."""
    while (cause := error.__cause__ or error.__context__) not in (None, handled):
        error = cause
    lines = str(error).split(' [tensorstore_spec=')[0].strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= 200 else f'{line[:80]} ... {line[-110:]}'


@functools.cache
def _quiet_orbax() -> None:
    """Keeps orbax's logged errors off the console (for the rest of the process): each one
    reaches the run as an exception, which it says in one line. So are the tracebacks that
    tensorstore reports (as unraisable) for each write of a failed save that ends after orbax
    closed the save's event loop."""
    logging.getLogger('absl').addFilter(
        lambda record: record.levelno < logging.ERROR or 'orbax' not in record.pathname
    )
    unraisablehook = sys.unraisablehook

    def quiet_unraisablehook(unraisable: Any) -> None:
        if str(unraisable.exc_value) != 'Event loop is closed':
            unraisablehook(unraisable)

    sys.unraisablehook = quiet_unraisablehook


class Checkpointer:
    """Saves and restores the train state plus the JSON metrics history.

    On disk, `checkpoints/STEP/arrays` is an orbax PyTree {'state': {'step', 'params',
    'opt_state', 'batch_stats', and 'ema' where the run keeps a moving average of the weights},
    'sums': the epoch's running sums}, `checkpoints/STEP/history`
    the metrics history as JSON, and `checkpoints/STEP/run` the `run_files` (JSON) a training run
    gives. Orbax writes each checkpoint to a temporary directory and renames
    it when complete, so a killed run leaves the previous checkpoint intact. Saves run in the
    background: `check` raises `SaveError` once one has failed, and is cheap enough for every step.
    """

    def __init__(self, workdir: str, keep: int, run_files: dict[str, Any] | None = None):
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        self._damaged_directory = os.path.abspath(os.path.join(workdir, DAMAGED_DIR))
        self._run_files = run_files
        if os.path.lexists(self.directory) and not os.path.isdir(self.directory):
            raise errors.RunDirError(
                f'{self.directory} is not a directory (a file or a broken link stands where the '
                'run keeps its checkpoints); move it elsewhere and run the same command.'
            )
        _quiet_orbax()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )
        self._saving: int | None = None  # The step whose save is in flight.
        self._identity = _identity(self.directory)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, history: list[dict[str, Any]]) -> None:
        """Starts saving `step` in the background, unless it is saved already.

        That happens at a stop right after an epoch's checkpoint, and at the step a run resumed
        from after a stop had interrupted that epoch's evaluation: the kept checkpoint has the
        same state, and its history lacks only that evaluation, which resuming runs again.
        """
        if step in self._manager.all_steps():
            return
        self.wait()
        arrays = _layout(state)
        needed = sum(leaf.nbytes for leaf in jax.tree.leaves(arrays)) + 2**20
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError as e:
            raise self._error(step, e) from None
        if free < needed:  # Said here in one line; a write cut short says it in hundreds.
            raise errors.SaveError(
                step,
                self.latest_step(),
                f'it needs about {needed / 2**20:,.0f} MiB '
                f'and {free / 2**20:,.0f} MiB are free on the disk of {self.directory}',
            )
        items = {'arrays': ocp.args.StandardSave(arrays), 'history': ocp.args.JsonSave(history)}
        if self._run_files is not None:
            items[RUN_ITEM] = ocp.args.JsonSave(self._run_files)
        try:
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:  # Whatever the storage raised.
            raise self._error(step, e) from e
        self._saving = step

    def _error(
        self, step: int, error: BaseException, handled: BaseException | None = None
    ) -> errors.SaveError:
        """The SaveError of `step`'s save, which raised `error`, or which failed because the
        directory was deleted or moved while the run trained (orbax may create another)."""
        if _identity(self.directory) == self._identity:
            return errors.SaveError(step, self.latest_step(), _reason(error, handled))
        return errors.SaveError(
            step,
            self.latest_step(),
            f'{self.directory} was deleted, moved or replaced while the run trained',
            'put it back (a run without it starts from scratch)',
        )

    def check(self) -> None:
        """Raises SaveError if the save in flight has failed."""
        if self._saving is not None and not self._manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Blocks until the save in flight is on disk; raises SaveError if it failed."""
        step, self._saving = self._saving, None
        handled = sys.exc_info()[1]
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # Whatever the storage raised.
            if step is None:
                raise
            raise self._error(step, e, handled) from e

    def restore(self, step: int, like: Any) -> tuple[Any, list[dict[str, Any]]]:
        """The state saved at `step`, on the shapes, dtypes and shardings of `like`'s arrays."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _layout(like)
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                arrays=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()
            ),
        )
        arrays, history = restored['arrays'], restored['history']
        if not (
            isinstance(history, list)
            and all(isinstance(r, dict) and isinstance(r.get('step'), int) for r in history)
        ):
            raise ValueError('its history is not a list of records of steps')
        return like.replace(**arrays['state'], sums=arrays['sums']), history

    def restore_latest(self, like: Any) -> tuple[Any, list[dict[str, Any]]]:
        """`restore` of the newest readable checkpoint; `like` and no history when there is none.

        A damaged checkpoint (a truncated or missing file, or a file in place of its directory,
        which orbax would not see and would replace) is skipped with a warning that names it, and
        set aside in `checkpoints.damaged/` (nothing is deleted), so that the run saves that step
        afresh. If no checkpoint is readable, RunDirError says so and nothing is moved.
        """
        files = [
            (int(name), 'a file, not a checkpoint')
            for name in _listdir(self.directory)
            if name.isdigit() and not os.path.isdir(os.path.join(self.directory, name))
        ]
        step, restored, damaged = self._first_readable(like, self.all_steps())
        damaged = files + damaged
        if restored is None and damaged:
            raise errors.RunDirError(
                f'no checkpoint in {self.directory} is readable ({_listed(damaged)}). Move '
                f'{self.directory} elsewhere to train from scratch, or pass another --workdir.'
            )
        if damaged:
            self._set_aside([bad for bad, _ in damaged])
        self._warn_skipped(damaged, step, f'moved it to {self._damaged_directory} and ')
        return restored or (like, [])

    def _first_readable(
        self, like: Any, steps: list[int]
    ) -> tuple[int | None, tuple[Any, list[dict[str, Any]]] | None, list[tuple[int, str]]]:
        """The newest of `steps` that reads and its `restore` (None, None if none does), and
        (step, reason) of each one tried before it, which did not read."""
        damaged = []
        with _stderr_held_back() as discard:
            for step in sorted(steps, reverse=True):
                try:
                    restored = self.restore(step, like)
                    break
                except Exception as e:  # Whatever it raised.
                    damaged.append((step, _reason(e)))
            else:
                step, restored = None, None
            if damaged:
                discard()
        return step, restored, damaged

    def _warn_skipped(self, damaged: list[tuple[int, str]], used: int | None, done: str) -> None:
        """Names each damaged step skipped for step `used`, and what was `done` with it."""
        if used is not None:
            for bad, reason in damaged:
                _warn(
                    f'warning: the checkpoint of step {bad} in {self.directory} is damaged '
                    f'({reason}); {done}using step {used}.'
                )

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged step directories out of orbax's sight (process 0 of a job does it)."""
        if jax.process_index() == 0:
            with run_dir.stops_the_run_if_a_write_fails():
                os.makedirs(self._damaged_directory, exist_ok=True)
                for step in steps:
                    os.replace(
                        os.path.join(self.directory, str(step)),
                        _unused_path(os.path.join(self._damaged_directory, str(step))),
                    )
        multihost_utils.sync_global_devices('checkpoints set aside')
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Waits for the save in flight (unless its failure is what ends the run), then closes."""
        try:
            if not isinstance(exc_info[1], errors.SaveError):
                self.wait()
        finally:
            self.close()


def saved_steps(workdir: str) -> list[int]:
    """The steps of the checkpoints in `workdir` as its directory lists them now (a save in
    progress is not among them until it is complete)."""
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    return sorted(int(name) for name in _listdir(directory) if name.isdigit())


def restore_run_files(workdir: str) -> None:
    """Writes back the run's files (config.json, data.json) that `workdir` lost, from the newest
    checkpoint that keeps them, so the run is checked against them as if never lost.

    Checkpoints without that record cannot say which config they were trained with: with
    config.json lost, RunDirError refuses them, naming the fix.
    """
    lost = [name for name in RUN_FILES if not os.path.exists(os.path.join(workdir, name))]
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    steps = saved_steps(workdir)[::-1]
    if not lost or not steps:
        return
    for step in steps:
        try:
            kept = ocp.JsonCheckpointHandler().restore(pathlib.Path(directory, str(step), RUN_ITEM))
        except Exception:  # No record in it, or a damaged one.
            continue
        for name in lost:
            if isinstance(kept, dict) and name in kept:
                with run_dir.stops_the_run_if_a_write_fails():
                    run_dir.write_json_atomic(os.path.join(workdir, name), kept[name])
                _warn(
                    f'warning: {os.path.join(workdir, name)} was missing; wrote it back from the '
                    f'checkpoint of step {step}.'
                )
        return
    if run_dir.CONFIG_FILE in lost:
        raise errors.RunDirError(
            f'{os.path.join(workdir, run_dir.CONFIG_FILE)} is missing and the checkpoints in '
            f'{directory} do not say which config they were trained with, so the run cannot be '
            'checked against this one; restore config.json from a copy, or pass another '
            '--workdir (or move the checkpoints elsewhere to train from scratch).'
        )


def _unused_path(path: str) -> str:
    """`path`, or `path.2`, `path.3`, ... where it is taken (a step set aside before)."""
    number = 1
    while os.path.lexists(candidate := path if number == 1 else f'{path}.{number}'):
        number += 1
    return candidate


def _identity(directory: str) -> tuple[int, int] | None:
    """Which directory is at `directory` now (device and inode), if one is."""
    try:
        status = os.stat(directory)
    except OSError:
        return None
    return (status.st_dev, status.st_ino) if stat.S_ISDIR(status.st_mode) else None


def _listdir(directory: str) -> list[str]:
    return os.listdir(directory) if os.path.isdir(directory) else []


def check_step(workdir: str, step: int | None, steps: list[int]) -> None:
    """Raises RunDirError unless `steps` has a checkpoint, and `step` among them if one is asked."""
    if not steps:
        raise errors.RunDirError(f'{workdir} has no checkpoint yet; train first.')
    if step is not None and step not in steps:
        raise errors.RunDirError(
            f'{workdir} has no checkpoint at step {step}; it has '
            f'{", ".join(map(str, sorted(steps)))}.'
        )


def restore_state(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None, num_channels: int = 1
) -> tuple[train_state.TrainState, int]:
    """The train state of `config` saved at `step` (default: the newest readable checkpoint) of
    the run in `workdir`, and its step: how every reader of a trained model gets it. It moves
    nothing.

    The run may still be training, saving checkpoints and deleting those beyond its newest
    `config.train.keep_checkpoints` while they are read. A read that fails while the steps on
    disk change is made again on the new steps; a step that fails with them unchanged is
    damaged, and left in place: skipped with a warning, or, if it is the `step` asked for, a
    RunDirError.
    """
    like = train_state.create_train_state(
        config, population.run_keys(config)[0], num_channels=num_channels
    )
    keep = config.train.keep_checkpoints
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    for _ in range(READ_ATTEMPTS):
        steps = saved_steps(workdir)
        check_step(workdir, step, steps)
        try:
            checkpointer = Checkpointer(workdir, keep)
        except FileNotFoundError:  # A step deleted while orbax listed the steps.
            continue
        try:
            used, restored, damaged = checkpointer._first_readable(
                like, steps if step is None else [step]
            )
        finally:
            checkpointer.close()
        if (restored is None or damaged) and saved_steps(workdir) != steps:
            continue  # The run saved or deleted checkpoints meanwhile: read the new ones.
        if restored is None and step is None:
            raise errors.RunDirError(
                f'no checkpoint in {directory} is readable ({_listed(damaged)}); evaluating '
                'moves nothing there: evaluate again once the run has saved a readable '
                'checkpoint, or pass another --workdir.'
            )
        if restored is None:
            raise errors.RunDirError(
                f'the checkpoint of step {step} in {directory} is damaged ({damaged[0][1]}); '
                'evaluating moves nothing there: pass another --step (the run has '
                f'{", ".join(map(str, steps))}), or none for the newest readable one.'
            )
        checkpointer._warn_skipped(damaged, used, '')
        return restored[0], cast(int, used)
    raise errors.RunDirError(
        f'the checkpoints in {directory} changed during each of {READ_ATTEMPTS} reads: the run '
        f'there, still training, saves a new one and deletes the oldest (it keeps {keep}) '
        'before one is read. Evaluate once the run has ended, or resume it with a larger '
        'config.train.keep_checkpoints.'
    )


def _listed(damaged: list[tuple[int, str]]) -> str:
    return '; '.join(f'step {step}: {reason}' for step, reason in damaged)


def load_variables(workdir: str, step: int | None = None) -> dict[str, Any]:
    """The model variables of the checkpoint at `step` (default: the newest readable one) of
    the run in `workdir`, e.g. in a notebook: those its evaluation used, the moving average of
    the weights where the run kept one.

    {'params': ..., 'batch_stats': ...} as NumPy arrays, read by `restore_state` with the run's
    own config: `models.create_model(config.model).apply(variables, images, train=False)`. A
    population's arrays have the member axis in front (`jax.vmap` the apply over it).
    """
    state, _ = restore_state(run_dir.read_config(workdir), workdir, step)
    return jax.device_get(state.eval_variables())


@contextlib.contextmanager
def _stderr_held_back() -> Iterator[Callable[[], None]]:
    """Holds back what the block writes to stderr, and passes it on unless the block calls the
    function it is given (to discard it) or raises.

    A restore that fails on a damaged file leaves tensorstore's threads to print a traceback for
    each read cut short, straight to file descriptor 2 (past `sys.stderr` and its hooks), and
    asyncio to log each orbax task that failed: dozens of tracebacks for what the run says in one
    line. Discarding waits a moment for those reads to end, so their echoes are discarded too.
    """
    discarded = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield lambda: discarded.append(True)
        finally:
            if discarded:
                time.sleep(0.5)
                gc.collect()  # Failed tasks are logged as they are collected: here, held back.
            sys.stderr.flush()
            os.dup2(saved, 2)
            if not discarded:
                held.seek(0)
                os.write(saved, held.read())
            os.close(saved)


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def _layout(state: Any) -> dict[str, Any]:
    """The arrays of a train state as a checkpoint holds them."""
    arrays = {
        'step': state.step,
        'params': state.params,
        'opt_state': state.opt_state,
        'batch_stats': state.batch_stats,
    }
    if state.ema is not None:
        arrays['ema'] = state.ema
    return {'state': arrays, 'sums': state.sums}
