"""What a result was measured on: versions, devices and the command line."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from typing import Any

import jax
from absl import app, flags, logging

from vgg_flax import distributed

# XLA flags that make the CPU training step faster, and the jaxlib releases they were measured on
# (an XLA flag that a jaxlib does not know aborts the process, so they are not applied blindly).
# YNNPACK for XLA's dot fusions: faster CPU steps (benchmarks/README.md has the measurements).
CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=dot',)
CPU_FLAGS_JAXLIB = ('0.10.',)

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'ml-collections', 'numpy')


def describe() -> dict[str, Any]:
    """A JSON-ready record of the software and hardware in use now."""
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    devices = jax.devices()
    return {
        'time': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
        'hostname': socket.gethostname(),
        'argv': sys.argv,
        'python': platform.python_version(),
        'platform': platform.platform(),
        'packages': versions,
        'git': code_version(),
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'backend': jax.default_backend(),
        'device_kind': devices[0].device_kind,
        'num_devices': len(devices),
        'num_processes': jax.process_count(),
        'devices': [str(device) for device in devices],
    }


def code_version() -> dict[str, Any] | None:
    """The git commit of the vgg_flax code that runs, and whether it had uncommitted changes
    (then the commit alone does not reproduce the result); None outside a git checkout."""
    package_dir = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str:
        return subprocess.run(
            ['git', '-C', package_dir, *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()

    try:
        return {
            'commit': git('rev-parse', 'HEAD'),
            'dirty': bool(git('status', '--porcelain', '--untracked-files=no')),
        }
    except (OSError, subprocess.SubprocessError):
        return None


def start_cli(argv: list[str], compilation_cache: bool = True) -> None:
    """What every CLI does first: reject stray arguments, log WARNING and above (orbax and jax
    log much at INFO) unless --verbosity was given, tune XLA's CPU backend, join a multi-process
    job if launched as one, and turn the persistent compilation cache on (or, for a CLI that
    times compiles, off: $JAX_COMPILATION_CACHE_DIR alone would turn it on)."""
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)
    tune_cpu_backend()
    distributed.initialize_if_launched()
    if compilation_cache:
        enable_compilation_cache()
    else:
        jax.config.update('jax_enable_compilation_cache', False)


def tune_cpu_backend() -> bool:
    """Adds `CPU_XLA_FLAGS` to $XLA_FLAGS on CPU-only installs of a jaxlib they were measured on.

    Must run before JAX initialises its backend. Skipped when an accelerator plugin is
    installed, when $XLA_FLAGS already sets them, or when VGG_FLAX_CPU_TUNING=0.
    Returns whether the flags were added.
    """
    current = os.environ.get('XLA_FLAGS', '')
    if (
        os.environ.get('VGG_FLAX_CPU_TUNING', '1') == '0'
        or not importlib.metadata.version('jaxlib').startswith(CPU_FLAGS_JAXLIB)
        or distributed.accelerator_plugin_installed()
    ):
        return False
    missing = [flag for flag in CPU_XLA_FLAGS if flag.split('=')[0] not in current]
    if missing:
        os.environ['XLA_FLAGS'] = ' '.join([current, *missing]).strip()
    return True


def enable_compilation_cache() -> str:
    """Turns on JAX's persistent compilation cache, so a relaunch does not compile again.

    The cache lives in $JAX_COMPILATION_CACHE_DIR, else ~/.cache/vgg_flax/xla. Returns the path.
    """
    path = os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(
        os.path.expanduser('~'), '.cache', 'vgg_flax', 'xla'
    )
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    return path
