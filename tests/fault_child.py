"""`python -m vgg_flax.main ARGS` with a fault injected at a chosen point, for test_faults.py.

  python tests/fault_child.py FAULT [N] -- MAIN_ARGS

FAULT is one of:
  kill_in_save N    SIGKILL the process just after the save of step N started (its writes are
                    in flight in orbax's background threads);
  sigint_in_compile Ctrl-C while the steps compile;
  sigint_twice N    Ctrl-C twice in quick succession after the N-th call of the train step;
  unwritable_log N  after the N-th call, the step log becomes a file no one can write (a
                    directory in its place: root can write a read-only file);
  blocked_thread    leave a thread that never ends, as a failed orbax save can;
  checkpoints_file N  just before the save of step N, `checkpoints/` is moved to
                    `checkpoints.moved` and a file takes its place (root can write to a
                    read-only directory: a file there fails the save as that would).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from absl import flags

from vgg_flax import checkpointing, cli, main, metric_writers, train, train_steps


def after_call(n: int, action: Callable[[], None]) -> None:
    """Runs `action` once the train step's n-th call has been dispatched."""
    wait, calls = train.wait_for_previous_call, [0]

    def wait_then_act(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            action()
        return wait(*args, **kwargs)

    train.wait_for_previous_call = wait_then_act


def inject(fault: str, n: int) -> None:
    if fault == 'kill_in_save':
        save = checkpointing.Checkpointer.save

        def killing_save(self, step, *args, **kwargs):
            save(self, step, *args, **kwargs)
            if step == n:
                os.kill(os.getpid(), signal.SIGKILL)

        checkpointing.Checkpointer.save = killing_save  # type: ignore[method-assign]
    elif fault == 'sigint_in_compile':
        compile_steps = train_steps.compile_steps

        def interrupted_compile(*args, **kwargs):
            compiled = compile_steps(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt right here.
            return compiled

        train_steps.compile_steps = interrupted_compile
    elif fault == 'sigint_twice':

        def sigint_twice() -> None:
            os.kill(os.getpid(), signal.SIGINT)  # The run's handler takes this one...
            for _ in range(1000):  # ...once Python runs it, between two bytecodes.
                pass
            os.kill(os.getpid(), signal.SIGINT)  # This one ends the process.

        after_call(n, sigint_twice)
    elif fault == 'unwritable_log':

        def unwritable_log() -> None:
            steps_log = os.path.join(flags.FLAGS.workdir, metric_writers.STEPS_FILE)
            os.replace(steps_log, steps_log + '.moved')
            os.mkdir(steps_log)

        after_call(n, unwritable_log)
    elif fault == 'checkpoints_file':
        save = checkpointing.Checkpointer.save

        def save_after_moving(self, step, *args, **kwargs):
            if step == n:
                os.replace(self.directory, self.directory + '.moved')
                open(self.directory, 'w').close()
            save(self, step, *args, **kwargs)

        checkpointing.Checkpointer.save = save_after_moving  # type: ignore[method-assign]
    elif fault == 'blocked_thread':
        threading.Thread(target=threading.Event().wait).start()
    else:
        raise SystemExit(f'unknown fault {fault!r}')


if __name__ == '__main__':
    split = sys.argv.index('--')
    fault_args, main_args = sys.argv[1:split], sys.argv[split + 1 :]
    inject(fault_args[0], int(fault_args[1]) if len(fault_args) > 1 else 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # As in a terminal.
    flags.mark_flags_as_required(['config', 'workdir'])
    sys.argv = ['vgg_flax.main', *main_args]  # ml_collections reads the overrides from it.
    cli.run(main.main)
