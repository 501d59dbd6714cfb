"""The evaluation's report and predictions.png (its CLI's runs are in test_main and test_faults)."""

from __future__ import annotations

import numpy as np

from vgg_flax import evaluate, input_pipeline

from conftest import PNG_MAGIC

NAMES = list(input_pipeline.CLASS_NAMES)


def test_the_shown_examples_are_the_first_mistakes_then_right_ones():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    predictions = np.array([0, 1, 0, 3, 0, 5, 6, 0, 8, 9])  # Wrong at 2, 4 and 7.
    assert evaluate.shown_examples(labels, predictions, 9).tolist() == [2, 4, 7, 0, 1, 3, 5, 6, 8]
    # Two thirds of them mistakes where there are that many.
    assert evaluate.shown_examples(labels, predictions, 3).tolist() == [2, 4, 0]
    # Where the right ones run out, more mistakes; never more images than asked or held.
    assert evaluate.shown_examples(labels, labels, 4).tolist() == [0, 1, 2, 3]
    assert evaluate.shown_examples(labels, labels + 1, 4).tolist() == [0, 1, 2, 3]
    assert len(evaluate.shown_examples(labels, predictions, 100)) == 10


def test_predictions_png_titles_each_image_with_both_class_names_in_full(tmp_path):
    images = np.zeros((10, 28, 28, 1), np.uint8)
    labels = np.arange(10)
    predictions = (labels + 1) % 10
    path = tmp_path / 'predictions.png'
    figure = evaluate.plot_predictions(images, labels, predictions, NAMES, str(path), 'run, step 5')
    titles = [ax.get_title() for ax in figure.axes if ax.get_images()]
    assert titles[0] == 'true: T-shirt/top\npred: Trouser'
    assert titles[-1] == 'true: Ankle boot\npred: T-shirt/top'
    assert 'run, step 5' in figure.get_suptitle()
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_the_report_names_every_class_in_full():
    matrix = np.eye(10, dtype=np.int64) * 100
    report = evaluate.format_report(matrix, NAMES, step=7)
    assert 'test accuracy 1.0000 on 1000 images' in report
    assert '0 T-shirt/top' in report and '9 Ankle boot' in report
