"""What a result was measured on: versions, devices and the command line."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import socket
import sys
from typing import Any

import jax
from absl import flags, logging

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


def quiet_absl_logging() -> None:
    """WARNING and above unless --verbosity was given: orbax and jax log much at INFO."""
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)
