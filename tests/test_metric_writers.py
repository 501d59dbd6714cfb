"""The epoch log: metrics.jsonl, TensorBoard events and curves.png drawn off the main thread."""

from __future__ import annotations

import pytest

from vgg_flax import metric_writers

from conftest import PNG_MAGIC


def history(epochs: int) -> list[dict[str, float]]:
    return [{'epoch': e, 'step': 10 * e, 'train_loss': 1 / e, 'train_accuracy': 0.5,
             'test_loss': 1 / e, 'test_accuracy': 0.6, 'examples_per_sec': 100.0,
             'learning_rate': 0.05} for e in range(1, epochs + 1)]


def test_epoch_log_writes_every_file(tmp_path):
    log = metric_writers.EpochLog(str(tmp_path))
    for epochs in (1, 2, 3):
        log.write(history(epochs))
    log.close()
    assert metric_writers.read_history(str(tmp_path)) == history(3)
    assert (tmp_path / metric_writers.CURVES_FILE).read_bytes()[:8] == PNG_MAGIC
    assert any((tmp_path / metric_writers.TENSORBOARD_DIR).iterdir())


def test_a_failed_plot_is_not_lost(tmp_path, monkeypatch):
    def broken_plot(history, path):
        raise RuntimeError('no fonts')

    monkeypatch.setattr(metric_writers, 'plot_curves', broken_plot)
    log = metric_writers.EpochLog(str(tmp_path))
    log.write(history(1))
    with pytest.raises(RuntimeError, match='no fonts'):
        log.close()
