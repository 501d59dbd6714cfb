"""Experiment files: each file in `experiments/` is plain Python whose `get_config()` starts from
`config_schema.default_config()`, or from another experiment's config (`experiment_config`), and
changes what it needs.

Every experiment file is loaded by `load_config`, which holds its config to the schema's fields and
types (`config_schema.conformed`), and says in one line naming the file whatever way it fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import types
from collections.abc import Iterator

import ml_collections

from vgg_flax import config_schema, errors


def load_module(path: str | os.PathLike) -> types.ModuleType:
    """The Python file at `path` (an experiment file), imported under its file's stem."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    if spec is None or spec.loader is None:
        raise ValueError(f'{path} is not a Python file that can be imported.')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def file_errors(path: str | os.PathLike) -> Iterator[None]:
    """Whatever the experiment file at `path` raises as it loads or runs, as a ConfigError
    naming the file."""
    try:
        yield
    except errors.ConfigError:  # Of this file, or of the experiment it starts from.
        raise
    except Exception as e:
        lines = str(e).strip().splitlines()
        reason = lines[-1].strip() if lines else type(e).__name__
        raise errors.ConfigError(f'the config file {path} does not load: {reason}') from e


def load_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """`get_config()` of the experiment file at `path`, `config_schema.conformed`: every way in
    which the file fails is a ConfigError naming it."""
    if not os.path.isfile(path):
        state = 'is a directory' if os.path.isdir(path) else 'does not exist'
        raise errors.ConfigError(
            f'the config file {path} {state}; pass the path of an experiment config, e.g. '
            '--config=experiments/quick.py.'
        )
    with file_errors(path):
        get_config = getattr(load_module(path), 'get_config', None)
        if not callable(get_config):
            raise errors.ConfigError(
                f'the config file {path} has no get_config(); define one that returns the '
                "experiment's config, as experiments/quick.py does."
            )
        config = get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        returned = 'None' if config is None else f'a {type(config).__name__}'
        raise errors.ConfigError(
            f'{path}: get_config() returned {returned}, not a ConfigDict; start from '
            'config_schema.default_config() and return it.'
        )
    return config_schema.conformed(config, str(path))


def experiment_config(beside: str, name: str) -> ml_collections.ConfigDict:
    """`get_config()` of the experiment file `name`.py in the directory of the file `beside`:
    a variant of an experiment starts from it and states only what differs."""
    return load_config(os.path.join(os.path.dirname(os.path.abspath(beside)), f'{name}.py'))
