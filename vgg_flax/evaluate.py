"""Evaluates a run's checkpoint: accuracy, per-class accuracy, confusion matrix, predictions.

  python -m vgg_flax.evaluate --workdir=runs/d2l [--step=N] [--idx_dir=DIR]

Prints the numbers, and writes `evaluation.json` and `predictions.png` (test images with their
true and predicted class names, as the lesson's `predict` shows them) into the workdir. For a
population (`config.population_size` > 1) the numbers are those of its ensemble (the mean of the
members' logits), and each member's accuracy is listed beside.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from vgg_flax import (
    checkpointing,
    cli,
    config_schema,
    environment,
    errors,
    input_pipeline,
    population,
    run_dir,
    train_state,
    train_steps,
    validation,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EVALUATION_FILE = 'evaluation.json'
PREDICTIONS_FILE = 'predictions.png'
MAX_IMAGES = 1000  # Test images predictions.png can show: a minute of matplotlib's time.

_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate; default: the latest.')
_DATA_SOURCE = flags.DEFINE_enum(
    'data_source',
    None,
    list(config_schema.FIELDS['data.source'].choices),
    'Override config.data.source of the run.',
)
_IDX_DIR = flags.DEFINE_string('idx_dir', None, 'Override config.data.idx_dir of the run.')
_TFDS_DATA_DIR = flags.DEFINE_string(
    'tfds_data_dir', None, 'Override config.data.tfds_data_dir of the run.'
)
_NUM_IMAGES = flags.DEFINE_integer(
    'num_images',
    18,
    f'Test images shown in predictions.png, 1 to {MAX_IMAGES}: the first ones the model gets '
    'wrong (up to two thirds of them), then the first it gets right.',
)


def predict(
    state: train_state.TrainState,
    split: input_pipeline.Split,
    image_size: int,
    batch_size: int,
    tta: bool = False,
) -> np.ndarray:
    """Predicted class of every example of `split` (with `tta`, from it and its mirror).

    For a population, shape (members + 1, examples): each member's predictions, then those of
    the ensemble, the mean of the members' logits.
    """
    images = jax.device_put(split.images)
    predict_one = functools.partial(train_steps.predict_step, image_size=image_size, tta=tta)

    @jax.jit
    def predict_fn(
        state: train_state.TrainState, images: jax.Array, indices: jax.Array
    ) -> jax.Array:
        logits = population.per_member(
            predict_one, state.num_members, in_axes=(state.member_axes(), None, None)
        )(state, images, indices)
        if not state.is_population:
            return logits
        return jnp.concatenate([logits, logits.mean(axis=0, keepdims=True)])

    indices, mask = input_pipeline.eval_batches(len(split), batch_size)
    predictions = [np.asarray(predict_fn(state, images, batch).argmax(-1)) for batch in indices]
    return np.concatenate(predictions, axis=-1)[..., mask.reshape(-1) > 0]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def class_names(num_classes: int) -> list[str]:
    if num_classes == len(input_pipeline.CLASS_NAMES):
        return list(input_pipeline.CLASS_NAMES)
    return [str(i) for i in range(num_classes)]


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    return matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)


def format_report(matrix: np.ndarray, names: list[str], step: int) -> str:
    lines = [
        f'checkpoint step {step}: test accuracy {matrix.trace() / matrix.sum():.4f} '
        f'on {matrix.sum()} images',
        '',
        f'{"class":<12} {"accuracy":>8} {"images":>7}',
    ]
    lines += [
        f'{name:<12} {acc:>8.4f} {total:>7}'
        for name, acc, total in zip(
            names, per_class_accuracy(matrix), matrix.sum(axis=1), strict=True
        )
    ]
    width = max(5, len(str(matrix.max())) + 1)
    name_width = max(map(len, names))
    lines += [
        '',
        'confusion matrix (rows: true class, columns: predicted class)',
        ' ' * (name_width + 2) + ''.join(f'{i:>{width}}' for i in range(len(names))),
    ]
    lines += [
        f'{i} {name:<{name_width}}' + ''.join(f'{n:>{width}}' for n in row)
        for i, (name, row) in enumerate(zip(names, matrix, strict=True))
    ]
    return '\n'.join(lines)


def shown_examples(labels: np.ndarray, predictions: np.ndarray, num_images: int) -> np.ndarray:
    """The indices of the `num_images` test images predictions.png shows: the first ones the
    model gets wrong, which a researcher looks for, up to two thirds of them (more where too few
    are right), then the first ones it gets right, for comparison."""
    wrong = np.flatnonzero(labels != predictions)
    right = np.flatnonzero(labels == predictions)
    num_wrong = min(len(wrong), max(num_images - len(right), -(-2 * num_images // 3)))
    num_right = min(len(right), num_images - num_wrong)
    return np.concatenate([wrong[:num_wrong], right[:num_right]])


def plot_predictions(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    names: list[str],
    path: str,
    title: str,
) -> Figure:
    """A grid of images, each titled with its true and predicted class; wrong ones in red."""
    from matplotlib.figure import Figure  # Imported when used: slow to import.

    cols = min(len(images), 9)
    rows = -(-len(images) // cols)
    fig = Figure(figsize=(1.6 * cols, 2.0 * rows + 0.4), dpi=120, layout='constrained')
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    shown = axes.reshape(-1)[: len(images)]  # The last row may have empty cells.
    for ax, image, label, prediction in zip(shown, images, labels, predictions, strict=True):
        ax.imshow(image[..., 0], cmap='gray')
        ax.set_title(
            f'true: {names[label]}\npred: {names[prediction]}',
            fontsize=7,
            color='black' if label == prediction else 'red',
        )
    fig.suptitle(f'{title}: the first mistakes (red), then right predictions', fontsize=8)
    fig.savefig(path)
    return fig


def warn_if_other_data(workdir: str, test_split: input_pipeline.Split) -> None:
    """Says so where the test split is not the one the run recorded (`run_dir.DATA_FILE`):
    other files through --idx_dir, or the run's own files changed since, so that the accuracy
    below is not taken for the run's own evaluation."""
    path = os.path.join(workdir, run_dir.DATA_FILE)
    if not os.path.isfile(path):
        return
    recorded = run_dir.read_json(path, 'delete it; evaluating does not need it.')
    recorded = recorded.get('test') if isinstance(recorded, dict) else None
    now = input_pipeline.fingerprint(jnp.asarray(test_split.images), jnp.asarray(test_split.labels))
    if recorded != now:
        print(
            f'warning: this test split ({now}) is not the one {workdir} was evaluated on '
            f'({recorded}, in {run_dir.DATA_FILE}): the numbers below are on other data.',
            file=sys.stderr,
        )


def evaluate_run(
    workdir: str,
    step: int | None = None,
    data_overrides: dict[str, Any] | None = None,
    num_images: int = 18,
) -> dict[str, Any]:
    """Restores the run's checkpoint, evaluates it on the test split and writes the reports.

    Every check that can refuse the request comes before the data and the model are loaded.
    """
    if not 1 <= num_images <= MAX_IMAGES:
        raise ValueError(
            f'--num_images={num_images!r} must be an integer from 1 to {MAX_IMAGES}: the test '
            'images predictions.png shows.'
        )
    config = run_dir.read_config(workdir)
    config.data.update({k: v for k, v in (data_overrides or {}).items() if v is not None})
    validation.validate_config(config)
    checkpointing.check_step(workdir, step, checkpointing.saved_steps(workdir))
    test_split = input_pipeline.load_split(config.data, 'test', config.model.num_classes)
    warn_if_other_data(workdir, test_split)
    state, step = checkpointing.restore_state(config, workdir, step, test_split.images.shape[-1])
    if holder := run_dir.held_by(workdir):
        print(
            f'{workdir} is still training ({holder}): evaluating its latest checkpoint so far, '
            f'step {step}.\n'
        )
    predictions = predict(
        state, test_split, config.data.image_size, config.train.eval_batch_size, config.eval.tta
    )
    members = []
    if state.is_population:  # Each member's predictions, then the ensemble's.
        members = [float(np.mean(p == test_split.labels)) for p in predictions[:-1]]
        predictions = predictions[-1]
    num_classes = config.model.num_classes
    matrix = confusion_matrix(test_split.labels, predictions, num_classes)
    names = class_names(num_classes)
    if members:
        print(
            f'a population of {len(members)}: test accuracy of each member '
            + ', '.join(f'{a:.4f}' for a in members)
            + f' (mean {np.mean(members):.4f}); '
            'below, their ensemble (the mean of their logits)\n'
        )
    print(format_report(matrix, names, step))
    evaluation = {
        'step': step,
        'test_accuracy': float(matrix.trace() / matrix.sum()),
        'num_examples': int(matrix.sum()),
        'per_class_accuracy': dict(zip(names, map(float, per_class_accuracy(matrix)), strict=True)),
        'confusion_matrix': matrix.tolist(),
        **({'members_test_accuracy': members} if members else {}),
    }
    try:
        run_dir.write_json_atomic(os.path.join(workdir, EVALUATION_FILE), evaluation)
        shown = shown_examples(test_split.labels, predictions, num_images)
        plot_predictions(
            test_split.images[shown],
            test_split.labels[shown],
            predictions[shown],
            names,
            os.path.join(workdir, PREDICTIONS_FILE),
            f'{os.path.basename(os.path.abspath(workdir))}, step {step}',
        )
    except OSError as e:  # A read-only or full disk, say.
        raise errors.RunDirError(
            f'writing {e.filename2 or e.filename} failed ({e.strerror or e}); the numbers above '
            f'are not saved: make {workdir} writable (or free disk space) and evaluate again.'
        ) from e
    return evaluation


def main(argv: list[str]) -> int:
    environment.start_cli(argv)
    overrides = {
        'source': _DATA_SOURCE.value,
        'idx_dir': _IDX_DIR.value,
        'tfds_data_dir': _TFDS_DATA_DIR.value,
    }
    try:
        evaluate_run(cli.WORKDIR.value, _STEP.value, overrides, _NUM_IMAGES.value)
    except (ValueError, errors.DataError, errors.RunDirError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    flags.mark_flags_as_required(['workdir'])
    app.run(main, flags_parser=cli.parse_flags)
