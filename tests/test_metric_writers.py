"""The run log: both jsonl files, TensorBoard events and curves.png drawn off the main thread."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing import event_accumulator

from vgg_flax import errors, metric_writers

from conftest import PNG_MAGIC


def history(epochs: int) -> list[dict[str, float]]:
    return [
        {
            'epoch': e,
            'step': 10 * e,
            'train_loss': 1 / e,
            'train_accuracy': 0.5,
            'val_loss': 2 / e,
            'val_accuracy': 0.55,
            'test_loss': 1 / e,
            'test_accuracy': 0.6,
            'examples_per_sec': 100.0,
            'learning_rate': 0.05,
            'epoch_seconds': 1.0,
        }
        for e in range(1, epochs + 1)
    ]


def steps(epochs: int, per_epoch: int = 4) -> list[dict[str, float]]:
    return [
        {
            'step': 10 * e + 10 * b // per_epoch,
            'epoch': e + b / per_epoch,
            'train_loss': 1 / (e + 1),
            'train_accuracy': 0.5,
            'examples_per_sec': 100.0,
            'learning_rate': 0.05,
        }
        for e in range(epochs)
        for b in range(1, per_epoch + 1)
    ]


def tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows: each tag's (step, value) points."""
    events = event_accumulator.EventAccumulator(str(logdir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()['scalars']
    }


def test_run_log_writes_every_file(tmp_path, capsys):
    log = metric_writers.RunLog(str(tmp_path), num_epochs=3)
    for epochs in (1, 2, 3):
        for record in steps(epochs)[-4:]:
            log.write_step(record)
        log.write_epoch(history(epochs))
    log.close()
    assert metric_writers.read_history(str(tmp_path)) == history(3)
    assert metric_writers.read_steps(str(tmp_path)) == steps(3)
    assert (tmp_path / metric_writers.CURVES_FILE).read_bytes()[:8] == PNG_MAGIC
    # TensorBoard shows every scalar of both jsonl files, at the same steps.
    scalars = tensorboard_scalars(tmp_path / metric_writers.TENSORBOARD_DIR)
    assert set(scalars) == {
        *metric_writers.RunLog.SCALARS,
        *(f'steps/{key}' for key in metric_writers.RunLog.STEP_SCALARS),
    }
    for key in metric_writers.RunLog.SCALARS:
        assert scalars[key] == [(r['step'], pytest.approx(r[key])) for r in history(3)], key
    for key in metric_writers.RunLog.STEP_SCALARS:
        assert scalars[f'steps/{key}'] == [(r['step'], pytest.approx(r[key])) for r in steps(3)], (
            key
        )
    assert capsys.readouterr().out.splitlines() == [
        f'epoch {e}/3  loss {1 / e:.4f}  train acc 0.5000  val acc 0.5500  test acc 0.6000  '
        '100.0 examples/sec  1.0 s'
        for e in (1, 2, 3)
    ]


def test_resume_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    log = metric_writers.RunLog(str(tmp_path), num_epochs=2)
    for record in steps(2):  # Killed at step 20, with the last checkpoint at step 15.
        log.write_step(record)
        if record['step'] in (10, 20):
            log.write_epoch(history(record['step'] // 10))
    log.close()
    log = metric_writers.RunLog(str(tmp_path), 2, history(1), step=15)
    log.write_step(steps(2)[-1])
    log.close()
    kept = steps(2)[:6] + steps(2)[-1:]
    assert metric_writers.read_steps(str(tmp_path)) == kept
    assert metric_writers.read_history(str(tmp_path)) == history(1)
    # TensorBoard shows the same points: those logged after step 15 before the kill (epoch 2's
    # too) are gone.
    scalars = tensorboard_scalars(tmp_path / metric_writers.TENSORBOARD_DIR)
    assert scalars['steps/train_loss'] == [
        (r['step'], pytest.approx(r['train_loss'])) for r in kept
    ]
    assert scalars['test_accuracy'] == [(10, pytest.approx(0.6))]


def test_the_train_curve_takes_epochs_the_step_log_lacks_from_the_history():
    logged = steps(3)[4:]  # A run resumed at epoch 2 by a version that kept no step log before.
    curve = metric_writers.train_curve(history(3), logged)
    assert curve == history(3)[:1] + logged
    assert metric_writers.train_curve(history(3), steps(3)) == steps(3)


def test_the_curves_name_the_run_and_their_axes(tmp_path):
    figure = metric_writers.plot_curves(
        history(2), steps(2), str(tmp_path / 'curves.png'), 'quick-seed0'
    )
    (axes,) = figure.axes
    assert axes.get_title() == 'quick-seed0'
    assert axes.get_xlabel() == 'epoch' and axes.get_ylabel() == 'loss / accuracy'
    labels = {text.get_text() for text in axes.get_legend().get_texts()}
    assert labels == {'train loss', 'train acc', 'val acc', 'test acc'}


def test_a_failed_plot_is_not_lost(tmp_path, monkeypatch):
    def broken_plot(history, steps, path, title):
        raise RuntimeError('no fonts')

    monkeypatch.setattr(metric_writers, 'plot_curves', broken_plot)
    log = metric_writers.RunLog(str(tmp_path), num_epochs=1)
    log.write_epoch(history(1))
    with pytest.raises(RuntimeError, match='no fonts'):
        log.close()


def test_a_log_line_of_valid_json_but_no_record_is_damaged(tmp_path, capsys):
    (tmp_path / metric_writers.STEPS_FILE).write_text('{"step": 5}\n[1, 2]\n{"epoch": 1}\n')
    assert metric_writers.read_steps(str(tmp_path)) == [{'step': 5}]
    assert 'steps.jsonl line 3 is damaged (not a JSON object with a "step")' in (
        capsys.readouterr().err
    )
    (tmp_path / metric_writers.METRICS_FILE).write_text('"epoch 1"\n')
    with pytest.raises(errors.RunDirError, match=r'metrics.jsonl line 1 is damaged \(not a JSON'):
        metric_writers.read_history(str(tmp_path))
