"""The training loop: `train_and_evaluate` trains a config in a workdir, and resumes it.

It sets up (every check that can refuse the run, then the data, the state restored from the
run's checkpoint and the compiled steps of `train_steps`), then trains epoch by epoch:
`train_epoch` dispatches the compiled step, logs and polls for a stop; `evaluate_sets` evaluates
the epoch; `record_epoch` writes its record, and a checkpoint follows when one is due
(`due_every`). SIGINT, SIGTERM or SIGHUP saves a checkpoint and stops
(`StopSignals`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm import tqdm

from vgg_flax import (
    checkpointing,
    config_schema,
    device_data,
    distributed,
    errors,
    metric_writers,
    population,
    records,
    run_dir,
    train_state,
    train_steps,
    validation,
)
from vgg_flax.device_data import EvalData, TrainData
from vgg_flax.train_state import TrainState

Record = dict[str, Any]


class StopSignals:
    """Turns SIGINT, SIGTERM and SIGHUP into a stop that the loop polls, so it can save and exit.

    In one process, handlers of its own set a flag; a second SIGINT or SIGTERM ends the
    process at once, as kill does (Ctrl-C twice), even inside a long compiled call, which Python's
    own KeyboardInterrupt would wait for; the run then resumes from its last checkpoint, which a
    kill leaves intact. SIGHUP (a closed terminal or SSH session) stops as SIGTERM does; a hangup
    may send it twice, so another one is ignored, and what the run prints after it goes to
    /dev/null instead of the terminal that is gone (a write there would fail and stop the run
    before its save). In a multi-host job a scheduler's SIGTERM reaches
    the processes at different steps, so JAX's preemption service (which catches SIGTERM there
    from `jax.distributed.initialize` on) picks the poll at which all of them stop together; a
    SIGHUP is passed on to it as a SIGTERM.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._multi_process = jax.process_count() > 1
        self._terminals: list[int] = []  # stdout and stderr where they are a terminal.

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        if self._multi_process:
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _as_sigterm)
            return self
        self._terminals = [fd for fd in (1, 2) if os.isatty(fd)]
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.signum = signum
        name = signal.Signals(signum).name
        hangup = signum == signal.SIGHUP
        signal.signal(signum, signal.SIG_IGN if hangup else signal.SIG_DFL)
        with contextlib.suppress(OSError):  # The terminal may be gone already.
            print(
                f'{name}: saving a checkpoint after the current step, then stopping'
                + ('.' if hangup else f' ({name} again stops at once, without saving).'),
                file=sys.stderr,
                flush=True,
            )
        if hangup:
            _detach(self._terminals)

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def stopped(self) -> bool:
        """Whether a stop came, as of the last `should_stop`."""
        return self.signum is not None

    def should_stop(self, step: int, num_steps: int = 1) -> bool:
        """Whether to save and stop at training step `step`, reached by a call of `num_steps`.

        Every process must poll at the same points, and at every step: the preemption service
        stops them all at the step after the furthest one had reached (as orbax's saves expect).
        So after a call that ran several steps each of them is polled, and a stop that falls
        among them takes effect at `step`, on every process alike.
        """
        if self._multi_process and any(
            multihost_utils.reached_preemption_sync_point(polled)
            for polled in range(step - num_steps + 1, step + 1)
        ):
            self.signum = signal.SIGTERM
        return self.signum is not None


def _as_sigterm(signum: int, frame: Any) -> None:
    del signum, frame
    os.kill(os.getpid(), signal.SIGTERM)


def _detach(terminals: list[int]) -> None:
    """Points the file descriptors `terminals` at /dev/null."""
    if not terminals:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in terminals:
        os.dup2(devnull, fd)
    os.close(devnull)


def due_every(period: int, *, at: int, advanced_by: int = 1, last: int | None = None) -> bool:
    """Whether an action done every `period` counts (steps, epochs) is due at count `at`.

    The count has just advanced by `advanced_by` (a call of `train.steps_per_call` steps passes
    the multiples in between); at the `last` count an action is always due.
    """
    return at // period > (at - advanced_by) // period or at == last


def evaluation_due(config: ml_collections.ConfigDict, epoch: int) -> bool:
    """Whether the evaluation sets are evaluated after `epoch`."""
    return due_every(config.eval.every_epochs, at=epoch, last=config.train.num_epochs)


@dataclasses.dataclass(frozen=True)
class Loop:
    """What every epoch of a run reads, fixed once the run is set up."""

    config: ml_collections.ConfigDict
    compiled: train_steps.CompiledSteps
    train_data: TrainData  # Its batches are a placeholder: `train_epoch` draws each epoch's.
    eval_sets: dict[str, EvalData]
    epoch_batches: Callable[[int], jax.Array]  # The shuffle of epoch N (from 1).
    steps_per_epoch: int
    learning_rate_fn: optax.Schedule
    checkpointer: checkpointing.Checkpointer
    log: metric_writers.RunLog
    bar: Any  # tqdm's progress bar of the run's steps.
    signals: StopSignals
    chief: bool

    @property
    def num_steps(self) -> int:  # Of the whole run.
        return self.config.train.num_epochs * self.steps_per_epoch

    @property
    def examples_per_step(self) -> int:  # Of all members together.
        return self.config.train.batch_size * self.config.population_size

    def train_record(
        self, sums: train_state.Sums, step: int, since: tuple[int, float], now: float
    ) -> Record:
        """`records.train_record` of this run: the metrics at `step`, the rate since `since`."""
        return records.train_record(
            sums,
            step,
            self.steps_per_epoch,
            since,
            now,
            self.examples_per_step,
            self.learning_rate_fn,
        )


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)]))


def check_finite(state: TrainState, loop: Loop, test_loss: float = 0.0) -> None:
    """Raises NonFiniteLossError, naming the checkpoint kept, if training diverged: a step's
    loss, the parameters or the test loss are not finite."""
    nonfinite_steps = int(np.sum(jax.device_get(state.nonfinite_steps)))
    loss, _ = train_state.mean_metrics(state.sums)
    finite_params = bool(all_finite(state.params))
    if not nonfinite_steps and finite_params and np.all(np.isfinite(loss + test_loss)):
        return
    loop.checkpointer.wait()
    kept = loop.checkpointer.latest_step()
    what = (
        f'the training loss became non-finite in {nonfinite_steps} step'
        f'{"s" if nonfinite_steps != 1 else ""}'
        if nonfinite_steps
        else 'the parameters became non-finite'
        if not finite_params
        else f'the test loss became {test_loss}'
    )
    step = int(state.step)
    raise errors.NonFiniteLossError(
        f'{what} in epoch {(step - 1) // loop.steps_per_epoch + 1} (by step {step}); '
        + (
            f'the last good checkpoint (step {kept}) is kept in {loop.checkpointer.directory}'
            if kept is not None
            else 'no checkpoint had been saved yet'
        )
        + '. Lower config.train.learning_rate, add warmup (config.train.warmup_epochs) or check '
        'the data.'
    )


def wait_for_previous_call(previous: jax.Array | None, state: TrainState) -> jax.Array:
    """Blocks until the call before the one that returned `state` has finished; returns what the
    next call waits on (a copy of the step counter, which no call donates).

    The host so waits for the previous call while the device runs this one: never more than two
    calls are queued, so a stop waits for those two, not dozens."""
    if previous is not None:
        previous.block_until_ready()
    return jnp.copy(state.step)


def log_step(
    loop: Loop, state: TrainState, step: int, since: tuple[int, float], mid_epoch: bool
) -> tuple[int, float]:
    """Logs the epoch's running metrics at `step` (`state`'s), with the rate since `since`, once
    they are known to be finite; returns the (step, time) logged. Without a progress bar, a
    `mid_epoch` record is also a line of the log."""
    now = time.perf_counter()
    record = loop.train_record(state.sums, step, since, now)
    check_finite(state, loop)
    loop.bar.set_postfix(loss=f'{record["train_loss"]:.4f}', acc=f'{record["train_accuracy"]:.3f}')
    loop.log.write_step(record, print_line=loop.bar.disable and mid_epoch)
    return step, now


def train_epoch(loop: Loop, state: TrainState, epoch: int) -> tuple[TrainState, Record | None]:
    """Trains `state` to the end of `epoch` (from wherever in it a resumed state is): the state,
    with the epoch's sums reset, and the epoch's train record, or None if a stop came first."""
    data = dataclasses.replace(loop.train_data, batches=loop.epoch_batches(epoch))
    per_epoch, per_call = loop.steps_per_epoch, loop.config.train.steps_per_call
    log_every = loop.config.train.log_every_steps
    step, epoch_start, end = int(state.step), (epoch - 1) * per_epoch, epoch * per_epoch
    epoch_begin = logged = (step, time.perf_counter())
    running = None  # What the next call waits on.
    while step < end:
        num_steps = per_call if step + per_call <= end else 1
        state = loop.compiled.train[num_steps](state, data)
        running = wait_for_previous_call(running, state)
        step += num_steps
        loop.bar.update(num_steps)
        if due_every(log_every, at=step - epoch_start, advanced_by=num_steps, last=per_epoch):
            logged = log_step(loop, state, step, since=logged, mid_epoch=step < end)
        # Every call is polled (every step, in a multi-host job); a stop at an epoch's last call
        # acts as its evaluation starts. A failed save stops the run here.
        stopped = loop.signals.should_stop(step, num_steps)
        loop.checkpointer.check()
        if stopped and step < end:
            return state, None
    record = loop.train_record(state.sums, step, epoch_begin, logged[1])
    record.update(epoch=epoch, train_seconds=logged[1] - epoch_begin[1])
    return state.replace(sums=train_state.zero_sums_like(state)), record


def evaluate_sets(loop: Loop, state: TrainState) -> Record | None:
    """Loss and accuracy of `state` on each evaluation set ('val_loss', 'test_accuracy', ...: a
    record, with each member's for a population) and the seconds they took; None if a stop came
    first."""
    start = time.perf_counter()
    metrics = {}
    for name, data in loop.eval_sets.items():
        sums = train_state.zero_sums_like(state)
        for batch in tqdm(
            range(data.batches.shape[0]),
            desc=f'eval {name}',
            leave=False,
            disable=None if loop.chief else True,
        ):
            if loop.signals.should_stop(int(state.step)):
                return None
            sums = loop.compiled.eval[name](state, sums, data, batch)
        metrics[f'{name}_loss'], metrics[f'{name}_accuracy'] = train_state.mean_metrics(sums)
    return records.to_record({**metrics, 'eval_seconds': time.perf_counter() - start})


def announce_resume(workdir: str, step: int, steps_per_epoch: int) -> None:
    """Says where the run resumes, and what a change of device count since means."""
    if not step:
        print(f'{workdir} has this config but no checkpoint yet; starting from scratch.')
        return
    print(
        f'Resuming {workdir} from the checkpoint at step {step} (epoch '
        f'{step // steps_per_epoch}, batch {step % steps_per_epoch}).',
        flush=True,
    )
    last, now = run_dir.last_num_devices(workdir), jax.device_count()
    if last not in (None, now):
        print(
            f'The run last ran on {last} devices, now on {now}: the same batches, keys and '
            'steps, each batch split differently over the devices, so its metrics match an '
            'uninterrupted run to float rounding, not bit for bit.',
            flush=True,
        )


def restore(
    checkpointer: checkpointing.Checkpointer,
    like: TrainState,
    workdir: str,
    steps_per_epoch: int,
    num_epochs: int,
    resuming: bool,
) -> tuple[TrainState, list[Record], Record | None]:
    """The run's latest state, its history and the train record of an epoch that a stop left
    unevaluated (`like`, none and None for a new run), saying where it resumes; a checkpoint
    beyond `num_epochs` is refused: the run would report a longer one as this."""
    state, history = checkpointer.restore_latest(like)
    step = int(state.step)
    if step > num_epochs * steps_per_epoch:
        raise errors.RunDirError(
            f'{workdir} has trained {step // steps_per_epoch} epochs already, more than '
            f'config.train.num_epochs={num_epochs}; ask for at least that many to train on, '
            'or pass another --workdir (python -m vgg_flax.evaluate --step=N evaluates any '
            'checkpoint it keeps).'
        )
    if distributed.is_chief() and (step or resuming):
        announce_resume(workdir, step, steps_per_epoch)
    # A stop that came as an epoch was evaluated saved the epoch's train record alone, without
    # the 'epoch_seconds' that `record_epoch` adds to every record (an epoch recorded without an
    # evaluation, `eval.every_epochs`, has it): the loop evaluates that epoch first.
    if history and 'epoch_seconds' not in history[-1]:
        return state, history[:-1], history[-1]
    return state, history, None


def set_up(
    config: ml_collections.ConfigDict,
    workdir: str,
    mesh: jax.sharding.Mesh,
    resuming: bool,
    stack: contextlib.ExitStack,
) -> tuple[Loop, TrainState, list[Record], Record | None]:
    """The loop, and what `restore` gives: the state, its history and the train record of an
    epoch not yet evaluated. Every check that can refuse the run (the data, the checkpoint, the
    compilation) comes before the files that make the workdir this run's are written."""
    chief, num_epochs = distributed.is_chief(), config.train.num_epochs
    init_key, dropout_key, shuffle_key = population.run_keys(config)
    train_data, eval_sets = device_data.load_data(config, mesh, dropout_key)
    fingerprints = device_data.data_fingerprints(train_data, eval_sets)
    run_dir.check_data(workdir, fingerprints)
    per_epoch = train_data.batches.shape[-2]
    state = train_state.create_train_state(
        config, init_key, per_epoch, train_data.images.shape[-1], mesh
    )
    checkpointer = stack.enter_context(
        checkpointing.Checkpointer(
            workdir,
            keep=config.train.keep_checkpoints,
            run_files={
                run_dir.CONFIG_FILE: config_schema.to_plain(config),
                run_dir.DATA_FILE: fingerprints,
            },
        )
    )
    state, history, trained = restore(checkpointer, state, workdir, per_epoch, num_epochs, resuming)
    step = int(state.step)
    compiled = train_steps.compile_steps(
        state, train_data, eval_sets, train_steps.step_options(config), config.train.steps_per_call
    )
    if chief:
        run_dir.write_run_files(workdir, config, fingerprints)
    loop = Loop(
        config,
        compiled,
        train_data,
        eval_sets,
        device_data.epoch_batches_fn(config, mesh, shuffle_key, train_data.images.shape[0]),
        per_epoch,
        train_state.create_learning_rate_fn(config.train, per_epoch),
        checkpointer,
        log=stack.enter_context(
            metric_writers.RunLog(workdir, num_epochs, history, step, active=chief)
        ),
        bar=stack.enter_context(
            tqdm(
                total=num_epochs * per_epoch,
                initial=step,
                unit='step',
                disable=None if chief else True,
            )
        ),
        signals=stack.enter_context(StopSignals()),
        chief=chief,
    )
    return loop, state, history, trained


@contextlib.contextmanager
def out_of_memory_stops_the_run() -> Iterator[None]:
    """Turns XLA's failure to allocate (a step that needs more than the process may use: the
    devices' memory, `ulimit -v`, a container's limit) into a ValueError of one line naming the
    fix, which `validation.check_fits_memory`'s lower bound could not foresee."""
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        lines = str(e).strip().splitlines()
        if not lines or not ('Out of memory' in lines[0] or 'RESOURCE_EXHAUSTED' in lines[0]):
            raise
        raise ValueError(
            f'a step ran out of memory ({lines[0]}); lower config.data.image_size or '
            'config.train.batch_size (in another --workdir), or let the process use more memory '
            '(ulimit -v, the limit of its container or job) and run the same command to resume.'
        ) from None


def record_epoch(
    loop: Loop, state: TrainState, history: list[Record], trained: Record, evaluation: Record
) -> None:
    """Appends the epoch's record, its training's and its evaluation's (none where it was not
    due), to `history` and writes it, once the test loss is known to be finite."""
    check_finite(state, loop, evaluation.get('test_loss', 0.0))
    history.append(
        {
            **records.merge_records(trained, evaluation),
            'epoch_seconds': trained['train_seconds'] + evaluation.get('eval_seconds', 0.0),
        }
    )
    loop.log.write_epoch(history)


def save_and_stop(
    loop: Loop, state: TrainState, history: list[Record], trained: Record | None
) -> NoReturn:
    """Saves a checkpoint (with the train record of an epoch not yet evaluated, to evaluate on
    resuming) and raises TrainingInterrupted."""
    step = int(state.step)
    check_finite(state, loop)
    loop.checkpointer.save(step, state, history + ([trained] if trained else []))
    raise errors.TrainingInterrupted(loop.signals.signum or signal.SIGTERM, step)


def finish(loop: Loop, state: TrainState, history: list[Record], workdir: str) -> Record:
    """The results of the finished run (`records.summarize_run`), written to
    `workdir/results.json` once its last checkpoint is on disk: a run is finished only then."""
    loop.checkpointer.wait()
    results = records.summarize_run(
        history,
        num_params=train_state.count_params(state.params) // loop.config.population_size,
        train_flops_per_step=loop.compiled.train_flops_per_step,
        compile_seconds=loop.compiled.seconds,
        examples_per_step=loop.examples_per_step,
    )
    if loop.chief:
        with run_dir.stops_the_run_if_a_write_fails():
            run_dir.write_json_atomic(os.path.join(workdir, run_dir.RESULTS_FILE), results)
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Record:
    """Trains and evaluates `config` in `workdir`, resuming from its last checkpoint.

    Runs data-parallel over every device (of every process); returns the final results, also
    written to `workdir/results.json`. A run that finished already is left as it is.
    """
    validation.validate_config(config)
    mesh = distributed.create_mesh()
    device_data.check_fits_devices(config, mesh)
    num_epochs = config.train.num_epochs
    with contextlib.ExitStack() as stack:
        stack.enter_context(out_of_memory_stops_the_run())
        stack.enter_context(run_dir.hold_workdir(workdir, active=distributed.is_chief()))
        if distributed.is_chief():
            checkpointing.restore_run_files(workdir)
        resuming = run_dir.check_workdir(workdir, config)
        if finished := run_dir.finished_results(workdir, num_epochs):
            print(f'{workdir} has finished its {num_epochs} epochs already; nothing to do.')
            return finished
        loop, state, history, trained = set_up(config, workdir, mesh, resuming, stack)

        # A resumed run whose last epoch a stop left unevaluated (`trained`) evaluates it first.
        first_epoch = int(state.step) // loop.steps_per_epoch + (trained is None)
        for epoch in range(first_epoch, num_epochs + 1):
            if trained is None:
                state, trained = train_epoch(loop, state, epoch)
                if trained is None:  # A stop came within the epoch.
                    break
            evaluation = evaluate_sets(loop, state) if evaluation_due(config, epoch) else {}
            if evaluation is None:  # A stop came as the epoch was evaluated.
                break
            record_epoch(loop, state, history, trained, evaluation)
            trained = None
            if due_every(config.train.checkpoint_every_epochs, at=epoch, last=num_epochs):
                loop.checkpointer.save(int(state.step), state, history)
            if loop.signals.should_stop(int(state.step)):
                break

        # A stop cut the run short unless it came once the last epoch was evaluated.
        if loop.signals.stopped and (int(state.step) < loop.num_steps or trained):
            save_and_stop(loop, state, history, trained)
        return finish(loop, state, history, workdir)
