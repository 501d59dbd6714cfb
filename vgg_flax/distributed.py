"""Data parallelism over every device of every process, with `jax.sharding`.

One mesh axis, 'data', spans all devices. Parameters, optimiser state and the (small) dataset
are replicated; each global batch is split evenly along 'data', so every device gathers and
processes only its share and XLA all-reduces the gradients (and BatchNorm's batch statistics).
On one device the same code runs unchanged.
"""

from __future__ import annotations

import importlib.util
import os
import jax
import numpy as np
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


def is_chief() -> bool:
    """Process 0 writes the run's files; the others compute alongside."""
    return jax.process_index() == 0


def check_divisible(field: str, value: int, mesh: Mesh) -> None:
    if value % mesh.size:
        raise ValueError(f'config.{field}={value} does not split evenly over {mesh.size} '
                         f'devices; use a multiple of {mesh.size}.')

