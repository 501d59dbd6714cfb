"""The run directory: its config, its checkpoints (orbax) and the checks that make resuming safe.

A checkpoint holds the train state, the running sums of the epoch in progress and the metrics
history, so a resumed run continues exactly where the saved one stopped, mid-epoch included.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from typing import IO, Any, Iterator

import jax
import ml_collections
import orbax.checkpoint as ocp

from vgg_flax import config_utils, environment

CONFIG_FILE = 'config.json'
ENVIRONMENT_FILE = 'environment.json'
RESULTS_FILE = 'results.json'
CHECKPOINT_DIR = 'checkpoints'
LOCK_FILE = '.lock'


class RunDirError(Exception):
    """The workdir belongs to another run; the message names the differences and the fix."""


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was launched with.

    Fields added to the package since then take their defaults.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise RunDirError(f'{path} is missing: {workdir} holds no run of vgg_flax.main. Pass the '
                          'workdir that a training run wrote.')
    config = config_utils.default_config()
    with open(path) as f:
        config.update(config_utils.from_plain(json.load(f)))
    return config


@contextlib.contextmanager
def hold_workdir(workdir: str, active: bool = True) -> Iterator[None]:
    """Holds `workdir` for this run alone, or refuses it, naming the run that holds it.

    The hold is an OS lock (flock) on `workdir/.lock`, which the OS drops when the process ends,
    however it ends (kill -9 too), so a dead run never leaves a stale lock. Only one process of a
    multi-process job takes it (`active`).
    """
    if not active:
        yield
        return
    if not workdir:
        raise RunDirError('--workdir is empty; pass the directory this run should write to.')
    try:
        os.makedirs(workdir, exist_ok=True)
        lock = open(os.path.join(workdir, LOCK_FILE), 'a+')
    except FileExistsError:
        raise RunDirError(f'--workdir={workdir} is a file, not a directory; pass a directory '
                          'path.') from None
    except OSError as e:
        raise RunDirError(f'cannot write to --workdir={workdir} ({e.strerror}); pass a '
                          'directory you can write to.') from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or 'a process that has not written its name yet'
            raise RunDirError(f'{workdir} is in use by another run ({holder}); wait for it to end '
                              'or stop it, or pass another --workdir.') from None
        lock.seek(0)
        lock.truncate()
        lock.write(f'host {socket.gethostname()}, pid {os.getpid()}\n')
        lock.flush()
        yield


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> bool:
    """Whether `workdir` holds a run of this config already; refuses another config's run.

    A config that computes something else (another model, data, seed or optimiser) is refused,
    since resuming it would mix two experiments.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        conflicts = config_utils.resume_conflicts(json.load(f), config_utils.to_plain(config))
    if conflicts:
        raise RunDirError(
            f'{workdir} holds a run of a different config, which cannot be resumed with '
            'this one:\n  ' + '\n  '.join(conflicts) +
            '\nUse a new --workdir, or set those fields back to resume that run.')
    return True


def write_run_files(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes the run's config and the environment this launch runs in."""
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, CONFIG_FILE), config_utils.to_plain(config))
    write_json_atomic(os.path.join(workdir, ENVIRONMENT_FILE), environment.describe())


def finished_results(workdir: str, num_epochs: int) -> dict[str, Any] | None:
    """The results of the run in `workdir` if it has trained all `num_epochs` epochs."""
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        results = json.load(f)
    return results if results['epochs'] == num_epochs else None


@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'w') -> Iterator[IO]:
    """A file that replaces `path` only once written in full.

    A killed process never leaves half a file, nor do processes that write the same file at
    once (a sweep's job-array tasks finishing together): each writes a temporary file of its own.
    """
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, mode, **({} if 'b' in mode else {'newline': ''})) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str, value: Any) -> None:
    with atomic_write(path) as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write('\n')


class Checkpointer:
    """Saves and restores the train state plus the JSON metrics history.

    On disk, a step's `arrays` item is {'state': {'step', 'params', 'opt_state', 'batch_stats'},
    'sums': the epoch's running sums}, which orbax alone can read. Orbax writes each checkpoint to a
    temporary directory and renames it when complete, so a killed run leaves the previous
    checkpoint intact.
    """

    def __init__(self, workdir: str, keep: int):
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, history: list[dict[str, Any]]) -> None:
        """Saves `step`, unless it is saved already.

        That happens at a stop right after an epoch's checkpoint, and at the step a run resumed
        from after a stop had interrupted that epoch's evaluation: the kept checkpoint has the
        same state, and its history lacks only that evaluation, which resuming runs again.
        """
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(_layout(state)),
            history=ocp.args.JsonSave(history)), force=True)

    def restore(self, step: int, like: Any) -> tuple[Any, list[dict[str, Any]]]:
        """The state saved at `step`, on the shapes, dtypes and shardings of `like`'s arrays."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            _layout(like))
        restored = self._manager.restore(step, args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(abstract),
            history=ocp.args.JsonRestore()))
        arrays = restored['arrays']
        return like.replace(**arrays['state'], sums=arrays['sums']), list(restored['history'])

    def restore_latest(self, like: Any) -> tuple[Any, list[dict[str, Any]]]:
        """`restore` of the latest step; `like` and no history when there is none."""
        latest = self.latest_step()
        return (like, []) if latest is None else self.restore(latest, like)

    def wait(self) -> None:
        """Blocks until asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> 'Checkpointer':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Waits for the saves in flight, then closes."""
        try:
            self.wait()
        finally:
            self.close()


def _layout(state: Any) -> dict[str, Any]:
    """The arrays of a train state as a checkpoint holds them."""
    return {'state': {'step': state.step, 'params': state.params, 'opt_state': state.opt_state,
                      'batch_stats': state.batch_stats},
            'sums': state.sums}
