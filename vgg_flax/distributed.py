"""Data parallelism over every device of every process, with `jax.sharding`.

One mesh axis, 'data', spans all devices. Parameters, optimiser state and the (small) dataset
are replicated: each process reads its own share of the data, and one all-gather at the start
puts all of it on every device. Each global batch is split evenly along 'data', so every device
gathers and processes only its share of the batch and XLA all-reduces the gradients (and
BatchNorm's batch statistics). On one device the same code runs unchanged.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'
ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                       'jax_rocm7_plugin', 'libtpu')


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
    if not accelerator_plugin_installed():
        # Collectives between CPU processes (tests, CPU clusters) need gloo.
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    if explicit:
        jax.distributed.initialize(
            coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
            num_processes=int(os.environ['JAX_NUM_PROCESSES']),
            process_id=int(os.environ['JAX_PROCESS_ID']))
    else:
        jax.distributed.initialize()


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
    padded = np.zeros((length,) + local.shape[1:], local.dtype)
    padded[:len(local)] = local
    stacked = jax.make_array_from_process_local_data(
        split_along(mesh, 0), padded, (length * jax.process_count(),) + local.shape[1:])
    unpad = jax.jit(lambda a: jnp.concatenate([a[p * length:p * length + n]
                                               for p, n in enumerate(counts)]),
                    out_shardings=replicated(mesh))
    return unpad(stacked)


def is_chief() -> bool:
    """Process 0 writes the run's files; the others compute alongside."""
    return jax.process_index() == 0


def check_divisible(field: str, value: int, mesh: Mesh) -> None:
    if value % mesh.size:
        raise ValueError(f'config.{field}={value} does not split evenly over {mesh.size} '
                         f'devices; use a multiple of {mesh.size}.')

