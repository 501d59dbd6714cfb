"""The run directory's own files: the config it was launched with, the fingerprint of its data,
its results, the environment of its last launch, and the lock that keeps it to one run at a time;
and the checks that refuse a directory a run cannot use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import stat
from collections.abc import Iterator
from typing import IO, Any

import ml_collections

from vgg_flax import config_schema, environment, errors

CONFIG_FILE = 'config.json'
ENVIRONMENT_FILE = 'environment.json'
DATA_FILE = 'data.json'  # The fingerprint of the data the run trains and evaluates on.
RESULTS_FILE = 'results.json'
LOCK_FILE = '.lock'


CONFIG_FIX = (
    'restore it from a copy (it holds the config the run was launched with), or pass '
    'another --workdir to start afresh.'
)


def read_json(path: str, fix: str) -> Any:
    """The JSON value in `path`; RunDirError naming the file and `fix` if it does not parse."""
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError.
        raise errors.RunDirError(f'{path} is damaged ({e}); {fix}') from None


def read_json_object(path: str, fix: str) -> dict[str, Any]:
    """`read_json` of a file that holds a JSON object; any other value (a file edited by hand)
    is a RunDirError naming it and `fix` too."""
    value = read_json(path, fix)
    if not isinstance(value, dict):
        raise errors.RunDirError(
            f'{path} holds a JSON {type(value).__name__}, not an object; {fix}'
        )
    return value


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was launched with.

    Fields added to the package since then take their defaults. A file that is not such a
    config (damaged, or edited by hand into another shape) is a RunDirError naming it.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise errors.RunDirError(
            f'{path} is missing: {workdir} holds no run of vgg_flax.main. Pass the '
            'workdir that a training run wrote.'
        )
    return config_from_plain(read_json(path, CONFIG_FIX), path, CONFIG_FIX)


def config_from_plain(plain: Any, path: str, fix: str) -> ml_collections.ConfigDict:
    """The config that `plain`, read from `path`, holds; fields added to the package since it was
    written take their defaults, and fields it holds under a former name are read under the
    current one. Another value (a file edited by hand into another shape) is a RunDirError
    naming `path` and `fix`."""
    config = config_schema.default_config()
    try:
        if not isinstance(plain, dict):
            raise TypeError(f'a JSON {type(plain).__name__}, not an object')
        config.update(config_schema.from_plain(config_schema.current_names(plain)))
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise errors.RunDirError(
            f'{path} does not hold a config of this package ({e}); {fix}'
        ) from None
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
        raise errors.RunDirError('--workdir is empty; pass the directory this run should write to.')
    try:
        os.makedirs(workdir, exist_ok=True)
    except FileExistsError:
        if os.path.islink(workdir):
            raise errors.RunDirError(
                f'--workdir={workdir} is a symbolic link to {os.readlink(workdir)}, which does '
                'not exist; create that directory (or mount its disk), or pass another --workdir.'
            ) from None
        raise errors.RunDirError(
            f'--workdir={workdir} is a file, not a directory; pass a directory path.'
        ) from None
    except OSError as e:
        raise _unwritable(workdir, e) from None
    with _open_lock(workdir, os.O_RDWR | os.O_CREAT) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise errors.RunDirError(
                f'{workdir} is in use by another run ({_holder(lock)}); wait for it to end '
                'or stop it, or pass another --workdir.'
            ) from None
        if not _HOLDER.fullmatch(os.pread(lock, 4096, 0)):  # Read once no run writes it.
            raise errors.RunDirError(
                f'{_lock_path(workdir)} is a file other than the lock of a run; {_MOVE_IT}'
            )
        holder = f'host {socket.gethostname()}, pid {os.getpid()}\n'.encode()
        try:
            os.ftruncate(lock, 0)
            if os.pwrite(lock, holder, 0) < len(holder):  # Cut short (a full disk): left empty.
                os.ftruncate(lock, 0)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:  # A full disk, or a file-size limit.
            raise _unwritable(workdir, e) from None
        yield


def _unwritable(workdir: str, error: OSError) -> errors.RunDirError:
    return errors.RunDirError(
        f'cannot write to --workdir={workdir} ({error.strerror or error}); pass a directory you '
        'can write to.'
    )


# What a run writes in its lock (the file is empty until it has): the lock of another program,
# or another file in its place, is never overwritten.
_HOLDER = re.compile(rb'(host .*, pid \d+\n)?')
_MOVE_IT = 'move it elsewhere: a run keeps its lock there.'


def _lock_path(workdir: str) -> str:
    return os.path.join(workdir, LOCK_FILE)


@contextlib.contextmanager
def _open_lock(workdir: str, flags: int) -> Iterator[int]:
    """The file descriptor of `workdir/.lock`, opened with `flags` without following a link; a
    RunDirError names anything else there (a link, a directory, a file with other names)."""
    path = _lock_path(workdir)
    try:  # Not blocking: a FIFO there opens at once, to be refused below.
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EISDIR):
            raise _unwritable(workdir, e) from None
        fd = -1
        what = 'a symbolic link' if e.errno == errno.ELOOP else 'a directory'
    try:
        if fd >= 0:
            status = os.fstat(fd)
            what = (
                'not a plain file'
                if not stat.S_ISREG(status.st_mode)
                else 'a hard link (a file with another name too)'
                if status.st_nlink != 1
                else ''
            )
        if what:
            raise errors.RunDirError(f'{path} is {what}; {_MOVE_IT}')
        yield fd
    finally:
        if fd >= 0:
            os.close(fd)


def _holder(lock: int) -> str:
    return (
        os.pread(lock, 4096, 0).decode(errors='replace').strip()
        or 'a process that has not written its name yet'
    )


def held_by(workdir: str) -> str | None:
    """Who holds `workdir` (a run still in progress), or None if no run does."""
    try:
        with _open_lock(workdir, os.O_RDONLY) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder(lock)
            fcntl.flock(lock, fcntl.LOCK_UN)
            return None
    except errors.RunDirError:  # No lock there (or no run's lock).
        return None


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> bool:
    """Whether `workdir` holds a run of this config already; refuses another config's run.

    A config that computes something else (another model, data, seed or optimiser) is refused,
    since resuming it would mix two experiments.
    """
    if not os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
        return False
    # A field added to the package since the run began counts as its default there.
    conflicts = config_schema.resume_conflicts(
        config_schema.to_plain(read_config(workdir)), config_schema.to_plain(config)
    )
    if conflicts:
        raise errors.RunDirError(
            f'{workdir} holds a run of a different config, which cannot be resumed with '
            'this one:\n  '
            + '\n  '.join(conflicts)
            + '\nUse a new --workdir, or set those fields back to resume that run.'
        )
    return True


def check_data(workdir: str, fingerprints: dict[str, Any]) -> None:
    """Refuses to resume a run on data other than it was trained on (other or changed files under
    the same config), which would mix two datasets into one run silently. A run that has no
    record of its data yet (none is written before its first launch passes every check) is
    accepted."""
    path = os.path.join(workdir, DATA_FILE)
    if not os.path.isfile(path):
        return
    fix = "delete it to accept the data config.data gives now as the run's."
    recorded = read_json_object(path, fix)
    if _fields(recorded) != _fields(fingerprints):  # Edited by hand: not a record of this data.
        raise errors.RunDirError(
            f'{path} does not hold the fingerprints of the splits '
            f'{", ".join(sorted(fingerprints))} as a run records them; {fix}'
        )
    if recorded != fingerprints:
        differ = '; '.join(
            f'{split}: {recorded.get(split)} in the run, {now} now'
            for split, now in fingerprints.items()
            if recorded.get(split) != now
        )
        raise errors.RunDirError(
            f'{workdir} was trained on other data than config.data gives now '
            f'({differ}). Point config.data at the files the run used, or pass '
            'another --workdir.'
        )


def _fields(fingerprints: dict[str, Any]) -> dict[str, list[str] | None]:
    """The splits of a record of the data, and the fields of each."""
    return {
        split: sorted(value) if isinstance(value, dict) else None
        for split, value in fingerprints.items()
    }


def last_num_devices(workdir: str) -> int | None:
    """How many devices the run's last launch used (from its environment.json), if known."""
    try:
        return int(read_json(os.path.join(workdir, ENVIRONMENT_FILE), '')['num_devices'])
    except (OSError, errors.RunDirError, KeyError, TypeError, ValueError):
        return None


def write_run_files(
    workdir: str, config: ml_collections.ConfigDict, data_fingerprints: dict[str, Any]
) -> None:
    """Writes the run's config, its data's fingerprints and the environment this launch runs
    in."""
    with stops_the_run_if_a_write_fails():
        write_json_atomic(os.path.join(workdir, CONFIG_FILE), config_schema.to_plain(config))
        write_json_atomic(os.path.join(workdir, DATA_FILE), data_fingerprints)
        write_json_atomic(os.path.join(workdir, ENVIRONMENT_FILE), environment.describe())


RESULTS_FIX = 'the run writes it when it finishes: delete it, and the same command writes it again.'


def finished_results(workdir: str, num_epochs: int) -> dict[str, Any] | None:
    """The results of the run in `workdir` if it has trained all `num_epochs` epochs."""
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.isfile(path):
        return None
    results = read_json_object(path, RESULTS_FIX)
    return results if results.get('epochs') == num_epochs else None


@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'w') -> Iterator[IO]:
    """A file that replaces `path` only once written in full.

    A killed process never leaves half a file, nor do processes that write the same file at
    once (a sweep's job-array tasks finishing together): each writes a temporary file of its own.
    """
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, mode, newline=None if 'b' in mode else '') as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str, value: Any) -> None:
    with atomic_write(path) as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write('\n')


@contextlib.contextmanager
def stops_the_run_if_a_write_fails() -> Iterator[None]:
    """Turns a failed write of the run's files (a read-only or full disk, a file-size limit, a
    directory deleted under the run) into a RunDirError of one line: the run stops, its
    checkpoints as they were."""
    try:
        yield
    except OSError as e:
        raise errors.RunDirError(
            # A replace names the file it replaces second.
            f'writing {e.filename2 or e.filename or "the run log"} failed ({e.strerror or e}); '
            'the run stopped, '
            'its last checkpoint intact: fix the cause (a read-only or full disk, a file-size '
            'limit) and run the same command to resume.'
        ) from None
