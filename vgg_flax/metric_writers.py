"""Where a run's metrics go: `metrics.jsonl`, `steps.jsonl`, TensorBoard events, `curves.png`."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer import record_writer
from tqdm import tqdm

from vgg_flax import errors, records, run_dir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS_FILE = 'metrics.jsonl'
STEPS_FILE = 'steps.jsonl'
CURVES_FILE = 'curves.png'
TENSORBOARD_DIR = 'tensorboard'


def _write_jsonl(path: str, records: Sequence[dict[str, Any]]) -> None:
    with run_dir.atomic_write(path) as f:
        f.writelines(json.dumps(record) + '\n' for record in records)


def _read_jsonl(path: str, skip_damaged: bool = False) -> list[dict[str, Any]]:
    """The records of a jsonl file. A line that does not parse is a RunDirError naming it, or
    with `skip_damaged` (a log that a kill can cut mid-line) dropped with a warning."""
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get('step'), int):
                    raise ValueError('not a JSON object with a "step"')
                records.append(record)
            except ValueError as e:
                if not skip_damaged:
                    raise errors.RunDirError(
                        f'{path} line {number} is damaged ({e}); the run writes this file from the '
                        'history in its checkpoints, which a resumed run writes again.'
                    ) from None
                print(
                    f'warning: {path} line {number} is damaged ({e}); dropped it.', file=sys.stderr
                )
    return records


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
    return _read_jsonl(path, skip_damaged=True) if os.path.exists(path) else []


def train_curve(
    history: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The points of the train curves, by step: the step log's and the epochs' ends.

    The step log's points are the epoch's running means at fractions of an epoch, as D2L's
    animator draws them; the epochs' ends also cover epochs that the step log lacks (a run begun
    before it existed).
    """
    return sorted({r['step']: r for r in [*history, *steps]}.values(), key=lambda r: r['step'])


def plot_curves(
    history: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]], path: str, title: str
) -> Figure:
    """Train loss and accuracy through each epoch and test accuracy per epoch evaluated, as in
    the lesson (and validation accuracy, where the run holds out a validation set); for a
    population, the members' mean with their range as a band. `title` names the run.

    Uses matplotlib's object API, not pyplot, so it can run on a background thread.
    """
    from matplotlib.figure import Figure  # Imported when used: slow to import.

    train = train_curve(history, steps)
    evaluated = records.evaluated(list(history))
    epochs = [record['epoch'] for record in history]
    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.subplots()
    for points, key, style, label in (
        (train, 'train_loss', '.-', 'train loss'),
        (train, 'train_accuracy', '.--', 'train acc'),
        (evaluated, 'val_accuracy', 'v:', 'val acc'),
        (evaluated, 'test_accuracy', '^-.', 'test acc'),
    ):
        if not points or key not in points[0]:  # No evaluation yet, or no validation set.
            continue
        xs = [r['epoch'] for r in points]
        (line,) = ax.plot(xs, [r[key] for r in points], style, label=label)
        if all('members' in r for r in points):  # A population: its mean, its range shaded.
            values = [[m[key] for m in r['members']] for r in points]
            ax.fill_between(
                xs,
                [min(v) for v in values],
                [max(v) for v in values],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    ax.set_title(title, fontsize='medium')
    ax.set_xlabel('epoch')
    ax.set_ylabel('loss / accuracy')
    ax.set_xlim(0, max(epochs) + 0.1)
    ax.set_xticks(range(max(epochs) + 1) if max(epochs) <= 20 else ax.get_xticks())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return fig


class SummaryWriter:
    """Scalars into a TensorBoard event file in `logdir`, with TensorBoard's own record writer.

    Not TensorBoard's `EventFileWriter`: it imports TensorFlow whenever TensorFlow is installed
    (seconds, and a TFDS install has it), while its `RecordWriter` needs nothing but a file.
    """

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = f'events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}'
        self._file = open(os.path.join(logdir, name), 'ab')  # noqa: SIM115 (closed by close)
        self._writer = record_writer.RecordWriter(self._file)
        self._write(event_pb2.Event(file_version='brain.Event:2'))

    def _write(self, event: event_pb2.Event) -> None:
        event.wall_time = time.time()
        self._writer.write(event.SerializeToString())
        self._writer.flush()

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._write(
            event_pb2.Event(
                step=step,
                summary=summary_pb2.Summary(
                    value=[
                        summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
                        for tag, value in scalars.items()
                    ]
                ),
            )
        )

    def drop_after(self, step: int) -> None:
        """Makes TensorBoard drop the points logged after `step` (by a run killed after its last
        checkpoint, which a resumed run logs again), as the step log does: a session restart at
        `step + 1` purges every earlier event of that step or later."""
        self._write(
            event_pb2.Event(
                step=step + 1, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            )
        )

    def close(self) -> None:
        self._writer.close()


class RunLog:
    """Writes a run's metrics everywhere a researcher looks: jsonl, TensorBoard, plot, console.

    Per epoch, `metrics.jsonl`, TensorBoard scalars at the epoch's last step and a printed line;
    through each epoch, the step log `steps.jsonl` and TensorBoard scalars under `steps/`. All
    TensorBoard points are on the step axis, so a resume's session restart drops every point
    logged after the checkpoint, the epochs' too. The plot
    is drawn on a background thread, so the next epoch's steps need not wait for it. A run
    resumed at `step` with epoch `history` drops the step records logged after `step` (before a
    kill, after the last checkpoint): it logs those steps again. Only an `active` log (that of
    the chief process of a multi-process job) writes anything.
    """

    SCALARS = (
        'train_loss',
        'train_accuracy',
        'val_loss',
        'val_accuracy',
        'test_loss',
        'test_accuracy',
        'examples_per_sec',
        'learning_rate',
    )
    STEP_SCALARS = ('train_loss', 'train_accuracy', 'examples_per_sec', 'learning_rate')

    def __init__(
        self,
        workdir: str,
        num_epochs: int,
        history: Sequence[dict[str, Any]] = (),
        step: int = 0,
        active: bool = True,
    ):
        self._workdir = workdir
        self._num_epochs = num_epochs
        self._active = active
        if not active:
            return
        self._history = list(history)
        self._plotter = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._plot: concurrent.futures.Future | None = None
        with run_dir.stops_the_run_if_a_write_fails():
            self._steps = [record for record in read_steps(workdir) if record['step'] <= step]
            _write_jsonl(os.path.join(workdir, STEPS_FILE), self._steps)
            self._tensorboard = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))
            if step:
                self._tensorboard.drop_after(step)
            self._refresh()

    def write_step(self, record: dict[str, Any], print_line: bool = False) -> None:
        """Appends a step record: 'step', fractional 'epoch' and `STEP_SCALARS`; prints it as
        a line if `print_line` (where no progress bar shows it: a batch job's log)."""
        if not self._active:
            return
        self._steps.append(record)
        with run_dir.stops_the_run_if_a_write_fails():
            with open(os.path.join(self._workdir, STEPS_FILE), 'a') as f:
                f.write(json.dumps(record) + '\n')
            self._tensorboard.write_scalars(
                record['step'], scalars(record, self.STEP_SCALARS, 'steps/')
            )
        if print_line:
            print(format_progress(record, self._num_epochs), flush=True)

    def write_epoch(self, history: Sequence[dict[str, Any]]) -> None:
        """Records `history[-1]` (the epoch just finished), prints it, refreshes the files."""
        if not self._active:
            return
        latest = history[-1]
        with run_dir.stops_the_run_if_a_write_fails():
            self._tensorboard.write_scalars(latest['step'], scalars(latest, self.SCALARS))
            tqdm.write(format_epoch(latest, self._num_epochs), file=sys.stdout)
            self._history = list(history)
            self._refresh()

    def _refresh(self) -> None:
        write_history(self._workdir, self._history)
        if self._history:
            self._wait_for_plot()
            self._plot = self._plotter.submit(
                plot_curves,
                self._history,
                list(self._steps),
                os.path.join(self._workdir, CURVES_FILE),
                os.path.basename(os.path.abspath(self._workdir)),
            )

    def _wait_for_plot(self) -> None:
        """Waits for the last plot; raises what it raised."""
        if self._plot is not None:
            self._plot.result()
            self._plot = None

    def rewind(self, step: int) -> None:
        """Drops what was logged after `step`, as a run resumed at `step` would: the log then
        shows what the checkpoints hold. A file that cannot be rewritten (a full disk) is left
        as it is; the resume rewrites it."""
        if not self._active:
            return
        self._history = [record for record in self._history if record['step'] <= step]
        self._steps = [record for record in self._steps if record['step'] <= step]
        try:
            write_history(self._workdir, self._history)
            _write_jsonl(os.path.join(self._workdir, STEPS_FILE), self._steps)
            self._tensorboard.drop_after(step)
        except OSError:
            pass

    def close(self) -> None:
        if not self._active:
            return
        try:
            with run_dir.stops_the_run_if_a_write_fails():
                self._wait_for_plot()
        finally:
            self._plotter.shutdown()
            self._tensorboard.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Closes; a run stopped by a failed save first rewinds to the last checkpoint saved."""
        if isinstance(exc_info[1], errors.SaveError):
            self.rewind(exc_info[1].kept_step or 0)
        self.close()


def scalars(record: dict[str, Any], keys: Sequence[str], prefix: str = '') -> dict[str, float]:
    """TensorBoard's scalars of a record: those of `keys` it has (a population's means), and
    each member's values under 'members/I/'."""
    values = {f'{prefix}{key}': record[key] for key in keys if key in record}
    for i, member in enumerate(record.get('members', ())):
        values.update({f'{prefix}members/{i}/{key}': member[key] for key in keys if key in member})
    return values


def format_epoch(record: dict[str, Any], num_epochs: int) -> str:
    """One line per epoch, like the lesson's printout (a population's means, and the range of
    its members' test accuracy); an epoch between evaluations has train metrics only."""
    members = [m['test_accuracy'] for m in record.get('members', ()) if 'test_accuracy' in m]
    return (
        f'epoch {record["epoch"]}/{num_epochs}  loss {record["train_loss"]:.4f}  '
        f'train acc {record["train_accuracy"]:.4f}  '
        + (f'val acc {record["val_accuracy"]:.4f}  ' if 'val_accuracy' in record else '')
        + (f'test acc {record["test_accuracy"]:.4f}  ' if 'test_accuracy' in record else '')
        + (f'({len(members)} members: {min(members):.4f}-{max(members):.4f})  ' if members else '')
        + f'{record["examples_per_sec"]:.1f} examples/sec  {record["epoch_seconds"]:.1f} s'
    )


def format_progress(record: dict[str, Any], num_epochs: int) -> str:
    """One line of the step log, for a log file where no progress bar is drawn."""
    return (
        f'  step {record["step"]}  epoch {record["epoch"]:.2f}/{num_epochs}  '
        f'loss {record["train_loss"]:.4f}  train acc {record["train_accuracy"]:.4f}  '
        f'{record["examples_per_sec"]:.1f} examples/sec'
    )
