"""The flags that several command-line tools take: --config and --workdir.

Each tool (`main`, `evaluate`, `sweep`, `summary`, `benchmark`, `profiling`) defines its own flags
at import and imports these, so any tool's `main` can be imported and called in-process (the
tests do) without a flag being defined twice. A tool marks which flags it requires as it starts.
"""

from absl import flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file: a Python file with get_config() (a sweep also has '
    'get_sweep()); its fields can be overridden, e.g. --config.train.num_epochs=10.',
    lock_config=True)
WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run directory: config, checkpoints, metrics, plots (a sweep: one '
    'subdirectory per point).')
