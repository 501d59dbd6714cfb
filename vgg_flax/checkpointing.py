"""The run directory: its config, its checkpoints (orbax) and the checks that make resuming safe.

A checkpoint holds the train state, the running sums of the epoch in progress and the metrics
history, so a resumed run continues exactly where the saved one stopped, mid-epoch included.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Any, Iterator

import jax
import ml_collections
import orbax.checkpoint as ocp

from vgg_flax import config_utils, environment

CONFIG_FILE = 'config.json'
ENVIRONMENT_FILE = 'environment.json'
RESULTS_FILE = 'results.json'
CHECKPOINT_DIR = 'checkpoints'


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


def claim_workdir(workdir: str, config: ml_collections.ConfigDict, write: bool = True) -> bool:
    """Makes `workdir` this config's run directory; True when it already held the same run.

    Refuses a workdir written by a config that computes something else (another model, data,
    seed or optimiser), since resuming it would mix two experiments. Writes the config and the
    environment this launch runs in (`environment.describe`); only one process of a
    multi-process job should `write` them.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    current = config_utils.to_plain(config)
    existed = os.path.isfile(path)
    if existed:
        with open(path) as f:
            saved = json.load(f)
        conflicts = config_utils.resume_conflicts(saved, current)
        if conflicts:
            raise RunDirError(
                f'{workdir} holds a run of a different config, which cannot be resumed with '
                'this one:\n  ' + '\n  '.join(conflicts) +
                '\nUse a new --workdir, or set those fields back to resume that run.')
    if write:
        os.makedirs(workdir, exist_ok=True)
        write_json_atomic(path, current)
        write_json_atomic(os.path.join(workdir, ENVIRONMENT_FILE), environment.describe())
    return existed


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


def _layout(state: Any) -> dict[str, Any]:
    """The arrays of a train state as a checkpoint holds them."""
    return {'state': {'step': state.step, 'params': state.params, 'opt_state': state.opt_state,
                      'batch_stats': state.batch_stats},
            'sums': state.sums}
