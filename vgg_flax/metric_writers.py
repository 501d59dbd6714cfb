"""Where per-epoch metrics go: `metrics.jsonl`, TensorBoard event files and `curves.png`.

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
CURVES_FILE = 'curves.png'
TENSORBOARD_DIR = 'tensorboard'


def write_history(workdir: str, history: Sequence[dict[str, Any]]) -> None:
    """Rewrites `metrics.jsonl`, one JSON object per epoch, from the full history.

    Rewriting (not appending) keeps the file equal to the checkpoint's history after a resume.
    """
    path = os.path.join(workdir, METRICS_FILE)
    with open(path + '.tmp', 'w') as f:
        for record in history:
            f.write(json.dumps(record) + '\n')
    os.replace(path + '.tmp', path)


def read_history(workdir: str) -> list[dict[str, Any]]:
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(history: Sequence[dict[str, Any]], path: str) -> None:
    """Train loss, train accuracy and test accuracy per epoch, as the lesson's plot shows.

    Uses matplotlib's object API, not pyplot, so it can run on a background thread.
    """
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    epochs = [record['epoch'] for record in history]
    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.subplots()
    ax.plot(epochs, [r['train_loss'] for r in history], 'o-', label='train loss')
    ax.plot(epochs, [r['train_accuracy'] for r in history], 's--', label='train acc')
    ax.plot(epochs, [r['test_accuracy'] for r in history], '^-.', label='test acc')
    ax.set_xlabel('epoch')
    ax.set_xlim(0.5, max(epochs) + 0.5)
    ax.set_xticks(epochs if len(epochs) <= 20 else ax.get_xticks())
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


class EpochLog:
    """Writes each finished epoch everywhere a researcher looks: jsonl, TensorBoard, plot.

    The plot is drawn on a background thread, so the next epoch's steps need not wait for it.
    """

    SCALARS = ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
               'examples_per_sec', 'learning_rate')

    def __init__(self, workdir: str):
        self._workdir = workdir
        self._tensorboard = TensorBoardWriter(os.path.join(workdir, TENSORBOARD_DIR))
        self._plotter = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._plot: concurrent.futures.Future | None = None

    def write(self, history: Sequence[dict[str, Any]]) -> None:
        """Records `history[-1]` (the epoch just finished) and refreshes the files."""
        latest = history[-1]
        self._tensorboard.scalars(latest['epoch'],
                                  {key: latest[key] for key in self.SCALARS})
        self.rewrite(history)

    def rewrite(self, history: Sequence[dict[str, Any]]) -> None:
        write_history(self._workdir, history)
        if history:
            self._wait_for_plot()
            self._plot = self._plotter.submit(plot_curves, list(history),
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
