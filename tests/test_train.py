"""The step learns, runs are deterministic and resumable, and bad runs stop clearly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing import event_accumulator

from vgg_flax import (
    checkpointing,
    config_schema,
    errors,
    evaluate,
    input_pipeline,
    metric_writers,
    run_dir,
    sweep,
    train,
    train_state,
    train_steps,
)

from conftest import ROOT, tiny_config

METRIC_KEYS = ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'learning_rate')


def metrics_of(history):
    return [{key: record[key] for key in ('epoch', 'step', *METRIC_KEYS)} for record in history]


def test_training_beats_chance_and_writes_the_run(idx_dir, tmp_path, capsys):
    config = tiny_config(str(idx_dir))
    config.train.log_every_steps = 4
    results = train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert results['test_accuracy'] > 0.5  # Chance is 0.1.
    assert results['epochs'] == 2 and results['steps'] == 20
    history = metric_writers.read_history(str(tmp_path / 'run'))
    assert [r['epoch'] for r in history] == [1, 2]
    assert history[-1]['test_accuracy'] == results['test_accuracy']
    # The step log: every 4 steps of a 10-step epoch, and its end, with the epoch's running means.
    logged = metric_writers.read_steps(str(tmp_path / 'run'))
    assert [r['step'] for r in logged] == [4, 8, 10, 14, 18, 20]
    assert [r['epoch'] for r in logged] == pytest.approx([0.4, 0.8, 1, 1.4, 1.8, 2])
    assert [(r['train_loss'], r['train_accuracy']) for r in logged[2::3]] == [
        (r['train_loss'], r['train_accuracy']) for r in history
    ]
    assert all(r['examples_per_sec'] > 0 and r['learning_rate'] == 0.05 for r in logged)
    # Without a terminal, each mid-epoch record is also a line of the log.
    progress = [line for line in capsys.readouterr().out.splitlines() if 'step ' in line]
    assert [line.split()[1] for line in progress] == ['4', '8', '14', '18'], progress
    assert 'epoch 0.40/2' in progress[0] and 'examples/sec' in progress[0]


@pytest.mark.slow
def test_evaluation_counts_every_test_example(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 1
    config.train.eval_batch_size = 33  # 100 test examples: 3 full batches and one of 1.
    train.train_and_evaluate(config, str(tmp_path / 'run'))
    record = metric_writers.read_history(str(tmp_path / 'run'))[0]
    assert round(record['test_accuracy'] * 100) == pytest.approx(record['test_accuracy'] * 100)


@pytest.mark.slow
def test_a_validation_set_is_held_out_of_training_and_evaluated_beside_the_test_set(
    idx_dir, tmp_path
):
    """The last 64 of 320 training examples: the run trains exactly as one cut to the first 256
    does, and its validation accuracy is the restored model's accuracy on those 64."""
    config = tiny_config(str(idx_dir))
    config.data.validation_examples = 64
    config.train.eval_batch_size = 40  # 64 validation examples: a full batch and a padded one.
    held_out = train.train_and_evaluate(config, str(tmp_path / 'held_out'))
    config.data.validation_examples, config.data.max_train_examples = 0, 256
    cut = train.train_and_evaluate(config, str(tmp_path / 'cut'))
    assert metrics_of(metric_writers.read_history(str(tmp_path / 'held_out'))) == metrics_of(
        metric_writers.read_history(str(tmp_path / 'cut'))
    )
    assert 'val_accuracy' not in cut and held_out['test_accuracy'] == cut['test_accuracy']
    history = metric_writers.read_history(str(tmp_path / 'held_out'))
    assert all(0 < record['val_accuracy'] <= 1 and record['val_loss'] > 0 for record in history)
    assert held_out['val_accuracy'] == history[-1]['val_accuracy']

    config.data.max_train_examples = 0
    train_split = input_pipeline.load_split(config.data, 'train')
    validation = input_pipeline.Split(train_split.images[256:], train_split.labels[256:])
    state, _ = checkpointing.restore_state(
        run_dir.read_config(str(tmp_path / 'held_out')), str(tmp_path / 'held_out'), None, 1
    )
    predictions = evaluate.predict(state, validation, 32, 40)
    assert np.mean(predictions == validation.labels) == pytest.approx(held_out['val_accuracy'])

    # The evaluation CLI's validation split is the same set, written beside the test split's.
    evaluation = evaluate.evaluate_run(str(tmp_path / 'held_out'), split='validation')
    assert evaluation['val_accuracy'] == pytest.approx(held_out['val_accuracy'])
    assert evaluation['num_examples'] == 64 and not evaluation['tta_translate']
    assert (tmp_path / 'held_out' / 'evaluation_validation.json').exists()
    assert (tmp_path / 'held_out' / 'predictions_validation.png').exists()
    assert not (tmp_path / 'held_out' / evaluate.EVALUATION_FILE).exists()
    shifted = evaluate.evaluate_run(
        str(tmp_path / 'held_out'), split='validation', eval_overrides={'tta_translate': 1}
    )
    assert shifted['tta_translate'] == 1 and shifted['num_examples'] == 64
    with pytest.raises(ValueError, match='held out no validation set'):
        evaluate.evaluate_run(str(tmp_path / 'cut'), split='validation')
    with pytest.raises(ValueError, match='tta_translate'):
        evaluate.evaluate_run(
            str(tmp_path / 'held_out'), split='validation', eval_overrides={'tta_translate': 20}
        )


def test_a_validation_set_as_large_as_the_files_training_split_is_refused(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.data.validation_examples = 320  # All of the generated training split.
    with pytest.raises(ValueError, match='would hold out all 320 training examples'):
        train.train_and_evaluate(config, str(tmp_path / 'run'))


@pytest.mark.slow
def test_same_seed_same_metrics_and_resume_matches_an_uninterrupted_run(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 3
    straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
    again = train.train_and_evaluate(config, str(tmp_path / 'again'))
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(tmp_path / 'resumed'))
    config.train.num_epochs = 3
    resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
    histories = [
        metrics_of(metric_writers.read_history(str(tmp_path / name)))
        for name in ('straight', 'again', 'resumed')
    ]
    assert histories[0] == histories[1] == histories[2]
    step_logs = [
        [
            {k: v for k, v in record.items() if k != 'examples_per_sec'}
            for record in metric_writers.read_steps(str(tmp_path / name))
        ]
        for name in ('straight', 'resumed')
    ]
    assert step_logs[0] == step_logs[1] and len(step_logs[0]) == 3
    assert straight['test_accuracy'] == again['test_accuracy'] == resumed['test_accuracy']


@pytest.mark.slow
def test_a_moving_average_run_evaluates_it_saves_it_and_resumes_exactly(idx_dir, tmp_path):
    """Evaluation, `evaluate` and `load_variables` use the average, checkpoints hold it (with
    the BatchNorm statistics), and a run resumed between epochs matches an uninterrupted one."""
    config = tiny_config(str(idx_dir))
    config.train.ema_decay = 0.9
    straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(tmp_path / 'resumed'))
    config.train.num_epochs = 2
    resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
    assert resumed['test_accuracy'] == straight['test_accuracy']
    histories = [
        metrics_of(metric_writers.read_history(str(tmp_path / name)))
        for name in ('straight', 'resumed')
    ]
    assert histories[0] == histories[1]

    state, _ = checkpointing.restore_state(config, str(tmp_path / 'straight'))
    assert set(state.ema) == {'params', 'batch_stats'}
    variables = checkpointing.load_variables(str(tmp_path / 'straight'))
    for saved, average in (
        (variables, state.ema),
        (variables['batch_stats'], state.ema['batch_stats']),
    ):
        for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(average), strict=True):
            np.testing.assert_array_equal(a, b)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(state.ema['params']), jax.tree.leaves(state.params), strict=True
        )
    )
    split = input_pipeline.load_split(config.data, 'test', config.model.num_classes)
    predictions = evaluate.predict(state, split, 32, config.train.eval_batch_size)
    assert np.mean(predictions == split.labels) == histories[0][-1]['test_accuracy']
    images, indices = jnp.asarray(split.images), jnp.arange(8)
    logits = train_steps.predict_step(state, images, indices, image_size=32)
    np.testing.assert_array_equal(
        logits,
        train_steps.predict_step(
            state.replace(
                params=state.ema['params'], batch_stats=state.ema['batch_stats'], ema=None
            ),
            images,
            indices,
            image_size=32,
        ),
    )
    assert not np.allclose(
        logits, train_steps.predict_step(state.replace(ema=None), images, indices, image_size=32)
    )


def test_without_a_moving_average_the_checkpoint_layout_is_unchanged(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(tmp_path / 'run'))
    state, _ = checkpointing.restore_state(config, str(tmp_path / 'run'))
    assert state.ema is None
    saved = (
        ocp.PyTreeCheckpointHandler()
        .metadata(tmp_path / 'run' / 'checkpoints' / '10' / 'arrays')
        .tree
    )
    assert set(saved['state']) == {'step', 'params', 'opt_state', 'batch_stats'}


def wrap_train_steps(monkeypatch, wrap) -> None:
    """Makes train_and_evaluate call `wrap(fn)` in place of each compiled train step `fn`."""
    real_compile = train_steps.compile_steps

    def compile_steps(*args, **kwargs):
        compiled = real_compile(*args, **kwargs)
        return compiled._replace(train={n: wrap(fn) for n, fn in compiled.train.items()})

    monkeypatch.setattr(train_steps, 'compile_steps', compile_steps)


def signal_during_call(monkeypatch, call: int, signum: int = signal.SIGTERM) -> None:
    """Makes the process receive `signum` while the train step runs its `call`-th call."""
    calls = []

    def with_a_signal(fn):
        def call_fn(*call_args):
            calls.append(None)
            if len(calls) == call:
                os.kill(os.getpid(), signum)
            return fn(*call_args)

        return call_fn

    wrap_train_steps(monkeypatch, with_a_signal)


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resuming_matches(idx_dir, tmp_path, monkeypatch):
    config = tiny_config(str(idx_dir))
    train.train_and_evaluate(config, str(tmp_path / 'straight'))
    straight = metrics_of(metric_writers.read_history(str(tmp_path / 'straight')))
    workdir = str(tmp_path / 'stopped')
    with monkeypatch.context() as patch:
        signal_during_call(patch, 4)
        with pytest.raises(errors.TrainingInterrupted) as stopped:
            train.train_and_evaluate(config, workdir)
    assert stopped.value.signum == signal.SIGTERM
    saved = checkpointing.Checkpointer(workdir, keep=3).latest_step()
    assert saved == 4  # Saved mid-epoch, after the call the signal came in.
    train.train_and_evaluate(config, workdir)
    assert metrics_of(metric_writers.read_history(workdir)) == straight


@pytest.mark.slow
def test_the_host_runs_at_most_two_calls_ahead_of_a_slow_device(idx_dir, tmp_path, monkeypatch):
    """A stop waits for the calls queued on the device; there are never more than two."""
    real_step, markers, queued = train_steps.train_step, [], []

    def slow_step(state, data, options):  # About 2 GFLOP more per step: the host outpaces
        x = jax.lax.fori_loop(
            0,
            60,
            lambda _, x: jnp.tanh(x @ x),  # the device.
            jnp.full((256, 256), 0.01),
        )
        state = real_step(state, data, options)
        return state.replace(step=state.step + (x[0, 0] > 1e9).astype(state.step.dtype))

    def counting(fn):
        def call_fn(*call_args):
            result = fn(*call_args)
            markers.append(jnp.copy(result.step))  # Ready once this call has run.
            queued.append(sum(not marker.is_ready() for marker in markers))
            return result

        return call_fn

    monkeypatch.setattr(train_steps, 'train_step', slow_step)
    wrap_train_steps(monkeypatch, counting)
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert len(queued) == 10 and max(queued) <= 2, queued


@pytest.mark.slow
def test_steps_per_call_trains_alike_and_stops_and_resumes_between_calls(
    idx_dir, tmp_path, monkeypatch
):
    config = tiny_config(str(idx_dir))  # 10 steps an epoch: with 4 to a call, 4 + 4 + 1 + 1.
    train.train_and_evaluate(config, str(tmp_path / 'one_by_one'))
    one_by_one = metrics_of(metric_writers.read_history(str(tmp_path / 'one_by_one')))
    config.train.steps_per_call = 4
    train.train_and_evaluate(config, str(tmp_path / 'straight'))
    straight = metrics_of(metric_writers.read_history(str(tmp_path / 'straight')))
    assert [r['step'] for r in straight] == [r['step'] for r in one_by_one] == [10, 20]
    for looped, single in zip(straight, one_by_one, strict=True):
        for key in ('train_loss', 'test_loss'):
            assert looped[key] == pytest.approx(single[key], rel=1e-4), key
        for key in ('train_accuracy', 'test_accuracy'):
            assert looped[key] == pytest.approx(single[key], abs=0.02), key

    workdir = str(tmp_path / 'stopped')
    with monkeypatch.context() as patch:
        signal_during_call(patch, 2)
        with pytest.raises(errors.TrainingInterrupted):
            train.train_and_evaluate(config, workdir)
    assert checkpointing.Checkpointer(workdir, keep=3).latest_step() == 8  # After that call.
    train.train_and_evaluate(config, workdir)  # Steps 9 and 10 one by one, then epoch 2.
    assert metrics_of(metric_writers.read_history(workdir)) == straight


def test_a_multi_host_stop_falls_on_a_call_boundary(monkeypatch):
    polled = []

    def reached_preemption_sync_point(step):  # The service chose step 7 for every process.
        polled.append(step)
        return step == 7

    monkeypatch.setattr(
        train,
        'multihost_utils',
        types.SimpleNamespace(reached_preemption_sync_point=reached_preemption_sync_point),
    )
    stop = train.StopSignals()
    stop._multi_process = True
    assert not stop.should_stop(4, num_steps=4)
    assert stop.should_stop(8, num_steps=4) and stop.signum == signal.SIGTERM
    assert polled == [1, 2, 3, 4, 5, 6, 7]  # Every step, as the service expects.


@pytest.mark.slow
def test_a_multi_host_run_polls_the_preemption_service_at_every_step(
    idx_dir, tmp_path, monkeypatch
):
    polled = []

    def reached_preemption_sync_point(step):
        polled.append(step)
        return False

    class MultiHostStopSignals(train.StopSignals):
        def __init__(self):
            super().__init__()
            self._multi_process = True

    # Only the loop's polls: orbax's saves poll the real service, which a single process lacks.
    monkeypatch.setattr(
        train,
        'multihost_utils',
        types.SimpleNamespace(reached_preemption_sync_point=reached_preemption_sync_point),
    )
    monkeypatch.setattr(train, 'StopSignals', MultiHostStopSignals)
    config = tiny_config(str(idx_dir))  # 10 steps an epoch: with 5 to a call, 5 + 5.
    config.train.steps_per_call = 5
    train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert polled == sorted(polled) and sorted(set(polled)) == list(range(1, 21))


@pytest.mark.slow
def test_evaluating_every_few_epochs_trains_alike_and_resumes_after_an_unevaluated_epoch(
    idx_dir, tmp_path, monkeypatch
):
    def metrics_present(history):
        return [{k: r[k] for k in ('epoch', 'step', *METRIC_KEYS) if k in r} for r in history]

    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 3
    train.train_and_evaluate(config, str(tmp_path / 'every'))
    every_epoch = metrics_present(metric_writers.read_history(str(tmp_path / 'every')))
    config.eval.every_epochs = 2
    results = train.train_and_evaluate(config, str(tmp_path / 'sparse'))
    sparse = metric_writers.read_history(str(tmp_path / 'sparse'))
    # Epoch 1 has train metrics only; 2 is due and 3 is the last. The training is the same.
    assert ['test_accuracy' in record for record in sparse] == [False, True, True]
    assert sparse[0]['epoch_seconds'] == sparse[0]['train_seconds']
    assert metrics_present(sparse)[1:] == every_epoch[1:]
    assert metrics_present(sparse)[0] == {
        k: v for k, v in every_epoch[0].items() if not k.startswith('test_')
    }
    best = max(every_epoch[1:], key=lambda record: record['test_accuracy'])
    assert results['best_test_accuracy'] == best['test_accuracy']
    assert 'test acc' not in metric_writers.format_epoch(sparse[0], 3)

    # Stopped at the end of the unevaluated epoch 1 and resumed evaluating every epoch: epoch 1,
    # recorded and logged already, stays as it was, and is logged once.
    workdir = tmp_path / 'stopped'
    with monkeypatch.context() as patch:
        signal_during_call(patch, 10)
        with pytest.raises(errors.TrainingInterrupted):
            train.train_and_evaluate(config, str(workdir))
    assert checkpointing.Checkpointer(str(workdir), keep=3).latest_step() == 10
    config.eval.every_epochs = 1
    train.train_and_evaluate(config, str(workdir))
    assert metrics_present(metric_writers.read_history(str(workdir))) == metrics_present(sparse)
    events = event_accumulator.EventAccumulator(str(workdir / 'tensorboard'))
    events.Reload()
    assert [e.step for e in events.Scalars('train_loss')] == [10, 20, 30]
    assert [e.step for e in events.Scalars('test_accuracy')] == [20, 30]


@pytest.mark.slow
def test_sigterm_during_evaluation_saves_and_the_resumed_run_evaluates_that_epoch(
    idx_dir, tmp_path, monkeypatch
):
    config = tiny_config(str(idx_dir))
    straight = metrics_of(
        train.train_and_evaluate(config, str(tmp_path / 'straight'))
        and metric_writers.read_history(str(tmp_path / 'straight'))
    )
    real_tqdm = train.tqdm

    def signal_when_evaluation_starts(*args, **kwargs):
        if kwargs.get('desc', '').startswith('eval'):
            monkeypatch.setattr(train, 'tqdm', real_tqdm)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(train, 'tqdm', signal_when_evaluation_starts)
    workdir = str(tmp_path / 'stopped')
    with pytest.raises(errors.TrainingInterrupted):
        train.train_and_evaluate(config, workdir)
    assert checkpointing.Checkpointer(workdir, keep=3).latest_step() == 10  # End of epoch 1.
    assert metric_writers.read_history(workdir) == []  # Epoch 1 has no test metrics yet.
    train.train_and_evaluate(config, workdir)
    assert metrics_of(metric_writers.read_history(workdir)) == straight


@pytest.mark.slow
def test_resume_with_another_model_or_data_is_refused(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(tmp_path / 'run'))
    config.model.width_ratio = 8
    config.data.image_size = 64
    with pytest.raises(errors.RunDirError) as error:
        train.train_and_evaluate(config, str(tmp_path / 'run'))
    message = str(error.value)
    assert 'data.image_size: 32 in the run, 64 now' in message
    assert 'model.width_ratio: 16 in the run, 8 now' in message
    assert 'Use a new --workdir' in message


def one_epoch_run_with_its_config_json_edited(idx_dir, tmp_path, edit):
    """A tiny 1-epoch run whose config.json `edit` then changes in place, as an older version of
    the package would have written it; returns its config and workdir."""
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 1
    workdir = str(tmp_path / 'run')
    train.train_and_evaluate(config, workdir)
    path = os.path.join(workdir, run_dir.CONFIG_FILE)
    with open(path) as f:
        saved = json.load(f)
    edit(saved)
    with open(path, 'w') as f:
        json.dump(saved, f)
    return config, workdir


@pytest.mark.slow
def test_a_run_from_before_a_new_config_field_resumes_with_its_default(idx_dir, tmp_path):
    """model.first_conv and model.conv_impl came later; a run without them resumes, its convs
    computed alike."""

    def drop_new_fields(saved):
        del saved['model']['first_conv'], saved['model']['conv_impl']

    config, workdir = one_epoch_run_with_its_config_json_edited(idx_dir, tmp_path, drop_new_fields)
    assert run_dir.read_config(workdir).model.first_conv == 'auto'
    assert run_dir.read_config(workdir).model.conv_impl == 'auto'
    config.train.num_epochs = 2
    config.model.first_conv = 'shifted_sum'
    assert train.train_and_evaluate(config, workdir)['epochs'] == 2


@pytest.mark.slow
def test_a_run_from_before_a_renamed_config_field_evaluates_and_resumes(idx_dir, tmp_path):
    """`population_size` was `num_seeds`: a run whose config.json says so is the run it was, to
    evaluate, to a sweep and to resume, which writes config.json under the current name."""

    def old_name(saved):
        saved['num_seeds'] = saved.pop('population_size')

    config, workdir = one_epoch_run_with_its_config_json_edited(idx_dir, tmp_path, old_name)
    path = os.path.join(workdir, run_dir.CONFIG_FILE)
    assert evaluate.evaluate_run(workdir)['step'] == 10
    point = sweep.PointRun(0, {}, config, workdir)
    assert point.problem() is None and point.status() == 'done'
    config.train.num_epochs = 2
    assert train.train_and_evaluate(config, workdir)['epochs'] == 2
    with open(path) as f:
        assert json.load(f) == config_schema.to_plain(config)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 3
    config.train.lr_schedule = 'step'
    config.train.lr_decay_epochs = (1,)
    config.train.lr_decay_factor = 1e20  # Epoch 2 steps with lr 5e18: the loss overflows.
    workdir = str(tmp_path / 'run')
    with pytest.raises(errors.NonFiniteLossError) as error:
        train.train_and_evaluate(config, workdir)
    assert 'in epoch 2' in str(error.value)
    assert 'the last good checkpoint (step 10) is kept' in str(error.value)
    assert checkpointing.Checkpointer(workdir, keep=3).all_steps() == [10]
    assert [r['epoch'] for r in metric_writers.read_history(workdir)] == [1]


def test_checkpoints_keep_the_last_few(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 4
    config.train.keep_checkpoints = 2
    train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert checkpointing.Checkpointer(str(tmp_path / 'run'), keep=2).all_steps() == [30, 40]


def test_too_few_examples_for_one_batch_is_a_clear_error(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.data.max_train_examples = 10
    with pytest.raises(ValueError, match=r'make no full batch of config.train.batch_size=32'):
        train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_results_json(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(tmp_path / 'run'))
    with open(tmp_path / 'run' / 'results.json') as f:
        results = json.load(f)
    for key in (
        'test_accuracy',
        'best_test_accuracy',
        'best_epoch',
        'num_params',
        'examples_per_sec',
        'train_flops_per_example',
        'compile_seconds',
        'wall_seconds',
        'device_kind',
    ):
        assert key in results
    assert results['train_flops_per_example'] > 0


@pytest.mark.slow
def test_short_real_data_run_beats_chance(real_data_dir, tmp_path):
    config = tiny_config(str(real_data_dir))
    config.data.max_train_examples = 3200
    config.data.max_test_examples = 1000
    results = train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert results['test_accuracy'] > 0.6, results  # Chance: 0.1.


@pytest.mark.slow
def test_training_from_tfds_with_mock_data(tmp_path, tfds_servers_answer):
    tfds = pytest.importorskip('tensorflow_datasets')
    config = tiny_config()
    config.data.source = 'tfds'
    config.train.num_epochs = 1
    with tfds.testing.mock_data(num_examples=96):
        results = train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert results['steps'] == 3 and 0.0 <= results['test_accuracy'] <= 1.0


@pytest.mark.slow
def test_bfloat16_training_learns_and_keeps_float32_state(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.model.dtype = 'bfloat16'
    results = train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert results['test_accuracy'] > 0.5
    state, _ = checkpointing.Checkpointer(str(tmp_path / 'run'), keep=3).restore(
        20, train_state.create_train_state(config, jax.random.key(0))
    )
    dtypes = {
        leaf.dtype
        for leaf in jax.tree.leaves((state.params, state.opt_state))
        if np.issubdtype(leaf.dtype, np.floating)
    }
    assert dtypes == {np.dtype(np.float32)}  # bf16 is the compute dtype only.


@pytest.mark.slow
def test_a_held_workdir_refuses_a_second_run_and_the_hold_dies_with_its_process(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 1
    workdir = tmp_path / 'run'
    holder = subprocess.Popen(
        [
            sys.executable,
            '-c',
            'import sys, time\nfrom vgg_flax import run_dir\n'
            'with run_dir.hold_workdir(sys.argv[1]):\n'
            '    print("held", flush=True)\n    time.sleep(600)',
            str(workdir),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == 'held\n'
        with pytest.raises(
            errors.RunDirError,
            match=re.escape(
                f'is in use by another run (host {socket.gethostname()}, pid {holder.pid})'
            ),
        ):
            train.train_and_evaluate(config, str(workdir))
        assert os.listdir(workdir) == [run_dir.LOCK_FILE]  # The refused run wrote nothing.
    finally:
        holder.kill()  # kill -9: the OS drops its lock; none is left behind.
        holder.wait()
    assert train.train_and_evaluate(config, str(workdir))['epochs'] == 1


@pytest.mark.parametrize(
    'workdir,message',
    [
        ('', '--workdir is empty'),
        ('a_file', 'is a file, not a directory'),
        ('/proc/vgg_flax_run', 'cannot write to --workdir=/proc/vgg_flax_run'),
    ],
)
def test_an_unusable_workdir_is_a_clear_error(idx_dir, tmp_path, monkeypatch, workdir, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a_file').write_text('not a directory')
    with pytest.raises(errors.RunDirError, match=re.escape(message)):
        train.train_and_evaluate(tiny_config(str(idx_dir)), workdir)


@pytest.mark.slow
@pytest.mark.parametrize('learning_rate,kept', [(1e6, []), (300.0, [1])])
def test_a_diverged_run_stops_and_never_saves_non_finite_values(
    idx_dir, tmp_path, learning_rate, kept
):
    config = tiny_config(str(idx_dir))
    config.data.max_train_examples = 32  # One step an epoch.
    config.train.num_epochs = 4
    config.train.learning_rate = learning_rate  # Diverges in epoch 1, or in epoch 2.
    workdir = str(tmp_path / 'run')
    with pytest.raises(errors.NonFiniteLossError, match=r'became (non-finite|nan|inf)'):
        train.train_and_evaluate(config, workdir)
    assert not os.path.exists(os.path.join(workdir, run_dir.RESULTS_FILE))
    with checkpointing.Checkpointer(workdir, keep=3) as checkpointer:
        assert checkpointer.all_steps() == kept
        for step in kept:
            state, history = checkpointer.restore(
                step, train_state.create_train_state(config, jax.random.key(0))
            )
            assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params))
            assert all(np.isfinite(record['test_loss']) for record in history)


def test_a_failed_start_leaves_the_workdir_to_the_retry(idx_dir, tmp_path):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 1
    config.train.batch_size = 2048
    workdir = tmp_path / 'run'
    with pytest.raises(ValueError, match='lower the batch size'):
        train.train_and_evaluate(config, str(workdir))
    assert os.listdir(workdir) == [run_dir.LOCK_FILE]
    config.train.batch_size = 32  # The advised retry is this run, not "a different config".
    assert train.train_and_evaluate(config, str(workdir))['epochs'] == 1


def test_a_finished_run_run_again_changes_nothing(idx_dir, tmp_path, capsys):
    config = tiny_config(str(idx_dir))
    config.train.num_epochs = 1
    workdir = tmp_path / 'run'
    results = train.train_and_evaluate(config, str(workdir))

    def files():
        return {
            str(path): (path.stat().st_mtime_ns, path.stat().st_size)
            for path in workdir.rglob('*')
            if path.name != run_dir.LOCK_FILE
        }

    before = files()
    capsys.readouterr()
    assert train.train_and_evaluate(config, str(workdir)) == results
    assert files() == before
    assert 'has finished its 1 epochs already' in capsys.readouterr().out


def test_a_step_out_of_memory_is_one_line_naming_the_fix():
    """What XLA raises when a step needs more than `ulimit -v` (or the devices) allows."""
    with pytest.raises(ValueError) as error, train.out_of_memory_stops_the_run():
        raise jax.errors.JaxRuntimeError(
            'INTERNAL: Error dispatching computation: Out of memory allocating 2281720896 bytes.'
        )
    assert str(error.value).startswith(
        'a step ran out of memory (INTERNAL: Error dispatching computation: Out of memory '
        'allocating 2281720896 bytes.); lower config.data.image_size or config.train.batch_size'
    )
    with pytest.raises(jax.errors.JaxRuntimeError), train.out_of_memory_stops_the_run():
        raise jax.errors.JaxRuntimeError('INTERNAL: something else')
