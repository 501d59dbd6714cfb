"""What a result was measured on: versions, devices and the command line."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import sys
from typing import Any

import jax
from absl import app, flags, logging

from vgg_flax import distributed

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'ml-collections', 'numpy')


def describe() -> dict[str, Any]:
    """A JSON-ready record of the software and hardware in use now."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    devices = jax.devices()
    return {
        'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'hostname': socket.gethostname(),
        'argv': sys.argv,
        'python': platform.python_version(),
        'platform': platform.platform(),
        'packages': versions,
        'backend': jax.default_backend(),
        'device_kind': devices[0].device_kind,
        'num_devices': len(devices),
        'num_processes': jax.process_count(),
        'devices': [str(device) for device in devices],
    }


def start_cli(argv: list[str], compilation_cache: bool = True) -> None:
    """What every CLI does first: reject stray arguments, log WARNING and above (orbax and jax
    log much at INFO) unless --verbosity was given, join a multi-process job if launched as one,
    and turn on the persistent compilation cache."""
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)
    distributed.initialize_if_launched()
    if compilation_cache:
        enable_compilation_cache()


def enable_compilation_cache() -> str:
    """Turns on JAX's persistent compilation cache, so a relaunch does not compile again.

    The cache lives in $JAX_COMPILATION_CACHE_DIR, else ~/.cache/vgg_flax/xla. Returns the path.
    """
    path = os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(
        os.path.expanduser('~'), '.cache', 'vgg_flax', 'xla')
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    return path
