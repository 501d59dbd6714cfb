"""Both data sources, every corrupt-file case, and the on-device batching and preprocessing."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_flax import config_schema, errors, input_pipeline

from conftest import synthetic_split, write_fashion_idx_dir


def data_config(**overrides):
    config = config_schema.default_config().data
    config.update({'source': 'idx', **overrides})
    return config


def test_idx_source_reads_gzipped_and_raw_files_alike(tmp_path):
    gz = write_fashion_idx_dir(tmp_path / 'gz', gz=True)
    raw = write_fashion_idx_dir(tmp_path / 'raw', gz=False)
    for split, count in (('train', 320), ('test', 100)):
        a = input_pipeline.load_split(data_config(idx_dir=str(gz)), split)
        b = input_pipeline.load_split(data_config(idx_dir=str(raw)), split)
        assert a.images.shape == (count, 28, 28, 1) and a.images.dtype == np.uint8
        assert a.labels.shape == (count,) and a.labels.dtype == np.int32
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    images, labels = synthetic_split(100, seed=1)
    test = input_pipeline.load_split(data_config(idx_dir=str(gz)), 'test')
    np.testing.assert_array_equal(test.images[..., 0], images)
    np.testing.assert_array_equal(test.labels, labels)


def test_max_examples_cut_the_split(idx_dir):
    split = input_pipeline.load_split(
        data_config(idx_dir=str(idx_dir), max_train_examples=50), 'train'
    )
    assert len(split) == 50


@pytest.mark.parametrize('gz', [True, False])
def test_shares_of_a_split_are_contiguous_and_make_the_split(tmp_path, gz):
    idx_dir = write_fashion_idx_dir(tmp_path / 'idx', gz=gz)
    config = data_config(idx_dir=str(idx_dir), max_train_examples=317)
    whole = input_pipeline.load_split(config, 'train')
    assert len(whole) == 317
    for count in (2, 3, 5):
        shares = [
            input_pipeline.load_split(config, 'train', shard=(i, count)) for i in range(count)
        ]
        sizes = [len(share) for share in shares]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        np.testing.assert_array_equal(np.concatenate([s.images for s in shares]), whole.images)
        np.testing.assert_array_equal(np.concatenate([s.labels for s in shares]), whole.labels)


def test_tfds_shares_are_cut_like_the_idx_shares(monkeypatch, tfds_servers_answer):
    """The TFDS source asks for `tfds.even_splits`, which divides a split as `shard_bounds` does."""
    tfds = pytest.importorskip('tensorflow_datasets')
    asked = []

    def load(name, split, **kwargs):
        asked.append(split)
        raise ConnectionError('offline')  # The split asked for is all this test needs.

    monkeypatch.setattr(tfds, 'load', load)
    infos = tfds.core.SplitDict(
        [tfds.core.SplitInfo(name='train', shard_lengths=[60_000], num_bytes=0)]
    )
    for limit, count in ((0, 3), (1001, 4)):
        for index in range(count):
            with pytest.raises(errors.DataError):
                input_pipeline.load_split(
                    data_config(source='tfds', max_train_examples=limit),
                    'train',
                    shard=(index, count),
                )
            [instruction] = asked.pop().to_absolute(infos)  # None: the split's start or end.
            start, stop = instruction.from_ or 0, instruction.to or 60_000
            assert (start, stop) == input_pipeline.shard_bounds(limit or 60_000, (index, count))


def test_an_empty_tfds_share_is_an_empty_split(monkeypatch, tfds_servers_answer):
    tfds = pytest.importorskip('tensorflow_datasets')
    import tensorflow as tf  # Imported when used: slow to import.

    def load(name, split, **kwargs):
        return tf.data.Dataset.from_tensor_slices(
            {
                'image': np.zeros((0, *input_pipeline.IMAGE_SHAPE), np.uint8),
                'label': np.zeros((0,), np.int64),
            }
        )

    monkeypatch.setattr(tfds, 'load', load)
    split = input_pipeline.load_split(
        data_config(source='tfds', max_test_examples=2), 'test', shard=(2, 3)
    )
    assert split.images.shape == (0, 28, 28, 1) and len(split) == 0


def test_shard_bounds_give_the_remainder_to_the_first_shares():
    assert [input_pipeline.shard_bounds(11, (i, 3)) for i in range(3)] == [(0, 4), (4, 8), (8, 11)]
    assert input_pipeline.shard_bounds(5, (0, 1)) == (0, 5)


def test_real_fashion_mnist(real_data_dir):
    config = data_config(idx_dir=str(real_data_dir))
    train = input_pipeline.load_split(config, 'train')
    test = input_pipeline.load_split(config, 'test')
    assert train.images.shape == (60_000, 28, 28, 1)
    assert test.images.shape == (10_000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert abs(train.images.mean() / 255 - 0.2861) < 1e-3


def corrupt(directory, name, content):
    path = directory / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    'case,message',
    [
        ('missing', 'train-labels-idx1-ubyte(.gz) is missing'),
        ('truncated', 'is truncated: its header gives shape (320, 28, 28)'),
        ('truncated_gzip', 'cannot be read'),
        ('not_gzip', 'cannot be read'),
        ('wrong_magic', 'has magic number 0x00000801, expected 0x00000803'),
        ('short_header', 'shorter than an IDX header'),
        ('too_long', 'longer than its header says'),
        ('count_mismatch', 'holds 320 images but train-labels-idx1-ubyte holds 319 labels'),
        ('label_range', "labels from source 'idx' hold 1 values outside 0..9 (first: 12"),
    ],
)
def test_corrupt_idx_files_stop_with_the_file_and_the_problem(idx_dir, case, message):
    images_gz = idx_dir / 'train-images-idx3-ubyte.gz'
    labels_gz = idx_dir / 'train-labels-idx1-ubyte.gz'
    _, labels = synthetic_split(320, seed=0)
    if case == 'missing':
        labels_gz.unlink()
    elif case == 'truncated':
        raw = gzip.decompress(images_gz.read_bytes())
        images_gz.write_bytes(gzip.compress(raw[:-100]))
    elif case == 'truncated_gzip':
        content = images_gz.read_bytes()
        images_gz.write_bytes(content[: len(content) // 2])
    elif case == 'not_gzip':
        images_gz.write_bytes(b'<html>404 Not Found</html>')
    elif case == 'wrong_magic':
        input_pipeline.write_idx(str(images_gz), labels)  # A labels file: 1 dimension.
    elif case == 'short_header':
        images_gz.write_bytes(gzip.compress(b'\x00\x00\x08\x03\x00'))
    elif case == 'too_long':
        images_gz.write_bytes(gzip.compress(gzip.decompress(images_gz.read_bytes()) + b'xx'))
    elif case == 'count_mismatch':
        input_pipeline.write_idx(str(labels_gz), labels[:-1])
    elif case == 'label_range':
        labels = labels.copy()
        labels[7] = 12
        input_pipeline.write_idx(str(labels_gz), labels)
    with pytest.raises(errors.DataError) as error:
        input_pipeline.load_split(data_config(idx_dir=str(idx_dir)), 'train')
    assert message in str(error.value)
    if case not in ('missing', 'count_mismatch', 'label_range'):
        assert str(images_gz) in str(error.value)


def header(ndim, *shape):
    """An IDX header of unsigned bytes: magic number, then each dimension."""
    return ((0x08 << 8) | ndim).to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in shape)


def deflate_cut_by_a_bad_block(path):
    """The file's first half compressed as it was, then a deflate block of a type that does not
    exist: the stream breaks mid-file, as flipped bytes break it."""
    raw = gzip.decompress(path.read_bytes())
    compressor = zlib.compressobj(wbits=31)  # A gzip stream.
    half = compressor.compress(raw[: len(raw) // 2]) + compressor.flush(zlib.Z_FULL_FLUSH)
    path.write_bytes(half + b'\x07' + raw[len(raw) // 2 :])  # BFINAL=1, BTYPE=3.


def as_raw_file(path):
    raw_path = path.with_suffix('')
    raw_path.write_bytes(gzip.decompress(path.read_bytes()))
    path.unlink()
    return raw_path


IMAGES, LABELS = 'train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'
TEST_IMAGES = 't10k-images-idx3-ubyte.gz'


@pytest.mark.parametrize(
    'name,damage,message',
    [
        (
            IMAGES,
            deflate_cut_by_a_bad_block,
            'cannot be read (Error -3 while decompressing data: invalid block type)',
        ),
        (
            IMAGES,
            lambda path: os.truncate(as_raw_file(path), 5000),
            'is truncated: its header gives shape (320, 28, 28) (250880 bytes of data) but it '
            'holds 4984',
        ),
        (IMAGES, lambda path: path.write_bytes(header(3, 0, 28, 28)), 'gives shape (0, 28, 28)'),
        (LABELS, lambda path: path.write_bytes(header(1, 0)), 'gives shape (0,) in its header'),
        (
            IMAGES,
            lambda path: path.write_bytes(gzip.compress(header(3, 320, 65535, 65535))),
            'holds images of 65535x65535 pixels, not the 28x28 of Fashion-MNIST',
        ),
        (
            LABELS,  # Checked against its header alone: nothing is allocated for what it claims.
            lambda path: path.write_bytes(gzip.compress(header(1, 2**32 - 1) + bytes(320))),
            'holds 320 images but train-labels-idx1-ubyte holds 4294967295 labels',
        ),
        (
            TEST_IMAGES,
            lambda path: input_pipeline.write_idx(str(path), np.zeros((100, 32, 32), np.uint8)),
            'holds images of 32x32 pixels, not the 28x28 of Fashion-MNIST',
        ),
        (LABELS, lambda path: path.write_bytes(b''), 'is empty; download it again.'),
        (IMAGES, lambda path: path.write_bytes(gzip.compress(b'')), 'shorter than an IDX header'),
        (
            LABELS,
            lambda path: (path.unlink(), path.mkdir()),
            'cannot be opened (Is a directory); it must be a readable IDX file.',
        ),
        (
            LABELS,
            lambda path: path.write_bytes(path.read_bytes() + b'<html>'),
            'cannot be read (Not a gzipped file',
        ),
        (
            LABELS,
            lambda path: path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b'x')),
            'is longer than its header says',
        ),
        (
            LABELS,
            lambda path: input_pipeline.write_idx(str(path), np.full(320, 10, np.uint8)),
            "labels from source 'idx' hold 320 values outside 0..9 (first: 10 at index 0) in ",
        ),
    ],
)
def test_a_damaged_or_absurd_idx_file_is_one_line_naming_it(idx_dir, name, damage, message):
    path = idx_dir / name
    damage(path)
    split = 'test' if name == TEST_IMAGES else 'train'
    with pytest.raises(errors.DataError) as error:
        input_pipeline.load_split(data_config(idx_dir=str(idx_dir)), split)
    assert message in str(error.value) and '\n' not in str(error.value)
    assert str(idx_dir) in str(error.value) and path.name.removesuffix('.gz') in str(error.value)


def test_an_idx_file_is_read_by_its_content_whatever_its_name_says(idx_dir):
    """A browser may store a download decompressed under its .gz name."""
    expected = input_pipeline.load_split(data_config(idx_dir=str(idx_dir)), 'train')
    path = idx_dir / LABELS
    path.write_bytes(gzip.decompress(path.read_bytes()))
    split = input_pipeline.load_split(data_config(idx_dir=str(idx_dir)), 'train')
    np.testing.assert_array_equal(split.labels, expected.labels)


def test_an_idx_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / 'idx').write_text('')
    with pytest.raises(errors.DataError, match='idx is a file; it must be the directory'):
        input_pipeline.load_split(data_config(idx_dir=str(tmp_path / 'idx')), 'train')


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads a file without read permission')
def test_an_unreadable_idx_file_is_one_line(idx_dir):
    (idx_dir / LABELS).chmod(0)
    with pytest.raises(errors.DataError, match=r'cannot be opened \(Permission denied\)'):
        input_pipeline.load_split(data_config(idx_dir=str(idx_dir)), 'train')


def test_tfds_source_with_mock_data(tfds_servers_answer):
    tfds = pytest.importorskip('tensorflow_datasets')
    with tfds.testing.mock_data(num_examples=37):
        split = input_pipeline.load_split(data_config(source='tfds'), 'test')
    assert split.images.shape == (37, 28, 28, 1) and split.images.dtype == np.uint8
    assert split.labels.shape == (37,) and split.labels.dtype == np.int32
    assert split.labels.min() >= 0 and split.labels.max() <= 9


def test_tfds_failure_names_the_offline_alternative(monkeypatch, tfds_servers_answer):
    tfds = pytest.importorskip('tensorflow_datasets')

    def no_network(*args, **kwargs):
        raise ConnectionError('Failed to resolve fashion-mnist.s3-website.eu-central-1...')

    monkeypatch.setattr(tfds, 'load', no_network)
    with pytest.raises(errors.DataError) as error:
        input_pipeline.load_split(data_config(source='tfds'), 'train')
    assert 'TFDS could not load fashion_mnist/train' in str(error.value)
    assert '--config.data.source=idx --config.data.idx_dir=DIR' in str(error.value)


def _no_proxies(monkeypatch):
    for name in list(os.environ):
        if name.lower().endswith('_proxy'):
            monkeypatch.delenv(name)


def test_tfds_fails_fast_when_its_download_server_does_not_answer(tmp_path, monkeypatch):
    """Offline, TFDS would retry its download for 3.5 minutes; one connection attempt says so."""
    tfds = pytest.importorskip('tensorflow_datasets')
    _no_proxies(monkeypatch)
    tried = []

    def refuse(address, timeout):
        tried.append(address)
        raise OSError('Name or service not known')

    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(tfds, 'load', lambda *args, **kwargs: pytest.fail('TFDS was asked'))
    with pytest.raises(errors.DataError) as error:
        input_pipeline.load_split(data_config(source='tfds', tfds_data_dir=str(tmp_path)), 'test')
    host = 'fashion-mnist.s3-website.eu-central-1.amazonaws.com'
    assert tried == [(host, 80)]
    assert f'{host}:80 (Name or service not known)' in str(error.value)
    assert 'config.data.tfds_data_dir' in str(error.value)
    assert '--config.data.source=idx --config.data.idx_dir=DIR' in str(error.value)


@pytest.mark.parametrize('setting', ['proxy', 'cached_downloads'])
def test_tfds_reachability_is_left_to_tfds_with_a_proxy_or_cached_downloads(
    setting, tmp_path, monkeypatch
):
    tfds = pytest.importorskip('tensorflow_datasets')
    _no_proxies(monkeypatch)
    if setting == 'proxy':
        monkeypatch.setenv('https_proxy', 'http://proxy.example:3128')
    else:
        (tmp_path / 'downloads').mkdir()
        (tmp_path / 'downloads' / 'train-images-idx3-ubyte.gz').write_bytes(b'')
    monkeypatch.setattr(
        socket, 'create_connection', lambda *args, **kwargs: pytest.fail('a connection was tried')
    )

    def load(*args, **kwargs):
        raise ConnectionError('TFDS itself failed')

    monkeypatch.setattr(tfds, 'load', load)
    with pytest.raises(errors.DataError, match='TFDS itself failed'):
        input_pipeline.load_split(data_config(source='tfds', tfds_data_dir=str(tmp_path)), 'test')


@pytest.mark.slow
def test_idx_source_does_not_import_tensorflow(idx_dir):
    code = (
        'import sys\nfrom vgg_flax import config_schema, input_pipeline, train\n'
        'c = config_schema.default_config().data\n'
        f'c.source, c.idx_dir = "idx", {str(idx_dir)!r}\n'
        'input_pipeline.load_split(c, "train")\n'
        'assert "tensorflow" not in sys.modules, "tensorflow was imported"\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True, timeout=120)


@pytest.mark.slow
def test_preprocess_scales_and_resizes_bilinearly():
    images = jnp.full((2, 28, 28, 1), 51, jnp.uint8)
    x = input_pipeline.preprocess(images, 56)
    assert x.shape == (2, 56, 56, 1) and x.dtype == jnp.float32
    np.testing.assert_allclose(x, 0.2, rtol=1e-6)
    ramp = jnp.tile(jnp.arange(28, dtype=jnp.uint8)[None, :, None], (28, 1, 1))[None] * 9
    up = input_pipeline.preprocess(ramp, 56)[0, 0, :, 0]
    assert bool(jnp.all(jnp.diff(up) >= 0))  # Interpolates, does not repeat pixels only.
    assert len(np.unique(np.asarray(up))) > 28
    same = input_pipeline.preprocess(ramp, 28)
    np.testing.assert_allclose(same * 255, ramp, atol=1e-4)


def test_epoch_batches_are_a_seeded_shuffle():
    key = jax.random.key(0)
    a = input_pipeline.epoch_batches(key, 1, 100, 16)
    assert a.shape == (6, 16) and a.dtype == jnp.int32
    assert len(np.unique(np.asarray(a))) == 96
    np.testing.assert_array_equal(a, input_pipeline.epoch_batches(key, 1, 100, 16))
    assert not np.array_equal(a, input_pipeline.epoch_batches(key, 2, 100, 16))


def test_eval_batches_cover_every_example_once():
    indices, mask = input_pipeline.eval_batches(10, 4)
    assert indices.shape == mask.shape == (3, 4)
    assert sorted(indices[mask > 0].tolist()) == list(range(10))
    assert mask.sum() == 10
