"""The flags that several command-line tools take (--config, --workdir), and their parsing.

Each tool (`main`, `evaluate`, `sweep`, `summary`, `benchmark`, `profiling`) defines its own flags
at import and imports these, so any tool's `main` can be imported and called in-process (the
tests do) without a flag being defined twice. A tool marks which flags it requires as it starts,
and runs as `app.run(main, flags_parser=cli.parse_flags)` (a tool that trains: `cli.run(main)`).

The --config file is loaded as every experiment file is (`config_utils.load_config`), so its
fields are held to the schema's before any override applies; an override of a tuple field is one
value, so that a field given twice takes the last, as every other field does.
"""

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, cast

import ml_collections
from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser

from vgg_flax import config_schema, config_utils, errors


class _ConfigFileParser(flags.ArgumentParser):
    """--config's value: the experiment file's config as `config_utils.load_config` checks it,
    locked so that an override cannot add a field."""

    def parse(self, argument: str) -> ml_collections.ConfigDict:
        config = config_utils.load_config(argument)
        config.lock()
        return config

    def flag_type(self) -> str:
        return 'config object'


class _TupleParser(flags.ArgumentParser):
    """A tuple field's override, e.g. --config.model.dense_features=(512,512), read as
    ml_collections reads it. Not its TupleParser: ml_collections gives a field of that parser a
    flag that joins the values of every occurrence into one tuple, so a field given twice
    would train a network that neither value describes."""

    def parse(self, argument: Any) -> tuple[Any, ...]:
        try:
            return config_schema.as_tuples(tuple_parser.TupleParser().parse(argument))
        except ValueError:
            raise ValueError(
                f'{argument!r} is not a tuple; write it as Python does, quoted for the shell, '
                "e.g. '(512,512)' or '((1,64),(1,128))'."
            ) from None

    def flag_type(self) -> str:
        return 'tuple'


CONFIG = config_flags.DEFINE_config_file(
    'config',
    None,
    'Experiment config file: a Python file with get_config() (a sweep also has '
    'get_sweep()); its fields can be overridden, e.g. --config.train.num_epochs=10.',
)
flags.FLAGS[CONFIG.name].parser = _ConfigFileParser()
config_flags.register_flag_parser_for_type(tuple, _TupleParser())

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
    after `main` ended (every file of the run closed by then) is not waited for."""
    try:
        app.run(main, flags_parser=parse_flags)
    except BaseException as e:
        if _threads_end_within(grace_seconds):
            raise
        if isinstance(e, SystemExit):
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        else:  # As Python would report it, without waiting for the threads.
            traceback.print_exception(e)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _threads_end_within(seconds: float) -> bool:
    """Whether every thread that Python's exit would wait for ends within `seconds`.

    Waits with `threading.Thread.join` itself: a subclass's own `join` (orbax's) may raise
    instead of returning at the timeout."""
    deadline = time.monotonic() + seconds
    left = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not thread.daemon
    ]
    for thread in left:
        threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in left)


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
    with one line naming it: a config file that does not load or sets a field the schema lacks
    or of another type (`config_utils.load_config`), or an override of a field the schema does
    not have (with the field it most likely meant, or its current name)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # absl's own message, as its default parser gives it.
        sys.exit(
            f'FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.'
        )
    except errors.ConfigError as e:
        sys.exit(f'error: {e}')
    except (AttributeError, KeyError):  # ml_collections found no such field to override.
        sys.exit(f'error: {_unknown_override(argv)}')


def _unknown_override(argv: list[str]) -> str:
    """Which --config.FIELD override names no config field."""
    overrides = [
        arg.split('=', 1)[0].removeprefix('--config.')
        for arg in argv
        if arg.startswith('--config.')
    ]
    field, close = config_schema.unknown_field(overrides) or (','.join(overrides), None)
    return f'--config.{field}: the config has no such field' + (
        f'; did you mean --config.{close}?' if close else '.'
    )
