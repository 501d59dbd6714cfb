"""Data parallelism over every device of every process, with `jax.sharding`.

One mesh axis, 'data', spans all devices. Parameters, optimiser state and the (small) dataset
are replicated: each process reads its own share of the data, and one all-gather at the start
puts all of it on every device. Each global batch is split evenly along 'data', so every device
gathers and processes only its share of the batch and XLA all-reduces the gradients (and
BatchNorm's batch statistics). On one device the same code runs unchanged.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import math
import os
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'
# Seconds without a sign of life from another process before this one gives up on the job.
# Below JAX's own heartbeat timeout (100 s), which ends the survivors with a C++ abort instead.
PEER_TIMEOUT_ENV = 'VGG_FLAX_PEER_TIMEOUT'
DEFAULT_PEER_TIMEOUT_S = 60.0
_ALIVE_KEY = 'vgg_flax/alive/'
_EXITED = 'exited'
ACCELERATOR_PLUGINS = (
    'jax_cuda12_plugin',
    'jax_cuda13_plugin',
    'jax_rocm60_plugin',
    'jax_rocm7_plugin',
    'libtpu',
)


def initialize_if_launched() -> None:
    """Joins a multi-process job when a scheduler started several processes.

    SLURM (`srun`) and Open MPI are detected by `jax.distributed.initialize()` itself; any other
    launcher sets JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID. Must run before anything touches a device.
    """
    explicit = 'JAX_COORDINATOR_ADDRESS' in os.environ
    scheduled = int(os.environ.get('SLURM_NTASKS', os.environ.get('OMPI_COMM_WORLD_SIZE', '1'))) > 1
    if not (explicit or scheduled):
        return
    try:
        if not explicit:
            check_started_by_srun()
        timeout = peer_timeout()
    except ValueError as e:  # Before joining: the other processes then fail the same way.
        raise SystemExit(f'error: {e}') from None
    if not accelerator_plugin_installed():
        # Collectives between CPU processes (tests, CPU clusters) need gloo.
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    if explicit:
        jax.distributed.initialize(
            coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
            num_processes=int(os.environ['JAX_NUM_PROCESSES']),
            process_id=int(os.environ['JAX_PROCESS_ID']),
        )
    else:
        jax.distributed.initialize()
    PeerWatch(timeout).start()


def check_started_by_srun() -> None:
    """Raises ValueError for a Slurm allocation of several tasks entered without `srun` (a batch
    script's or salloc's shell): SLURM_NTASKS counts the job's processes, but only this one was
    started, and it would wait for the others or train alone. srun marks the processes it starts
    with SLURM_STEP_NUM_TASKS."""
    tasks = os.environ.get('SLURM_NTASKS')
    if (
        tasks
        and 'OMPI_COMM_WORLD_SIZE' not in os.environ
        and 'SLURM_STEP_NUM_TASKS' not in os.environ
    ):
        raise ValueError(
            f'SLURM_NTASKS={tasks} says this job has {tasks} processes, but this one was not '
            'started by srun, which starts them all; run it as `srun python -m vgg_flax.main '
            '...`, or as `srun --ntasks=1 ...` to train in one process.'
        )


def peer_timeout() -> float:
    """The seconds of silence from another process after which this one stops the job."""
    text = os.environ.get(PEER_TIMEOUT_ENV, str(DEFAULT_PEER_TIMEOUT_S))
    try:
        timeout = float(text)
    except ValueError:
        timeout = math.nan
    if not timeout > 0:
        raise ValueError(
            f'{PEER_TIMEOUT_ENV}={text!r} must be a positive number of seconds '
            f'(default {DEFAULT_PEER_TIMEOUT_S:.0f}).'
        )
    return timeout


class PeerWatch(threading.Thread):
    """Ends this process, in one line and within `timeout` seconds, when another process of the
    job stops (killed, crashed, its host gone) instead of leaving it waiting in a collective.

    Every process counts up a key in the job's coordination service each second and watches the
    others' counts; a count that stops moving for `timeout` seconds, or a coordination service
    (process 0) that stops answering, stops this process with exit status 1. A process that
    exits says so first, so a job's processes may finish at different times, and goes on
    watching while JAX's exit waits for the others. The last checkpoint is intact (a save cut
    short is ignored on resume), so the same command resumes.
    """

    def __init__(self, timeout: float, interval: float = 1.0):
        super().__init__(name='PeerWatch', daemon=True)
        self.timeout, self.interval = timeout, interval
        self._client: Any = jax_distributed.global_state.client
        # Read now: at exit jax clears its backends, and asking again would start a new one.
        self._me, self._processes = jax.process_index(), jax.process_count()
        self._exited = False
        atexit.register(self._exit)  # Runs before jax's own exit, which waits for every process.

    def _exit(self) -> None:
        self._exited = True
        with contextlib.suppress(Exception):  # The coordination service may already be gone.
            self._client.key_value_set(f'{_ALIVE_KEY}{self._me}', _EXITED, allow_overwrite=True)

    def run(self) -> None:
        start = time.monotonic()  # Every process has joined: initialize waits for them all.
        seen = {f'{_ALIVE_KEY}{p}': ('', start) for p in range(self._processes) if p != self._me}
        count = 0
        while True:
            time.sleep(self.interval)
            count += 1
            try:
                if not self._exited:
                    self._client.key_value_set(
                        f'{_ALIVE_KEY}{self._me}', str(count), allow_overwrite=True
                    )
                beats = dict(self._client.key_value_dir_get(_ALIVE_KEY))
            except Exception:  # Whatever the failure, the service is gone (or shut down).
                if not self._exited:
                    self._stop_job('the coordination service (process 0) stopped answering')
                return
            now = time.monotonic()
            for key in seen:
                beat = beats.get(key, '')
                if beat != seen[key][0]:
                    seen[key] = (beat, now)
                elif beat != _EXITED and now - seen[key][1] > self.timeout:
                    self._stop_job(
                        f'process {key.rsplit("/", 1)[-1]} has given no sign of life '
                        f'for {self.timeout:.0f} s (killed, crashed or cut off)'
                    )

    def _stop_job(self, why: str) -> None:
        print(
            f'error: {why}; process {self._me} of {self._processes} stops too. Start the '
            'job again with the same command: it resumes from the last checkpoint.',
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(1)  # The main thread may be waiting in a collective that will never finish.


def accelerator_plugin_installed() -> bool:
    """Whether jax has a GPU or TPU plugin here (checked without initialising a backend)."""
    return any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def create_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def split_along(mesh: Mesh, axis: int) -> NamedSharding:
    """Dimension `axis` split over the devices, the others replicated."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA_AXIS))


def put(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array (the same on every process) as a global array with `sharding`.

    Each process places only the pieces its own devices hold.
    """
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def replicate_from_processes(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Every process's `local` rows, concatenated in process order, on every device of `mesh`.

    Each process reads only its share of a split; one all-gather then gives every device the
    whole split, so batches can be drawn from all of it without collectives in the step.
    """
    if jax.process_count() == 1:
        return put(local, replicated(mesh))
    counts = [int(n) for n in multihost_utils.process_allgather(np.int32(len(local)))]
    # Pad every share to one length that splits over each process's devices.
    devices_per_process = mesh.local_mesh.size
    length = -(-max(counts) // devices_per_process) * devices_per_process
    padded = np.zeros((length, *local.shape[1:]), local.dtype)
    padded[: len(local)] = local
    stacked = jax.make_array_from_process_local_data(
        split_along(mesh, 0), padded, (length * jax.process_count(), *local.shape[1:])
    )
    unpad = jax.jit(
        lambda a: jnp.concatenate([a[p * length : p * length + n] for p, n in enumerate(counts)]),
        out_shardings=replicated(mesh),
    )
    return unpad(stacked)


def is_chief() -> bool:
    """Process 0 writes the run's files; the others compute alongside."""
    return jax.process_index() == 0


def check_divisible(field: str, value: int, mesh: Mesh) -> None:
    if value % mesh.size:
        raise ValueError(
            f'config.{field}={value} does not split evenly over {mesh.size} '
            f'devices; use a multiple of {mesh.size}.'
        )
