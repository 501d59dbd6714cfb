"""On-device augmentation: deterministic per key, in range, each transform what it says; off by
default, where the recipe trains exactly as it did before augmentation existed. Test-time
augmentation averages the logits of an image with its mirror and its shifts."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from vgg_flax import augment, config_schema, metric_writers, train, train_state, train_steps

from conftest import synthetic_split, tiny_config


def augment_spec(**fields) -> augment.Augment:
    """`config.augment` at its defaults but for `fields`, as the step gets it."""
    augment_config = config_schema.default_config().augment
    augment_config.update(fields)
    return augment.from_config(augment_config)


def pinned_config(idx_dir) -> ml_collections.ConfigDict:
    """The tiny config with VGG-11's blocks, one epoch: the config the pinned losses are of."""
    config = tiny_config(str(idx_dir))
    config.model.conv_arch = ()
    config.train.num_epochs = 1
    return config


def batch() -> np.ndarray:
    images, _ = synthetic_split(64, seed=0)
    return images[..., None]


@pytest.mark.slow
@pytest.mark.parametrize(
    'spec',
    [
        augment_spec(translate=4),
        augment_spec(flip=True),
        augment_spec(erase_prob=1.0),
        augment_spec(translate=2, flip=True, erase_prob=0.5),
    ],
)
def test_each_augmentation_is_deterministic_per_key_and_stays_in_range(spec):
    images = batch()
    first = np.asarray(augment.augment(images, jax.random.key(7), spec))
    again = np.asarray(augment.augment(images, jax.random.key(7), spec))
    other = np.asarray(augment.augment(images, jax.random.key(8), spec))
    assert first.shape == images.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other) and not np.array_equal(first, images)


def test_translation_moves_each_image_by_at_most_the_padding():
    image = np.zeros((1, 28, 28, 1), np.uint8)
    image[0, 14, 14, 0] = 255
    moved = np.asarray(
        augment.augment(np.repeat(image, 200, 0), jax.random.key(0), augment_spec(translate=3))
    )
    rows, cols = np.nonzero(moved[..., 0].reshape(200, 28, 28))[1:]
    assert len(rows) == 200  # One bright pixel each, nothing lost or added.
    assert set(rows - 14) == set(cols - 14) == set(range(-3, 4))


def test_flip_mirrors_about_half_the_images_exactly():
    images = batch()
    flipped = np.asarray(augment.augment(images, jax.random.key(0), augment_spec(flip=True)))
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images, strict=True)]
    kept = [np.array_equal(f, i) for f, i in zip(flipped, images, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True)) and 16 <= sum(mirrored) <= 48


@pytest.mark.slow
def test_erasing_replaces_one_rectangle_within_the_area_range():
    images = np.zeros((300, 28, 28, 1), np.uint8)
    spec = augment_spec(erase_prob=0.5, erase_area=(0.1, 0.2))
    erased = np.asarray(augment.augment(images, jax.random.key(0), spec))[..., 0] > 0
    counts = [mask.sum() for mask in erased]
    hit = [count for count in counts if count]
    assert 100 <= len(hit) <= 200  # About half.
    for mask in erased[[i for i, count in enumerate(counts) if count]][:20]:
        rows, cols = np.nonzero(mask)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 0.05 * 784 <= box <= 0.3 * 784  # Rounding widens the range a little.


@pytest.mark.slow
def test_the_default_config_trains_exactly_as_before_augmentation(idx_dir, tmp_path):
    """The first epoch of the tiny config, as the step computed it before augmentation and
    label smoothing existed (pinned to 1e-3: the CPU's instruction set moves the last digits;
    augmentation and label smoothing move them by more than 1%, as the next test checks)."""
    config = pinned_config(idx_dir)
    assert not augment.from_config(config.augment).active and not config.train.label_smoothing
    train.train_and_evaluate(config, str(tmp_path / 'run'))
    [record] = metric_writers.read_history(str(tmp_path / 'run'))
    assert record['train_loss'] == pytest.approx(1.6012300491, rel=1e-3)
    assert record['test_loss'] == pytest.approx(1.3683935547, rel=1e-3)


@pytest.mark.slow
def test_augmentation_and_label_smoothing_train_deterministically(idx_dir, tmp_path):
    config = pinned_config(idx_dir)
    config.train.label_smoothing = 0.1
    config.augment.update(translate=2, flip=True, erase_prob=0.5)
    histories = []
    for name in ('a', 'b'):
        train.train_and_evaluate(config, str(tmp_path / name))
        histories.append(
            [
                {k: r[k] for k in ('train_loss', 'test_loss', 'test_accuracy')}
                for r in metric_writers.read_history(str(tmp_path / name))
            ]
        )
    assert histories[0] == histories[1]
    assert histories[0][0]['train_loss'] != pytest.approx(1.6012300491, rel=1e-2)


def test_test_time_augmentation_averages_the_logits_of_the_image_and_its_mirror():
    config = tiny_config()
    state = train_state.create_train_state(config, jax.random.key(0))
    images, indices = jax.numpy.asarray(batch()), jax.numpy.arange(8)
    plain = train_steps.predict_step(state, images, indices, image_size=32)
    mirrored = train_steps.predict_step(state, images[:, :, ::-1], indices, image_size=32)
    both = train_steps.predict_step(state, images, indices, image_size=32, tta=True)
    np.testing.assert_allclose(both, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain, mirrored)


def shifted_by(images: np.ndarray, down: int, right: int) -> np.ndarray:
    """`images` moved `down` rows and `right` columns (negative: up, left), the border black."""
    moved = np.roll(images, (down, right), axis=(1, 2))
    if down > 0:
        moved[:, :down] = 0
    if down < 0:
        moved[:, down:] = 0
    if right > 0:
        moved[:, :, :right] = 0
    if right < 0:
        moved[:, :, right:] = 0
    return moved


def test_shift_moves_the_images_and_blackens_the_uncovered_border():
    images = batch()[:4]
    for offset in [(0, 0), (2, 2), (4, 1), (1, 3)]:
        moved = augment.shift(jax.numpy.asarray(images), jax.numpy.asarray(offset), 2)
        np.testing.assert_array_equal(moved, shifted_by(images, 2 - offset[0], 2 - offset[1]))


@pytest.mark.parametrize('tta', [False, True])
def test_test_time_translation_averages_the_logits_of_every_shift(tta):
    config = tiny_config()
    state = train_state.create_train_state(config, jax.random.key(0))
    images, indices = batch()[:8], jax.numpy.arange(8)

    def predict(views, translate=0):
        views = jax.numpy.asarray(views)
        return train_steps.predict_step(
            state, views, indices, image_size=32, tta=tta, tta_translate=translate
        )

    shifts = [(down, right) for down in (-1, 0, 1) for right in (-1, 0, 1)]
    expected = np.mean([predict(shifted_by(images, *shift)) for shift in shifts], axis=0)
    np.testing.assert_allclose(predict(images, translate=1), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(predict(images, translate=1), predict(images))
