"""Where a run's metrics go: `metrics.jsonl`, `steps.jsonl`, TensorBoard events, `curves.png`.

The TensorBoard writer is a few lines of TFRecord framing around TensorBoard's own protos, so
logging never imports TensorFlow (which GPU images often lack).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import struct
import time
from typing import Any, Sequence

METRICS_FILE = 'metrics.jsonl'
STEPS_FILE = 'steps.jsonl'
CURVES_FILE = 'curves.png'
TENSORBOARD_DIR = 'tensorboard'


def _write_jsonl(path: str, records: Sequence[dict[str, Any]]) -> None:
    with open(path + '.tmp', 'w') as f:
        for record in records:
            f.write(json.dumps(record) + '\n')
    os.replace(path + '.tmp', path)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_history(workdir: str, history: Sequence[dict[str, Any]]) -> None:
    """Rewrites `metrics.jsonl`, one JSON object per epoch, from the full history.

    Rewriting (not appending) keeps the file equal to the checkpoint's history after a resume.
    """
    _write_jsonl(os.path.join(workdir, METRICS_FILE), history)


def read_history(workdir: str) -> list[dict[str, Any]]:
    return _read_jsonl(os.path.join(workdir, METRICS_FILE))


def read_steps(workdir: str) -> list[dict[str, Any]]:
    """The step log: the epoch's running train metrics every `train.log_every_steps` steps."""
    path = os.path.join(workdir, STEPS_FILE)
    return _read_jsonl(path) if os.path.exists(path) else []


def train_curve(history: Sequence[dict[str, Any]],
                steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points of the train curves, by step: the step log's and the epochs' ends.

    The step log's points are the epoch's running means at fractions of an epoch, as D2L's
    animator draws them; the epochs' ends also cover epochs that the step log lacks (a run begun
    before it existed).
    """
    return sorted({r['step']: r for r in [*history, *steps]}.values(), key=lambda r: r['step'])


def plot_curves(history: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]],
                path: str) -> None:
    """Train loss and accuracy through each epoch and test accuracy per epoch, as in the lesson.

    Uses matplotlib's object API, not pyplot, so it can run on a background thread.
    """
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    train = train_curve(history, steps)
    epochs = [record['epoch'] for record in history]
    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.subplots()
    ax.plot([r['epoch'] for r in train], [r['train_loss'] for r in train], '.-',
            label='train loss')
    ax.plot([r['epoch'] for r in train], [r['train_accuracy'] for r in train], '.--',
            label='train acc')
    ax.plot(epochs, [r['test_accuracy'] for r in history], '^-.', label='test acc')
    ax.set_xlabel('epoch')
    ax.set_xlim(0, max(epochs) + 0.1)
    ax.set_xticks(range(max(epochs) + 1) if max(epochs) <= 20 else ax.get_xticks())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C, rotated and offset."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TensorBoardWriter:
    """Appends scalar summaries to a TensorBoard event file in `logdir`."""

    def __init__(self, logdir: str):
        from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        os.makedirs(logdir, exist_ok=True)
        name = f'events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}'
        self._file = open(os.path.join(logdir, name), 'ab')
        self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

    def _write(self, event: Any) -> None:
        data = event.SerializeToString()
        header = struct.pack('<Q', len(data))
        self._file.write(header + struct.pack('<I', _masked_crc32c(header)) + data +
                         struct.pack('<I', _masked_crc32c(data)))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = self._summary_pb2.Summary(value=[
            self._summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
            for tag, value in values.items()])
        self._write(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class RunLog:
    """Writes a run's metrics everywhere a researcher looks: jsonl, TensorBoard, plot.

    Per epoch, `metrics.jsonl` and TensorBoard scalars by epoch; through each epoch, the step
    log `steps.jsonl` and TensorBoard scalars under `steps/` by step. The plot is drawn on a
    background thread, so the next epoch's steps need not wait for it.
    """

    SCALARS = ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
               'examples_per_sec', 'learning_rate')
    STEP_SCALARS = ('train_loss', 'train_accuracy', 'examples_per_sec', 'learning_rate')

    def __init__(self, workdir: str):
        self._workdir = workdir
        self._history: list[dict[str, Any]] = []
        self._steps: list[dict[str, Any]] = []
        self._tensorboard = TensorBoardWriter(os.path.join(workdir, TENSORBOARD_DIR))
        self._plotter = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._plot: concurrent.futures.Future | None = None

    def resume(self, history: Sequence[dict[str, Any]], step: int) -> None:
        """Makes the files those of a run restored at `step` with this epoch history.

        Step records after `step` (logged before a kill, after the last checkpoint) are dropped:
        the resumed run logs those steps again.
        """
        self._steps = [record for record in read_steps(self._workdir) if record['step'] <= step]
        _write_jsonl(os.path.join(self._workdir, STEPS_FILE), self._steps)
        self._history = list(history)
        self._refresh()

    def write_step(self, record: dict[str, Any]) -> None:
        """Appends a step record: 'step', fractional 'epoch' and `STEP_SCALARS`."""
        self._steps.append(record)
        with open(os.path.join(self._workdir, STEPS_FILE), 'a') as f:
            f.write(json.dumps(record) + '\n')
        self._tensorboard.scalars(record['step'], {
            f'steps/{key}': record[key] for key in self.STEP_SCALARS})

    def write_epoch(self, history: Sequence[dict[str, Any]]) -> None:
        """Records `history[-1]` (the epoch just finished) and refreshes the files."""
        latest = history[-1]
        self._tensorboard.scalars(latest['epoch'],
                                  {key: latest[key] for key in self.SCALARS})
        self._history = list(history)
        self._refresh()

    def _refresh(self) -> None:
        write_history(self._workdir, self._history)
        if self._history:
            self._wait_for_plot()
            self._plot = self._plotter.submit(plot_curves, self._history, list(self._steps),
                                              os.path.join(self._workdir, CURVES_FILE))

    def _wait_for_plot(self) -> None:
        """Waits for the last plot; raises what it raised."""
        if self._plot is not None:
            self._plot.result()
            self._plot = None

    def close(self) -> None:
        try:
            self._wait_for_plot()
        finally:
            self._plotter.shutdown()
            self._tensorboard.close()
