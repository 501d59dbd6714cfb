"""The errors a researcher can cause and fix, each a message of one line that names the problem
and the fix; the command-line tools print it and exit with status 1 (an interrupt: 128 + its
signal).

Every module raises them from here, so that catching one never imports the module that raises
it; this module imports nothing of the package.
"""

from __future__ import annotations

import signal


class ConfigError(Exception):
    """An experiment file that does not load, or a config (a file's, a sweep point's) whose
    fields differ from the schema's. Not a ValueError, which absl's flag parsing would recast as
    its own error."""


class DataError(Exception):
    """Missing, corrupt or inconsistent data; the message names the file and the fix."""


class RunDirError(Exception):
    """The workdir cannot be used as asked; the message names the problem and the fix."""


class SaveError(RuntimeError):
    """A checkpoint could not be written (a full disk, say); `kept_step` is the last one saved."""

    def __init__(
        self,
        step: int,
        kept_step: int | None,
        reason: str,
        fix: str = 'free some disk space (or fix the cause)',
    ):
        self.kept_step = kept_step
        super().__init__(
            f'saving the checkpoint of step {step} failed ({reason}); the run stopped. '
            + (
                f'The last saved checkpoint is step {kept_step}'
                if kept_step is not None
                else 'No checkpoint is saved yet'
            )
            + f': {fix} and run the same command to resume.'
        )


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP stopped the run after it saved a checkpoint."""

    def __init__(self, signum: int, step: int):
        super().__init__(
            f'{signal.Signals(signum).name} stopped the run at step {step}, after '
            'it saved a checkpoint there; run the same command again to resume.'
        )
        self.signum = signum
