"""A config checked whole before any data is read or code compiled: a bad value is one line
naming the field and what it must be (`config_schema.validate`), and a batch too large for the
devices' memory is one line naming the fix (`check_fits_memory`)."""

from __future__ import annotations

import os
import resource

import jax
import jax.numpy as jnp
import ml_collections

from vgg_flax import config_schema, models


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every field against the schema, then that the first convolution fits the memory
    the devices may use, so a bad value fails before data is read or code compiled."""
    config_schema.validate(config)
    check_fits_memory(config)


DEVICES = 'memory of the devices'


def device_memory_bytes() -> tuple[int, str]:
    """The memory every device together may use, and what it is: the accelerators' limit, or
    on a CPU the host's RAM, which its devices share, or what the process may still allocate
    where a limit set for it is lower (`ulimit -v`, a container's cgroup): past it, a step's
    allocation aborts the process, or the kernel kills it, with no message of the run's."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if 'bytes_limit' in stats:
        return int(stats['bytes_limit']) * jax.device_count(), DEVICES
    return min(
        [(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'), DEVICES), *process_limits()]
    )


# The memory limit of a cgroup (v2, then v1) and the memory its processes use, as a container
# sees its own.
CGROUP_FILES = (
    ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),
    ('/sys/fs/cgroup/memory/memory.limit_in_bytes', '/sys/fs/cgroup/memory/memory.usage_in_bytes'),
)


def process_limits() -> list[tuple[int, str]]:
    """What this process may still allocate under each limit set for it, and which limit."""
    limits = []
    address_space, _ = resource.getrlimit(resource.RLIMIT_AS)
    if address_space != resource.RLIM_INFINITY:
        with open('/proc/self/statm') as f:  # In pages; the first is the address space in use.
            used = int(f.read().split()[0]) * os.sysconf('SC_PAGE_SIZE')
        limits.append(
            (
                max(0, address_space - used),
                "address space left under the process's limit (ulimit -v)",
            )
        )
    for limit_file, usage_file in CGROUP_FILES:
        try:
            with open(limit_file) as limit, open(usage_file) as usage:
                cgroup_limit, used = limit.read().strip(), int(usage.read())
        except (OSError, ValueError):
            continue
        if cgroup_limit.isdigit() and int(cgroup_limit) < 2**60:  # 'max', or v1's "none".
            limits.append(
                (max(0, int(cgroup_limit) - used), "memory left under the cgroup's limit")
            )
        break
    return limits


def check_fits_memory(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError when the first convolution's output for one train batch (of every
    member) alone exceeds the memory the devices may use: a lower bound on what the step needs,
    so a run that cannot fit fails here in one line instead of in minutes of compiling or
    swapping, or in an abort or a kill without a message."""
    size, batch = config.data.image_size, config.train.batch_size * config.population_size
    channels = models.conv_arch_for(
        models.full_width_blocks(config.model), config.model.width_ratio
    )[0][1]
    needed = batch * size * size * channels * jnp.dtype(models.DTYPES[config.model.dtype]).itemsize
    available, what = device_memory_bytes()
    if needed > available:
        raise ValueError(
            f'config.data.image_size={size} needs at least {needed / 2**30:,.1f} GiB for the first '
            f"convolution's output of a batch of {batch} ({size}x{size}x{channels} per image), "
            f'more than the {available / 2**30:,.1f} GiB of {what}; lower '
            'config.data.image_size or config.train.batch_size'
            + ('.' if what == DEVICES else ', or raise that limit.')
        )
