"""The flags that several command-line tools take (--config, --workdir), and their parsing.

Each tool (`main`, `evaluate`, `sweep`, `summary`, `benchmark`, `profiling`) defines its own flags
at import and imports these, so any tool's `main` can be imported and called in-process (the
tests do) without a flag being defined twice. A tool marks which flags it requires as it starts,
and runs as `app.run(main, flags_parser=cli.parse_flags)` (a tool that trains: `cli.run(main)`).
"""

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import cast

from absl import app, flags
from ml_collections import config_flags

from vgg_flax import config_utils

CONFIG = config_flags.DEFINE_config_file(
    'config',
    None,
    'Experiment config file: a Python file with get_config() (a sweep also has '
    'get_sweep()); its fields can be overridden, e.g. --config.train.num_epochs=10.',
    lock_config=True,
)
# Required wherever a CLI reads it (flags.mark_flags_as_required), so a str once parsed.
WORKDIR = cast(
    'flags.FlagHolder[str]',
    flags.DEFINE_string(
        'workdir',
        None,
        'Run directory: config, checkpoints, metrics, plots (a sweep: one subdirectory per point).',
    ),
)


def run(main: Callable[[list[str]], int | None], grace_seconds: float = 5.0) -> None:
    """`app.run(main)` for a tool that trains. A checkpoint save that failed in orbax's
    background (a read-only directory) can leave a thread waiting minutes for a signal that
    never comes, which Python's exit would wait for: a thread still running `grace_seconds`
    after `main` returned (every file of the run closed by then) is not waited for."""
    try:
        app.run(main, flags_parser=parse_flags)
    except SystemExit as e:
        left = [
            thread
            for thread in threading.enumerate()
            if thread is not threading.main_thread() and not thread.daemon
        ]
        deadline = time.monotonic() + grace_seconds
        for thread in left:
            thread.join(max(0.0, deadline - time.monotonic()))
        if not any(thread.is_alive() for thread in left):
            raise
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(e.code if isinstance(e.code, int) else 0 if e.code is None else 1)


def interrupted_while_starting() -> int:
    """Says in one line that Ctrl-C came before a run caught signals (while it loaded data or
    compiled, before its first step), and returns the exit status of an interrupt."""
    print(
        f'SIGINT stopped the run while it started (loading data or compiling), before it '
        f'trained a step; what {WORKDIR.value} held is intact: run the same command again to '
        'start or resume.',
        file=sys.stderr,
    )
    return 128 + signal.SIGINT


def parse_flags(argv: list[str]) -> list[str]:
    """Parses the command line as absl does; a mistake in --config ends the process (status 1)
    with one line naming it: a config file that is missing or does not load, or an override of
    a field the config does not have (with the field it most likely meant)."""
    try:
        remaining = flags.FLAGS(argv)
        if flags.FLAGS['config'].present:
            CONFIG.value.keys()  # The file loads lazily: a missing one fails here, not in main.
        return remaining
    except flags.Error as e:  # absl's own message, as its default parser gives it.
        sys.exit(
            f'FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.'
        )
    except (AttributeError, KeyError):  # ml_collections found no such field to override.
        sys.exit(f'error: {_unknown_override(argv)}')
    except Exception as e:  # Whatever the config file raised.
        path = _config_path(argv)
        if not os.path.isfile(path):
            sys.exit(
                f'error: the config file {path} does not exist; pass the path of an '
                'experiment config, e.g. --config=experiments/quick.py.'
            )
        lines = str(e).strip().splitlines()
        reason = lines[-1].strip() if lines else type(e).__name__
        sys.exit(f'error: the config file {path} does not load: {reason}')


def _config_path(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith('--config='):
            return arg.split('=', 1)[1]
        if arg == '--config' and i + 1 < len(argv):
            return argv[i + 1]
    return '?'


def _unknown_override(argv: list[str]) -> str:
    """Which --config.FIELD override names no field of the config file."""
    module = config_utils.load_module(_config_path(argv))
    overrides = [
        arg.split('=', 1)[0].removeprefix('--config.')
        for arg in argv
        if arg.startswith('--config.')
    ]
    field, close = config_utils.unknown_field(module.get_config(), overrides) or (
        ','.join(overrides),
        None,
    )
    return f'--config.{field}: the config has no such field' + (
        f'; did you mean --config.{close}?' if close else '.'
    )
