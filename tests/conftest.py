"""Shared fixtures: small configs, generated IDX files and the real Fashion-MNIST when present."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import traceback
import types

import jax
import ml_collections
import numpy as np
import pytest
from absl import app, flags

from vgg_flax import cli, config_schema, config_utils, environment, metric_writers
from vgg_flax.input_pipeline import IDX_FILES, write_idx

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted((ROOT / 'experiments').glob('*.py'))
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# The directory of the real Fashion-MNIST IDX files, for the tests that train on them.
REAL_DATA_DIR = os.environ.get('VGG_FLAX_FASHION_MNIST', '')


@pytest.fixture(autouse=True, scope='session')
def compilation_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One persistent XLA cache for the session (its pytest-xdist workers and their subprocesses
    share it): compile each program once.

    It also starts this process's backend before any test can, with $XLA_FLAGS as the session
    found them: the CPU tuning's tests set it, and the numerics of every later test must not
    depend on whether one ran first.
    """
    jax.devices()
    base = tmp_path_factory.getbasetemp()
    # A worker's base directory lies in the session's, which the workers share.
    path = str((base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base) / 'xla_cache')
    os.environ['JAX_COMPILATION_CACHE_DIR'] = path
    environment.enable_compilation_cache()


def load_experiment(path: os.PathLike) -> ml_collections.ConfigDict:
    return config_utils.load_config(path)


# Two VGG blocks: a test of the loop, the data or the checkpoints needs no more, and two blocks
# compile in half the time of VGG-11's five (compiling is most of the suite's time).
TINY_CONV_ARCH = ((1, 64), (1, 128))


def tiny_config(idx_dir: str = '') -> ml_collections.ConfigDict:
    """Two VGG blocks at ratio 16 with BN and a small head on 32 px images: seconds per epoch.

    BatchNorm lets so narrow a net learn within a few steps (and puts batch statistics in every
    checkpoint the tests resume from).
    """
    config = config_schema.default_config()
    config.model.conv_arch = TINY_CONV_ARCH
    config.model.width_ratio = 16
    config.model.use_bn = True
    config.model.dense_features = (64, 64)
    config.model.dropout_rate = 0.1
    config.data.source = 'idx'
    config.data.idx_dir = idx_dir
    config.data.image_size = 32
    config.train.batch_size = 32
    config.train.eval_batch_size = 48
    config.train.num_epochs = 2
    config.train.momentum = 0.9
    config.train.learning_rate = 0.05
    return config


def synthetic_split(num_examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose class is a bright 7x7 patch at one of 10 places, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, num_examples).astype(np.uint8)
    images = rng.integers(0, 60, (num_examples, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        images[i, 3 + 12 * row : 10 + 12 * row, 1 + 5 * col : 6 + 5 * col] = 255
    return images, labels


def write_fashion_idx_dir(
    directory: pathlib.Path, num_train: int = 320, num_test: int = 100, gz: bool = True
) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = '.gz' if gz else ''
    for split, count, seed in (('train', num_train, 0), ('test', num_test, 1)):
        images_name, labels_name = IDX_FILES[split]
        images, labels = synthetic_split(count, seed)
        write_idx(str(directory / (images_name + suffix)), images)
        write_idx(str(directory / (labels_name + suffix)), labels)
    return directory


@pytest.fixture
def idx_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A small, learnable Fashion-MNIST look-alike in IDX files."""
    return write_fashion_idx_dir(tmp_path / 'idx')


@pytest.fixture
def tfds_servers_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets the TFDS source's reachability check pass offline; the test fakes TFDS itself."""

    class Connection:
        def close(self) -> None:
            pass

    monkeypatch.setattr(socket, 'create_connection', lambda *args, **kwargs: Connection())


@pytest.fixture
def real_data_dir() -> pathlib.Path:
    if not REAL_DATA_DIR:
        pytest.skip(
            'needs the real Fashion-MNIST: set VGG_FLAX_FASHION_MNIST to the directory '
            'of its four IDX files'
        )
    if not any(
        (pathlib.Path(REAL_DATA_DIR) / f'train-images-idx3-ubyte{suffix}').is_file()
        for suffix in ('.gz', '')
    ):
        pytest.fail(f'VGG_FLAX_FASHION_MNIST={REAL_DATA_DIR} holds no train-images-idx3-ubyte(.gz)')
    return pathlib.Path(REAL_DATA_DIR)


def sigterm_once_training(
    process: subprocess.Popen, steps_log: pathlib.Path, timeout: float = 300
) -> tuple[str, str]:
    """Sends SIGTERM to `process` once `steps_log` has its first line (written with the run's
    signal handlers set); returns its stdout and stderr once it has exited."""
    deadline = time.time() + timeout
    while not (steps_log.is_file() and steps_log.read_text()) and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=timeout)


def epoch_metrics(workdir: pathlib.Path) -> list[dict]:
    """Each epoch's step, losses and accuracies: what a resumed run must reproduce exactly."""
    keys = ('epoch', 'step', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy')
    return [{k: r[k] for k in keys} for r in metric_writers.read_history(str(workdir))]


def logged_past(workdir: pathlib.Path, step: int) -> bool:
    """Whether the step log has a complete line beyond `step` (a line may be half written)."""
    path = workdir / 'steps.jsonl'
    lines = path.read_text().split('\n')[:-1] if path.is_file() else []
    return any(json.loads(line)['step'] > step for line in lines if line)


@dataclasses.dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Runs a CLI in this process as `python -m vgg_flax.<module> ARGS` runs it.

    `cli.parse_flags` parses the flags (ml_collections reads the --config.* overrides from
    sys.argv), then the module's `main` runs; a `sys.exit(message)` gives status 1 and the
    message on stderr, an exception that would end the process status 1 and its traceback.
    The CLI's CPU tuning is off: this process's backend started without those XLA flags, so
    they would change only the compilation cache's keys ($XLA_FLAGS is part of them), and every
    program a CLI runs would compile again. The compilation cache's switch, which a CLI that
    times compiles turns off, is restored afterwards.
    """
    cache_enabled = jax.config.jax_enable_compilation_cache  # type: ignore[attr-defined]

    def run(module: types.ModuleType, *args: str) -> CliRun:
        argv = [module.__name__, *map(str, args)]
        monkeypatch.setattr(sys, 'argv', argv)
        monkeypatch.setenv('VGG_FLAX_CPU_TUNING', '0')
        for name in [name for name in flags.FLAGS if name.startswith('config.')]:
            delattr(flags.FLAGS, name)  # Overrides are defined afresh at each parse.
        flags.FLAGS.unparse_flags()
        capsys.readouterr()
        try:
            returncode = module.main(cli.parse_flags(argv)[:1]) or 0
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            returncode = e.code if isinstance(e.code, int) else 1
        except app.UsageError as e:
            print(f'FATAL Flags parsing error: {e}', file=sys.stderr)
            returncode = 1
        except Exception:  # As an uncaught exception would end it.
            traceback.print_exc()
            returncode = 1
        out, err = capsys.readouterr()
        return CliRun(returncode, out, err)

    yield run
    flags.FLAGS.unparse_flags()
    jax.config.update('jax_enable_compilation_cache', cache_enabled)
