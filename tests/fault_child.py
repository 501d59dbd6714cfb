"""`python -m vgg_flax.main ARGS` with a fault injected at a chosen point, for test_faults.py.

  python tests/fault_child.py FAULT [N] -- MAIN_ARGS

FAULT is one of:
  kill_in_save N    SIGKILL the process just after the save of step N started (its writes are
                    in flight in orbax's background threads);
  sigint_in_compile Ctrl-C while the steps compile;
  sigint_twice N    Ctrl-C twice in quick succession after the N-th call of the train step.
"""

from __future__ import annotations

import os
import signal
import sys

from absl import app, flags

from vgg_flax import checkpointing, cli, main, train


def inject(fault: str, n: int) -> None:
    if fault == 'kill_in_save':
        save = checkpointing.Checkpointer.save

        def killing_save(self, step, *args, **kwargs):
            save(self, step, *args, **kwargs)
            if step == n:
                os.kill(os.getpid(), signal.SIGKILL)

        checkpointing.Checkpointer.save = killing_save
    elif fault == 'sigint_in_compile':
        compile_steps = train.compile_steps

        def interrupted_compile(*args, **kwargs):
            compiled = compile_steps(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt right here.
            return compiled

        train.compile_steps = interrupted_compile
    elif fault == 'sigint_twice':
        wait, calls = train.wait_for_previous_call, [0]

        def interrupted_wait(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGINT)  # The run's handler takes this one...
                for _ in range(1000):  # ...once Python runs it, between two bytecodes.
                    pass
                os.kill(os.getpid(), signal.SIGINT)  # This one ends the process.
            return wait(*args, **kwargs)

        train.wait_for_previous_call = interrupted_wait
    else:
        raise SystemExit(f'unknown fault {fault!r}')


if __name__ == '__main__':
    split = sys.argv.index('--')
    fault_args, main_args = sys.argv[1:split], sys.argv[split + 1:]
    inject(fault_args[0], int(fault_args[1]) if len(fault_args) > 1 else 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # As in a terminal.
    flags.mark_flags_as_required(['config', 'workdir'])
    sys.argv = ['vgg_flax.main', *main_args]  # ml_collections reads the overrides from it.
    app.run(main.main, flags_parser=cli.parse_flags)
