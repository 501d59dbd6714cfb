"""Evaluates a run's checkpoint: accuracy, per-class accuracy, confusion matrix, predictions.

  python -m vgg_flax.evaluate --workdir=runs/d2l [--step=N] [--idx_dir=DIR]
      [--split=validation] [--tta=false] [--tta_translate=N]

Prints the numbers, and writes `evaluation.json` and `predictions.png` (test images with their
true and predicted class names, as the lesson's `predict` shows them) into the workdir;
`--split=validation` evaluates the run's held-out validation set instead, into
`evaluation_validation.json` and `predictions_validation.png`: where a recipe's test-time views
are chosen without the test set. For a population (`config.population_size` > 1) the numbers are
those of its ensemble (the mean of the members' logits), and each member's accuracy is listed
beside.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from vgg_flax import (
    checkpointing,
    cli,
    config_schema,
    device_data,
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
# The sets evaluated, by the prefix of their metrics in a run's records ('val_accuracy'...).
# Validation: what `config.data.validation_examples` holds out of the train split.
SPLITS = {'test': 'test', 'validation': 'val'}
MAX_IMAGES = 1000  # Images predictions.png can show: a minute of matplotlib's time.

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
_SPLIT = flags.DEFINE_enum('split', 'test', list(SPLITS), 'The set to evaluate.')
_TTA = flags.DEFINE_bool('tta', None, 'Override config.eval.tta of the run.')
_TTA_TRANSLATE = flags.DEFINE_integer(
    'tta_translate', None, 'Override config.eval.tta_translate of the run.'
)
_NUM_IMAGES = flags.DEFINE_integer(
    'num_images',
    18,
    f'Images shown in predictions.png, 1 to {MAX_IMAGES}: the first ones the model gets '
    'wrong (up to two thirds of them), then the first it gets right.',
)


def predict(
    state: train_state.TrainState,
    split: input_pipeline.Split,
    image_size: int,
    batch_size: int,
    tta: bool = False,
    tta_translate: int = 0,
) -> np.ndarray:
    """Predicted class of every example of `split` (with `tta` and `tta_translate`, from the
    views of it that `train_steps.predict_step` averages).

    For a population, shape (members + 1, examples): each member's predictions, then those of
    the ensemble, the mean of the members' logits.
    """
    images = jax.device_put(split.images)
    predict_one = functools.partial(
        train_steps.predict_step, image_size=image_size, tta=tta, tta_translate=tta_translate
    )

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


def format_report(matrix: np.ndarray, names: list[str], step: int, split: str = 'test') -> str:
    lines = [
        f'checkpoint step {step}: {split} accuracy {matrix.trace() / matrix.sum():.4f} '
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


def warn_if_other_data(workdir: str, name: str, split: input_pipeline.Split) -> None:
    """Says so where `split` (the whole 'train' or 'test' split as loaded) is not the one the run
    recorded (`run_dir.DATA_FILE`): other files through --idx_dir, or the run's own files changed
    since, so that the accuracy below is not taken for the run's own evaluation."""
    path = os.path.join(workdir, run_dir.DATA_FILE)
    if not os.path.isfile(path):
        return
    recorded = run_dir.read_json(path, 'delete it; evaluating does not need it.')
    recorded = recorded.get(name) if isinstance(recorded, dict) else None
    now = input_pipeline.fingerprint(jnp.asarray(split.images), jnp.asarray(split.labels))
    if recorded != now:
        print(
            f'warning: this {name} split ({now}) is not the one {workdir} was trained and '
            f'evaluated on ({recorded}, in {run_dir.DATA_FILE}): the numbers below are on other '
            'data.',
            file=sys.stderr,
        )


def load_evaluated(
    config: ml_collections.ConfigDict, workdir: str, split: str
) -> input_pipeline.Split:
    """The examples of `split` ('test', or 'validation': the train split's last
    `config.data.validation_examples`, which the run never trained on), warning where the data
    is not the run's."""
    source = 'test' if split == 'test' else 'train'
    loaded = input_pipeline.load_split(config.data, source, config.model.num_classes)
    warn_if_other_data(workdir, source, loaded)
    if split == 'test':
        return loaded
    start = device_data.num_train_examples(config, len(loaded))
    if start <= 0:
        raise ValueError(
            f'config.data.validation_examples={config.data.validation_examples} would hold out '
            f'all {len(loaded)} training examples loaded from {config.data.source!r}: not the '
            f'data {workdir} held its validation set out of.'
        )
    return input_pipeline.Split(images=loaded.images[start:], labels=loaded.labels[start:])


def output_paths(workdir: str, split: str) -> tuple[str, str]:
    """Where the evaluation of `split` and its predictions' figure go: the test split's in
    `EVALUATION_FILE` and `PREDICTIONS_FILE`, another's beside them, named after it."""
    if split == 'test':
        return os.path.join(workdir, EVALUATION_FILE), os.path.join(workdir, PREDICTIONS_FILE)
    return (
        os.path.join(workdir, f'evaluation_{split}.json'),
        os.path.join(workdir, f'predictions_{split}.png'),
    )


def evaluate_run(
    workdir: str,
    step: int | None = None,
    data_overrides: dict[str, Any] | None = None,
    num_images: int = 18,
    split: str = 'test',
    eval_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restores the run's checkpoint, evaluates it on `split` (with `config.eval`'s test-time
    views, or those `eval_overrides` set) and writes the reports.

    Every check that can refuse the request comes before the data and the model are loaded.
    """
    if not 1 <= num_images <= MAX_IMAGES:
        raise ValueError(
            f'--num_images={num_images!r} must be an integer from 1 to {MAX_IMAGES}: the '
            'images predictions.png shows.'
        )
    if split not in SPLITS:
        raise ValueError(f'--split={split!r} must be one of {", ".join(SPLITS)}.')
    config = run_dir.read_config(workdir)
    config.data.update({k: v for k, v in (data_overrides or {}).items() if v is not None})
    config.eval.update({k: v for k, v in (eval_overrides or {}).items() if v is not None})
    validation.validate_config(config)
    if split == 'validation' and not config.data.validation_examples:
        raise ValueError(
            f'{workdir} held out no validation set (config.data.validation_examples=0): it '
            'trained on the whole train split. Evaluate --split=test, or train with '
            '--config.data.validation_examples=N to hold one out.'
        )
    checkpointing.check_step(workdir, step, checkpointing.saved_steps(workdir))
    examples = load_evaluated(config, workdir, split)
    state, step = checkpointing.restore_state(config, workdir, step, examples.images.shape[-1])
    if holder := run_dir.held_by(workdir):
        print(
            f'{workdir} is still training ({holder}): evaluating its latest checkpoint so far, '
            f'step {step}.\n'
        )
    predictions = predict(
        state,
        examples,
        config.data.image_size,
        config.train.eval_batch_size,
        config.eval.tta,
        config.eval.tta_translate,
    )
    members = []
    if state.is_population:  # Each member's predictions, then the ensemble's.
        members = [float(np.mean(p == examples.labels)) for p in predictions[:-1]]
        predictions = predictions[-1]
    num_classes = config.model.num_classes
    matrix = confusion_matrix(examples.labels, predictions, num_classes)
    names = class_names(num_classes)
    if members:
        print(
            f'a population of {len(members)}: {split} accuracy of each member '
            + ', '.join(f'{a:.4f}' for a in members)
            + f' (mean {np.mean(members):.4f}); '
            'below, their ensemble (the mean of their logits)\n'
        )
    print(format_report(matrix, names, step, split))
    evaluation = {
        'step': step,
        'split': split,
        f'{SPLITS[split]}_accuracy': float(matrix.trace() / matrix.sum()),
        'num_examples': int(matrix.sum()),
        'tta': config.eval.tta,
        'tta_translate': config.eval.tta_translate,
        'per_class_accuracy': dict(zip(names, map(float, per_class_accuracy(matrix)), strict=True)),
        'confusion_matrix': matrix.tolist(),
        **({f'members_{SPLITS[split]}_accuracy': members} if members else {}),
    }
    evaluation_path, predictions_path = output_paths(workdir, split)
    try:
        run_dir.write_json_atomic(evaluation_path, evaluation)
        shown = shown_examples(examples.labels, predictions, num_images)
        plot_predictions(
            examples.images[shown],
            examples.labels[shown],
            predictions[shown],
            names,
            predictions_path,
            f'{os.path.basename(os.path.abspath(workdir))}, step {step}, {split} images',
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
        evaluate_run(
            cli.WORKDIR.value,
            _STEP.value,
            overrides,
            _NUM_IMAGES.value,
            _SPLIT.value,
            {'tta': _TTA.value, 'tta_translate': _TTA_TRANSLATE.value},
        )
    except (ValueError, errors.DataError, errors.RunDirError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    flags.mark_flags_as_required(['workdir'])
    app.run(main, flags_parser=cli.parse_flags)
