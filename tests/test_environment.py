"""The run record and the CPU tuning of XLA's flags."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess

import pytest

from vgg_flax import distributed, environment

from conftest import ROOT


def test_describe_records_versions_devices_and_flags(monkeypatch):
    monkeypatch.setenv('XLA_FLAGS', '--xla_dump_to=/tmp/x')
    record = environment.describe()
    assert record['packages']['jax'] == importlib.metadata.version('jax')
    assert record['backend'] == 'cpu' and record['num_devices'] >= 1
    assert record['xla_flags'] == '--xla_dump_to=/tmp/x'


def test_cpu_tuning_adds_its_flags_once_and_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(environment, 'CPU_FLAGS_JAXLIB', (importlib.metadata.version('jaxlib'),))
    monkeypatch.setenv('XLA_FLAGS', '--xla_dump_to=/tmp/x')
    assert environment.tune_cpu_backend()
    flags = environment.CPU_XLA_FLAGS
    assert os.environ['XLA_FLAGS'] == ' '.join(('--xla_dump_to=/tmp/x', *flags))
    environment.tune_cpu_backend()
    assert os.environ['XLA_FLAGS'] == ' '.join(('--xla_dump_to=/tmp/x', *flags))
    monkeypatch.setenv('XLA_FLAGS', '')
    monkeypatch.setenv('VGG_FLAX_CPU_TUNING', '0')
    assert not environment.tune_cpu_backend() and os.environ['XLA_FLAGS'] == ''


def test_cpu_tuning_skips_unverified_jaxlib_and_accelerator_installs(monkeypatch):
    monkeypatch.setenv('XLA_FLAGS', '')
    monkeypatch.setattr(environment, 'CPU_FLAGS_JAXLIB', ('0.0.',))
    assert not environment.tune_cpu_backend()
    monkeypatch.setattr(environment, 'CPU_FLAGS_JAXLIB', (importlib.metadata.version('jaxlib'),))
    monkeypatch.setattr(distributed, 'ACCELERATOR_PLUGINS', ('json',))  # Any importable name.
    assert not environment.tune_cpu_backend()
    assert os.environ['XLA_FLAGS'] == ''


def test_describe_records_the_codes_git_commit(tmp_path, monkeypatch):
    head = subprocess.run(
        ['git', '-C', str(ROOT), 'rev-parse', 'HEAD'], capture_output=True, text=True
    )
    if head.returncode:
        pytest.skip('the tests do not run from a git checkout')
    assert environment.describe()['git']['commit'] == head.stdout.strip()
    monkeypatch.setattr(environment, '__file__', str(tmp_path / 'environment.py'))
    assert environment.code_version() is None  # Installed from a wheel: no checkout to name.
