"""Training and evaluation: the train state, the compiled steps and the epoch loop.

`train_step` gathers its batch from the on-device dataset by the step number, preprocesses it,
runs forward and backward and updates the parameters and the epoch's running sums, all in one
compiled function; the host only dispatches it. `train_and_evaluate` is the resumable loop.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.experimental import multihost_utils
from tqdm import tqdm

from vgg_flax import (checkpointing, config_utils, distributed, environment, input_pipeline,
                      metric_writers, models)

LR_SCHEDULES = ('constant', 'cosine', 'step')
Sums = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    batch_stats: Any


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after it saved a checkpoint."""

    def __init__(self, signum: int, step: int):
        super().__init__(f'{signal.Signals(signum).name} stopped the run at step {step}, after '
                         'it saved a checkpoint there; run the same command again to resume.')
        self.signum = signum


def validate_train_config(train_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the field and the allowed values for a bad `config.train`."""
    for field in ('batch_size', 'eval_batch_size', 'num_epochs', 'checkpoint_every_epochs',
                  'keep_checkpoints', 'log_every_steps', 'steps_per_call'):
        config_utils.check_positive_int(f'train.{field}', train_config[field])
    for field in ('learning_rate', 'momentum', 'weight_decay', 'lr_decay_factor'):
        value = train_config[field]
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f'config.train.{field}={value!r} must be a finite number >= 0.')
    if train_config.learning_rate <= 0:
        raise ValueError(f'config.train.learning_rate={train_config.learning_rate!r} must be '
                         '> 0.')
    config_utils.check_choice('train.lr_schedule', train_config.lr_schedule, LR_SCHEDULES)
    if not isinstance(train_config.warmup_epochs, int) or train_config.warmup_epochs < 0:
        raise ValueError(f'config.train.warmup_epochs={train_config.warmup_epochs!r} must be an '
                         'integer >= 0.')
    for epoch in train_config.lr_decay_epochs:
        config_utils.check_positive_int('train.lr_decay_epochs[*]', epoch)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every section, so a bad value fails before data is read or code compiled."""
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise ValueError(f'config.seed={config.seed!r} must be an integer.')
    models.validate_model_config(config.model)
    input_pipeline.validate_data_config(config.data, arch=config.model.arch)
    validate_train_config(config.train)


def create_learning_rate_fn(train_config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.Schedule:
    """The configured schedule, with an optional linear warmup, as a function of the step."""
    lr = train_config.learning_rate
    warmup = train_config.warmup_epochs * steps_per_epoch
    total = train_config.num_epochs * steps_per_epoch
    if train_config.lr_schedule == 'cosine':
        main = optax.cosine_decay_schedule(lr, decay_steps=max(total - warmup, 1))
    elif train_config.lr_schedule == 'step':
        main = optax.piecewise_constant_schedule(lr, {
            epoch * steps_per_epoch - warmup: train_config.lr_decay_factor
            for epoch in train_config.lr_decay_epochs})
    else:
        main = optax.constant_schedule(lr)
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def create_optimizer(train_config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
    """SGD (optionally with momentum) and L2 weight decay on kernels only."""
    sgd = optax.sgd(learning_rate_fn, momentum=train_config.momentum or None,
                    nesterov=train_config.nesterov)
    if not train_config.weight_decay:
        return sgd

    def kernels_only(params: Any) -> Any:
        return jax.tree.map(lambda p: p.ndim > 1, params)

    return optax.chain(optax.add_decayed_weights(train_config.weight_decay, mask=kernels_only),
                       sgd)


def create_train_state(config: ml_collections.ConfigDict, key: jax.Array,
                       tx: optax.GradientTransformation, num_channels: int = 1) -> TrainState:
    """Initialises the model for `config.data.image_size` images with `num_channels`."""
    model = models.create_model(config.model)
    size = config.data.image_size
    dummy = jnp.zeros((1, size, size, num_channels), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(key, dummy)
    state = TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                              batch_stats=variables.get('batch_stats', {}))
    # An int32 array, not Python's 0, so fresh and restored states compile to the same step.
    return state.replace(step=jnp.zeros((), jnp.int32))


def create_replicated_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                            key: jax.Array, mesh: jax.sharding.Mesh,
                            num_channels: int = 1) -> tuple[TrainState, Sums]:
    """The initial train state and zero epoch sums, replicated over every device of `mesh`."""
    replicated = distributed.replicated(mesh)
    state = jax.jit(functools.partial(create_train_state, config, tx=tx,
                                      num_channels=num_channels),
                    out_shardings=replicated)(key)
    return state, jax.device_put(zero_sums(), replicated)


def load_on_devices(config: ml_collections.ConfigDict, split: str,
                    mesh: jax.sharding.Mesh) -> tuple[jax.Array, jax.Array]:
    """Images and labels of `split` on every device; each process reads only its share."""
    share = input_pipeline.load_split(config.data, split, config.model.num_classes,
                                      shard=(jax.process_index(), jax.process_count()))
    return (distributed.replicate_from_processes(share.images, mesh),
            distributed.replicate_from_processes(share.labels, mesh))


def batch_maker(mesh: jax.sharding.Mesh) -> Any:
    """`input_pipeline.epoch_batches`, compiled, each batch split over the devices of `mesh`."""
    return jax.jit(input_pipeline.epoch_batches, static_argnums=(2, 3),
                   out_shardings=distributed.split_along(mesh, 1))


def count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def zero_sums() -> Sums:
    """Running sums of an epoch: summed loss, correct predictions and examples."""
    return {'loss_sum': jnp.zeros((), jnp.float32), 'correct': jnp.zeros((), jnp.int32),
            'count': jnp.zeros((), jnp.int32)}


def _add_to_sums(sums: Sums, losses: jax.Array, logits: jax.Array, labels: jax.Array,
                 mask: jax.Array) -> Sums:
    correct = (jnp.argmax(logits, axis=-1) == labels) & mask
    return {'loss_sum': sums['loss_sum'] + jnp.sum(jnp.where(mask, losses, 0.0)),
            'correct': sums['correct'] + jnp.sum(correct, dtype=jnp.int32),
            'count': sums['count'] + jnp.sum(mask, dtype=jnp.int32)}


def train_step(state: TrainState, sums: Sums, images: jax.Array, labels: jax.Array,
               batches: jax.Array, dropout_key: jax.Array, *,
               image_size: int) -> tuple[TrainState, Sums]:
    """One SGD step on batch `state.step % len(batches)` of the epoch's `batches`."""
    indices = batches[state.step % batches.shape[0]]
    x = input_pipeline.preprocess(images[indices], image_size)
    y = labels[indices]
    key = jax.random.fold_in(dropout_key, state.step)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
            rngs={'dropout': key}, mutable=['batch_stats'])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return losses.mean(), (losses, logits, updates)

    grads, (losses, logits, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads,
                                  batch_stats=updates.get('batch_stats', state.batch_stats))
    return state, _add_to_sums(sums, losses, logits, y, jnp.ones_like(y, dtype=bool))


def predict_step(state: TrainState, images: jax.Array, indices: jax.Array, *,
                 image_size: int) -> jax.Array:
    """Logits of the examples at `indices` of the on-device `images`, in inference mode."""
    x = input_pipeline.preprocess(images[indices], image_size)
    return state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats}, x,
                          train=False)


def eval_step(state: TrainState, sums: Sums, images: jax.Array, labels: jax.Array,
              batches: jax.Array, masks: jax.Array, batch: jax.Array, *,
              image_size: int) -> Sums:
    """Adds evaluation batch `batch` to `sums`; masked-out padding counts for nothing."""
    indices = batches[batch]
    logits = predict_step(state, images, indices, image_size=image_size)
    y = labels[indices]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return _add_to_sums(sums, losses, logits, y, masks[batch].astype(bool))


def lower_train_step(state: TrainState, sums: Sums, images: jax.Array, labels: jax.Array,
                     batches: jax.Array, dropout_key: jax.Array, image_size: int,
                     num_steps: int = 1) -> jax.stages.Lowered:
    """`train_step` lowered for these (possibly abstract) arguments, ready to compile.

    With `num_steps` > 1, one call runs that many steps under a compiled loop: one dispatch for
    all of them. State and sums are donated: their buffers are reused for the updated values.
    """
    step = functools.partial(train_step, image_size=image_size)

    def steps(state: TrainState, sums: Sums, *data: jax.Array) -> tuple[TrainState, Sums]:
        return jax.lax.fori_loop(0, num_steps, lambda _, carry: step(*carry, *data),
                                 (state, sums))

    return jax.jit(step if num_steps == 1 else steps, donate_argnums=(0, 1)).lower(
        state, sums, images, labels, batches, dropout_key)


def compile_train_step(*args: Any, **kwargs: Any) -> Any:
    """`lower_train_step(...)`, compiled ahead of time."""
    return lower_train_step(*args, **kwargs).compile()


def mean_metrics(sums: Sums) -> tuple[float, float]:
    """(mean loss, accuracy) from running sums fetched to the host."""
    sums = jax.device_get(sums)
    count = max(int(sums['count']), 1)
    return float(sums['loss_sum']) / count, int(sums['correct']) / count


def flops_of(lowered: jax.stages.Lowered) -> float:
    """FLOPs of one call of a lowered function, from XLA's cost analysis (0 if unknown).

    Counted on the lowered program, before the backend's passes: a GPU's compiled program
    calls cuDNN for its convolutions, which XLA's cost analysis counts as no FLOPs.
    """
    analysis = lowered.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # Older jax returns one dict per device program.
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get('flops', 0.0))


class StopSignals:
    """Turns SIGINT and SIGTERM into a stop that the loop polls, so it can save and exit.

    In one process, handlers of its own set a flag; a second signal of the same kind acts as
    usual (Ctrl-C twice interrupts at once). In a multi-host job a scheduler's SIGTERM reaches
    the processes at different steps, so JAX's preemption service (which catches SIGTERM there
    from `jax.distributed.initialize` on) picks the poll at which all of them stop together.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._multi_process = jax.process_count() > 1

    def __enter__(self) -> 'StopSignals':
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.signum = signum
        signal.signal(signum, self._previous[signum])

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def should_stop(self, step: int, num_steps: int = 1) -> bool:
        """Whether to save and stop at training step `step`, reached by a call of `num_steps`.

        Every process must poll at the same points, and at every step: the preemption service
        stops them all at the step after the furthest one had reached (as orbax's saves expect).
        So after a call that ran several steps each of them is polled, and a stop that falls
        among them takes effect at `step`, on every process alike.
        """
        if self._multi_process and any(multihost_utils.reached_preemption_sync_point(polled)
                                       for polled in range(step - num_steps + 1, step + 1)):
            self.signum = signal.SIGTERM
        return self.signum is not None


def _check_finite(loss: float, epoch: int, step: int, checkpointer: checkpointing.Checkpointer,
                  workdir: str) -> None:
    if math.isfinite(loss):
        return
    checkpointer.wait()
    kept = checkpointer.latest_step()
    where = (f'the last good checkpoint (step {kept}) is kept in {workdir}' if kept is not None
             else 'no checkpoint had been saved yet')
    raise NonFiniteLossError(
        f'the training loss became {loss} in epoch {epoch} (by step {step}); {where}. Lower '
        'config.train.learning_rate, add warmup (config.train.warmup_epochs) or check the data.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates `config` in `workdir`, resuming from its last checkpoint.

    Runs data-parallel over every device (of every process); returns the final results, also
    written to `workdir/results.json`.
    """
    validate_config(config)
    mesh = distributed.create_mesh()
    batch_size = config.train.batch_size
    distributed.check_divisible('train.batch_size', batch_size, mesh)
    distributed.check_divisible('train.eval_batch_size', config.train.eval_batch_size, mesh)
    chief = distributed.is_chief()
    resuming = checkpointing.claim_workdir(workdir, config, write=chief)
    if chief:
        checkpointing.write_json_atomic(os.path.join(workdir, checkpointing.ENVIRONMENT_FILE),
                                        environment.describe())
    images, labels = load_on_devices(config, 'train', mesh)
    test_images, test_labels = load_on_devices(config, 'test', mesh)
    num_train = images.shape[0]
    steps_per_epoch = input_pipeline.steps_per_epoch(num_train, batch_size)
    if not steps_per_epoch:
        raise ValueError(f'{num_train} training examples make no full batch of '
                         f'config.train.batch_size={batch_size}; lower the batch size or raise '
                         'config.data.max_train_examples.')

    replicated = distributed.replicated(mesh)
    init_key, dropout_key, shuffle_key = jax.random.split(jax.random.key(config.seed), 3)
    learning_rate_fn = create_learning_rate_fn(config.train, steps_per_epoch)
    state, sums = create_replicated_state(config, create_optimizer(config.train, learning_rate_fn),
                                          init_key, mesh, images.shape[-1])
    history: list[dict[str, Any]] = []
    checkpointer = checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints)
    latest = checkpointer.latest_step()
    if latest is not None:
        restored, history = checkpointer.restore(latest, {'state': state, 'sums': sums})
        state, sums = restored['state'], restored['sums']
        if chief:
            print(f'Resuming {workdir} from the checkpoint at step {latest} (epoch '
                  f'{latest // steps_per_epoch}, batch {latest % steps_per_epoch}).', flush=True)
    elif resuming and chief:
        print(f'{workdir} has this config but no checkpoint yet; starting from scratch.',
              flush=True)

    eval_batches, eval_masks = (
        distributed.put(a, distributed.split_along(mesh, 1))
        for a in input_pipeline.eval_batches(test_images.shape[0], config.train.eval_batch_size))
    make_batches = batch_maker(mesh)
    batches = make_batches(shuffle_key, 0, num_train, batch_size)
    image_size = config.data.image_size
    steps_per_call, log_every = config.train.steps_per_call, config.train.log_every_steps
    compile_start = time.perf_counter()
    # Compiled step functions by the number of steps each call runs; single steps finish an
    # epoch whose length is not a multiple of `steps_per_call`.
    train_fns = {num_steps: compile_train_step(state, sums, images, labels, batches, dropout_key,
                                               image_size, num_steps)
                 for num_steps in {1, steps_per_call}}
    eval_fn = jax.jit(functools.partial(eval_step, image_size=image_size),
                      donate_argnums=(1,)).lower(
                          state, sums, test_images, test_labels, eval_batches, eval_masks,
                          0).compile()
    compile_seconds = time.perf_counter() - compile_start

    def evaluate(stop: StopSignals) -> tuple[float, float] | None:
        """Test loss and accuracy, or None if a signal came first."""
        eval_sums = jax.device_put(zero_sums(), replicated)
        for batch in tqdm(range(eval_batches.shape[0]), desc='eval', leave=False,
                          disable=None if chief else True):
            if stop.should_stop(step):
                return None
            eval_sums = eval_fn(state, eval_sums, test_images, test_labels, eval_batches,
                                eval_masks, batch)
        return mean_metrics(eval_sums)

    def finish_epoch(record: dict[str, Any], stop: StopSignals) -> None:
        """Evaluates the epoch that `record` trained, logs it and saves a checkpoint if due.

        If a signal interrupts the evaluation, the checkpoint keeps the unfinished record; the
        resumed run evaluates that epoch first.
        """
        nonlocal sums
        eval_start = time.perf_counter()
        evaluation = evaluate(stop)
        if evaluation is None:
            checkpointer.save(step, {'state': state, 'sums': sums}, history + [record])
            raise TrainingInterrupted(stop.signum, step)
        eval_seconds = time.perf_counter() - eval_start
        record.update(test_loss=evaluation[0], test_accuracy=evaluation[1],
                      eval_seconds=eval_seconds,
                      epoch_seconds=record['train_seconds'] + eval_seconds)
        history.append(record)
        if log:
            log.write_epoch(history)
            tqdm.write(format_epoch(record, num_epochs), file=sys.stdout)
        sums = jax.device_put(zero_sums(), replicated)
        stopping = stop.should_stop(step)
        epoch = record['epoch']
        if epoch % config.train.checkpoint_every_epochs == 0 or epoch == num_epochs or stopping:
            checkpointer.save(step, {'state': state, 'sums': sums}, history)
        if stopping and epoch < num_epochs:
            raise TrainingInterrupted(stop.signum, step)

    def log_progress(epoch: int, batch: int, since: tuple[int, float],
                     bar: tqdm) -> tuple[int, float]:
        """Checks the epoch's running loss, shows it and adds it to the step log.

        `since` is the batch and time of the last record, for the throughput in between; the
        same pair for this record is returned. Without a terminal (a batch job's log) the bar
        is off, so a line is printed instead.
        """
        loss, accuracy = mean_metrics(sums)
        _check_finite(loss, epoch, step, checkpointer, workdir)
        bar.set_postfix(loss=f'{loss:.4f}', acc=f'{accuracy:.3f}')
        now = time.perf_counter()
        if log:
            record = {'step': step, 'epoch': epoch - 1 + batch / steps_per_epoch,
                      'train_loss': loss, 'train_accuracy': accuracy,
                      'examples_per_sec': (batch - since[0]) * batch_size / (now - since[1]),
                      'learning_rate': float(learning_rate_fn(step - 1))}
            log.write_step(record)
            if bar.disable and batch < steps_per_epoch:
                print(format_progress(record, num_epochs), flush=True)
        return batch, now

    step = int(state.step)
    # An epoch whose evaluation a signal interrupted comes back as a record without test metrics.
    unfinished = history.pop() if history and 'test_accuracy' not in history[-1] else None
    log = metric_writers.RunLog(workdir) if chief else None
    if log:
        log.resume(history, step)
    num_epochs = config.train.num_epochs
    try:
        with StopSignals() as stop:
            if unfinished:
                finish_epoch(unfinished, stop)
            for epoch in range(step // steps_per_epoch + 1, num_epochs + 1):
                epoch_start = time.perf_counter()
                first_batch = step % steps_per_epoch
                batches = make_batches(shuffle_key, epoch, num_train, batch_size)
                bar = tqdm(total=steps_per_epoch, initial=first_batch, unit='step',
                           desc=f'epoch {epoch}/{num_epochs}', leave=False,
                           disable=None if chief else True)
                batch = first_batch  # Batches of this epoch done.
                logged = (batch, epoch_start)
                while batch < steps_per_epoch:
                    num_steps = steps_per_call if batch + steps_per_call <= steps_per_epoch else 1
                    state, sums = train_fns[num_steps](state, sums, images, labels, batches,
                                                       dropout_key)
                    batch += num_steps
                    step += num_steps
                    bar.update(num_steps)
                    last_batch = batch == steps_per_epoch
                    if batch // log_every > (batch - num_steps) // log_every or last_batch:
                        logged = log_progress(epoch, batch, logged, bar)
                    # Polled after every call, the epoch's last too (every step is polled in a
                    # multi-host job); a stop there acts as the epoch's evaluation starts.
                    if stop.should_stop(step, num_steps) and not last_batch:
                        loss, _ = mean_metrics(sums)
                        _check_finite(loss, epoch, step, checkpointer, workdir)
                        checkpointer.save(step, {'state': state, 'sums': sums}, history)
                        raise TrainingInterrupted(stop.signum, step)
                train_seconds = time.perf_counter() - epoch_start
                bar.close()
                train_loss, train_accuracy = mean_metrics(sums)
                finish_epoch({
                    'epoch': epoch, 'step': step,
                    'train_loss': train_loss, 'train_accuracy': train_accuracy,
                    'examples_per_sec': (steps_per_epoch - first_batch) * batch_size /
                                        train_seconds,
                    'train_seconds': train_seconds,
                    'learning_rate': float(learning_rate_fn(step - 1)),
                }, stop)
    finally:
        checkpointer.wait()
        checkpointer.close()
        if log:
            log.close()

    results = summarize_run(history, num_params=count_params(state.params),
                            train_flops_per_step=flops_of(lower_train_step(
                                state, sums, images, labels, batches, dropout_key, image_size)),
                            compile_seconds=compile_seconds, batch_size=batch_size)
    if chief:
        checkpointing.write_json_atomic(os.path.join(workdir, checkpointing.RESULTS_FILE),
                                        results)
    return results


def format_epoch(record: dict[str, Any], num_epochs: int) -> str:
    """One line per epoch, like the lesson's printout."""
    return (f'epoch {record["epoch"]}/{num_epochs}  loss {record["train_loss"]:.4f}  '
            f'train acc {record["train_accuracy"]:.4f}  test acc {record["test_accuracy"]:.4f}  '
            f'{record["examples_per_sec"]:.1f} examples/sec  {record["epoch_seconds"]:.1f} s')


def format_progress(record: dict[str, Any], num_epochs: int) -> str:
    """One line of the step log, for a log file where no progress bar is drawn."""
    return (f'  step {record["step"]}  epoch {record["epoch"]:.2f}/{num_epochs}  '
            f'loss {record["train_loss"]:.4f}  train acc {record["train_accuracy"]:.4f}  '
            f'{record["examples_per_sec"]:.1f} examples/sec')


def summarize_run(history: list[dict[str, Any]], *, num_params: int,
                  train_flops_per_step: float, compile_seconds: float,
                  batch_size: int) -> dict[str, Any]:
    """The numbers a sweep table or a paper needs from one finished run."""
    final = history[-1]
    best = max(history, key=lambda record: record['test_accuracy'])
    devices = jax.devices()
    return {
        'epochs': final['epoch'],
        'steps': final['step'],
        'test_accuracy': final['test_accuracy'],
        'test_loss': final['test_loss'],
        'train_accuracy': final['train_accuracy'],
        'train_loss': final['train_loss'],
        'best_test_accuracy': best['test_accuracy'],
        'best_epoch': best['epoch'],
        'num_params': num_params,
        'train_flops_per_example': train_flops_per_step / batch_size,
        'examples_per_sec': float(np.median([r['examples_per_sec'] for r in history])),
        'train_seconds': sum(r['train_seconds'] for r in history),
        'wall_seconds': sum(r['epoch_seconds'] for r in history),
        'compile_seconds': compile_seconds,
        'device_kind': devices[0].device_kind,
        'num_devices': len(devices),
    }
