"""Fashion-MNIST as uint8 arrays, and the on-device batching and preprocessing of them.

The host loads each split once, as uint8 images (N, 28, 28, 1) and int32 labels, from TFDS or
from the four original IDX files. The arrays then live on the accelerator (60,000 x 784 bytes
is 47 MB): batches are gathered there from a seeded per-epoch permutation, and resizing and
scaling happen inside the compiled step, so the host never ships more than indices.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import socket
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vgg_flax import errors

CLASS_NAMES = (
    'T-shirt/top',
    'Trouser',
    'Pullover',
    'Dress',
    'Coat',
    'Sandal',
    'Shirt',
    'Sneaker',
    'Bag',
    'Ankle boot',
)
NUM_EXAMPLES = {'train': 60_000, 'test': 10_000}  # Fashion-MNIST's split sizes.
IMAGE_SHAPE = (28, 28, 1)  # Height, width, channels of every Fashion-MNIST image.
# Base names of the IDX files, as the Fashion-MNIST release (and MNIST) names them.
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only type these files use.
_GZIP_MAGIC = b'\x1f\x8b'
_CHUNK = 1 << 22  # Bytes read at a time: what a header claims never sizes a buffer.
OFFLINE_HINT = (
    'Without internet, use the four original IDX files instead: '
    '--config.data.source=idx --config.data.idx_dir=DIR, where DIR holds '
    'train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
    't10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz '
    '(https://github.com/zalandoresearch/fashion-mnist).'
)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split on the host: uint8 images (N, H, W, 1) and int32 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_split(
    data_config: ml_collections.ConfigDict,
    split: str,
    num_classes: int = 10,
    shard: tuple[int, int] = (0, 1),
) -> Split:
    """Reads share `shard` = (index, count) of `split` ('train' or 'test') and checks it.

    The split is the first `data_config.max_<split>_examples` examples (0: all). Shares are
    contiguous and in order, so those of indices 0..count-1 together are the split: each
    process of a multi-host job reads only its own.
    """
    limit = data_config[f'max_{split}_examples'] or None
    if data_config.source == 'tfds':
        images, labels = _load_tfds(split, data_config.tfds_data_dir, limit, shard)
        origin = f'TFDS fashion_mnist/{split}'
    else:
        images, labels, origin = _load_idx(split, data_config.idx_dir, limit, shard)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        where = f' of share {shard[0]} of {shard[1]}' if shard[1] > 1 else ''
        raise errors.DataError(
            f'the {split} labels from source {data_config.source!r} hold '
            f'{int(bad.sum())} values outside 0..{num_classes - 1} (first: '
            f'{int(labels[bad][0])} at index {int(np.argmax(bad))}{where}) in {origin}: '
            'they are not the labels of the images, or config.model.num_classes is too small.'
        )
    return Split(images=images, labels=labels.astype(np.int32))


def shard_bounds(num_examples: int, shard: tuple[int, int]) -> tuple[int, int]:
    """Rows [start, stop) of share `shard` = (index, count); the first shares get the remainder.

    The same division as `tfds.even_splits`, so both sources cut a split alike.
    """
    index, count = shard
    size, remainder = divmod(num_examples, count)
    start = index * size + min(index, remainder)
    return start, start + size + (index < remainder)


def _load_tfds(
    split: str, data_dir: str, limit: int | None, shard: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST through tensorflow-datasets; TensorFlow is imported only here."""
    try:
        import tensorflow_datasets as tfds  # Only for this source: it imports TensorFlow.
    except ImportError as e:
        raise errors.DataError(
            'config.data.source=tfds needs tensorflow-datasets and tensorflow '
            f'(pip install -e ".[tfds]"): {e}. {OFFLINE_HINT}'
        ) from e
    index, count = shard
    try:
        builder = tfds.builder('fashion_mnist', data_dir=data_dir or None)
        unreachable = _unreachable_download_host(builder)
        if unreachable:
            raise errors.DataError(
                f'fashion_mnist is not prepared in the TFDS data_dir '
                f'{builder.data_dir_root} and its download server does not answer: '
                f'{unreachable}. TFDS would retry for minutes before '
                'failing. If it is prepared elsewhere, set config.data.tfds_data_dir '
                f'to that directory. {OFFLINE_HINT}'
            )
        share = tfds.even_splits(f'{split}[:{limit}]' if limit else split, n=count)[index]
        dataset = tfds.load(
            'fashion_mnist', split=share, data_dir=data_dir or None, shuffle_files=False
        )
        images, labels = [], []
        for batch in tfds.as_numpy(dataset.batch(10_000)):
            images.append(batch['image'])
            labels.append(batch['label'])
    except errors.DataError:
        raise
    except Exception as e:  # TFDS raises many types for a failed download or a bad cache.
        raise errors.DataError(
            f'TFDS could not load fashion_mnist/{split} (data_dir='
            f'{data_dir or "default"}): {type(e).__name__}: {e}. '
            f'{OFFLINE_HINT}'
        ) from e
    if not images:  # An empty share: more processes than examples.
        return np.zeros((0, *IMAGE_SHAPE), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(images), np.concatenate(labels)


def _unreachable_download_host(builder: Any) -> str | None:
    """The first download server of an unprepared TFDS `builder` that does not answer, if any.

    TFDS retries a failed download ten times with growing pauses (minutes, offline) before it
    fails; one connection attempt per server tells the same in seconds. Nothing is
    checked when the dataset is prepared, when a proxy is configured (the proxy resolves the
    servers) or when earlier downloads are cached (TFDS may prepare from them).
    """
    if builder.is_prepared() or urllib.request.getproxies():
        return None
    downloads = builder.data_dir_root / 'downloads'
    if downloads.is_dir() and any(downloads.iterdir()):
        return None
    urls = map(urllib.parse.urlsplit, builder.url_infos or {})
    for host, port in sorted(
        {(url.hostname, url.port or (443 if url.scheme == 'https' else 80)) for url in urls}
    ):
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError as e:
            return f'{host}:{port} ({e})'
    return None


def _load_idx(
    split: str, idx_dir: str, limit: int | None, shard: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, str]:
    """Share `shard` of the split's first `limit` rows, and the path of its labels file.

    Every process checks the whole files: both headers against Fashion-MNIST's shapes (N images
    of 28x28 pixels, N labels) before any data is read, then each file's size against its header.
    """
    images_name, labels_name = IDX_FILES[split]
    images_path = _find_idx_file(idx_dir, images_name)
    labels_path = _find_idx_file(idx_dir, labels_name)
    images_shape = read_idx_shape(images_path, ndim=3)
    if images_shape[1:] != IMAGE_SHAPE[:2]:
        raise errors.DataError(
            f'{images_path} holds images of {images_shape[1]}x{images_shape[2]} pixels, '
            f'not the {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} of Fashion-MNIST; it is not the right '
            'IDX file, download it again.'
        )
    num_labels = read_idx_shape(labels_path, ndim=1)[0]
    if images_shape[0] != num_labels:
        raise errors.DataError(
            f'{idx_dir}: {images_name} holds {images_shape[0]} images but {labels_name} '
            f'holds {num_labels} labels; the two files must come from the same '
            'release.'
        )
    labels = read_idx(labels_path, ndim=1)
    start, stop = shard_bounds(min(num_labels, limit or num_labels), shard)
    images = read_idx(images_path, ndim=3, rows=(start, stop))
    return images[..., None], labels[start:stop], labels_path


def _find_idx_file(idx_dir: str, name: str) -> str:
    """The path of IDX file `name` in `idx_dir`, gzipped or raw; whatever stands at that path
    (a directory, say) is left to `_open_idx` to refuse, naming it."""
    if os.path.isfile(idx_dir):
        raise errors.DataError(
            f'config.data.idx_dir={idx_dir} is a file; it must be the directory that holds '
            'the four Fashion-MNIST IDX files.'
        )
    for candidate in (name + '.gz', name):
        path = os.path.join(idx_dir, candidate)
        if os.path.lexists(path):
            return path
    raise errors.DataError(
        f'{os.path.join(idx_dir, name)}(.gz) is missing. config.data.idx_dir must '
        f'hold the four Fashion-MNIST IDX files: '
        f'{", ".join(n + ".gz" for pair in IDX_FILES.values() for n in pair)}.'
    )


def read_idx_shape(path: str, ndim: int) -> tuple[int, ...]:
    """The shape in an IDX file's header (the file's size is checked by `read_idx`)."""
    with _open_idx(path) as f:
        return _read_idx_header(f, path, ndim)


def read_idx(path: str, ndim: int, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Reads an IDX file of unsigned bytes (gzipped or raw) with `ndim` dimensions.

    `rows` = (start, stop) keeps only those rows in memory; the whole file is still read through,
    since a gzip stream shows a cut or an excess only at its end.
    """
    with _open_idx(path) as f:
        shape = _read_idx_header(f, path, ndim)
        start, stop = rows or (0, shape[0])
        row_size = math.prod(shape[1:])
        before = _skip(f, path, start * row_size)
        data = _read(f, path, (stop - start) * row_size)
        held = before + len(data) + _skip(f, path)
    size = math.prod(shape)
    if held != size:
        state = 'truncated' if held < size else 'longer than its header says'
        raise errors.DataError(
            f'{path} is {state}: its header gives shape {shape} ({size} bytes of '
            f'data) but it holds {held}; download it again.'
        )
    return np.frombuffer(data, dtype=np.uint8).reshape((stop - start, *shape[1:]))


def _open_idx(path: str) -> BinaryIO:
    """An IDX file to read, through gzip when its content is gzip-compressed, whatever its name
    says (a browser may store a download decompressed under its .gz name).

    A file that cannot be opened (a directory, no read permission), that is empty or that is
    neither gzip-compressed nor an IDX file is a DataError naming it.
    """
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
        if head.startswith(_GZIP_MAGIC):
            return cast(BinaryIO, gzip.open(path, 'rb'))
        if head.startswith(b'\x00\x00'):  # An IDX magic number; `_read_idx_header` checks it.
            return open(path, 'rb')
    except OSError as e:
        raise errors.DataError(
            f'{path} cannot be opened ({e.strerror or e}); it must be a readable IDX file.'
        ) from e
    if not head:
        raise errors.DataError(f'{path} is empty; download it again.')
    raise errors.DataError(
        f'{path} cannot be read: it is neither gzip-compressed nor an IDX file (it begins '
        f'{head!r}); download it again.'
    )


def _chunks(f: BinaryIO, path: str, size: int | None) -> Iterator[bytes]:
    """The next `size` bytes (None: all the rest) in chunks, so that memory follows what the
    file holds, not what its header claims. A damaged or cut-off gzip stream is a DataError
    naming the file."""
    left = size
    while left is None or left > 0:
        try:
            chunk = f.read(_CHUNK if left is None else min(_CHUNK, left))
        except (OSError, EOFError, zlib.error) as e:
            raise errors.DataError(
                f'{path} cannot be read ({e}); the file is corrupt or truncated, download it again.'
            ) from e
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


def _read(f: BinaryIO, path: str, size: int) -> bytes:
    """Up to `size` bytes."""
    return b''.join(_chunks(f, path, size))


def _skip(f: BinaryIO, path: str, size: int | None = None) -> int:
    """Reads past `size` bytes (None: to the end) without keeping them; returns how many there
    were."""
    return sum(map(len, _chunks(f, path, size)))


def _read_idx_header(f: BinaryIO, path: str, ndim: int) -> tuple[int, ...]:
    header = _read(f, path, 4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim:
        raise errors.DataError(
            f'{path} is truncated: {len(header)} bytes, shorter than an IDX header.'
        )
    magic = int.from_bytes(header[:4], 'big')
    expected_magic = (_IDX_UBYTE << 8) | ndim
    if magic != expected_magic:
        raise errors.DataError(
            f'{path} has magic number 0x{magic:08x}, expected 0x'
            f'{expected_magic:08x} (unsigned bytes, {ndim} dimensions); it is not '
            f'the right IDX file.'
        )
    shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], 'big') for i in range(ndim))
    if 0 in shape:
        raise errors.DataError(
            f'{path} gives shape {shape} in its header: a size of 0, so it holds no data; '
            'download it again.'
        )
    return shape


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes a uint8 array as an IDX file (gzipped when `path` ends in .gz)."""
    array = np.asarray(array, np.uint8)
    header = ((_IDX_UBYTE << 8) | array.ndim).to_bytes(4, 'big') + b''.join(
        d.to_bytes(4, 'big') for d in array.shape
    )
    with cast(BinaryIO, gzip.open(path, 'wb') if path.endswith('.gz') else open(path, 'wb')) as f:
        f.write(header + array.tobytes())


def preprocess(images: jnp.ndarray, image_size: int) -> jnp.ndarray:
    """uint8 (B, H, W, C) -> float32 in [0, 1], resized bilinearly to (B, S, S, C).

    Runs inside the compiled step, on the accelerator, like the lesson's `Resize` + `ToTensor`.
    """
    x = images.astype(jnp.float32) / 255.0
    if images.shape[1:3] != (image_size, image_size):
        x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), 'bilinear')
    return x


@jax.jit
def checksum(array: jax.Array) -> jax.Array:
    """A position-weighted sum of `array`'s values (uint32, wrapping): any changed, added,
    removed or reordered value changes it, except by a chance of about 1 in 2**32."""
    flat = array.reshape(-1).astype(jnp.uint32)
    weights = jnp.arange(flat.size, dtype=jnp.uint32) % 65521 + 1
    return jnp.sum(flat * weights, dtype=jnp.uint32)


def fingerprint(images: jax.Array, labels: jax.Array) -> dict[str, Any]:
    """What a run records of a split, to tell on resuming whether the data is still the same."""
    return {
        'examples': int(labels.shape[0]),
        'checksum': f'{int(checksum(images)):08x}-{int(checksum(labels)):08x}',
    }


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full training batches per epoch; the remainder of the shuffle is left for that epoch."""
    return num_examples // batch_size


def epoch_batches(key: jax.Array, epoch: int, num_examples: int, batch_size: int) -> jax.Array:
    """The indices of every training batch of `epoch`: int32 (steps, batch_size).

    A function of (key, epoch) alone, so a resumed run sees the same batches.
    """
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    steps = steps_per_epoch(num_examples, batch_size)
    return perm[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)


def eval_batches(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and a 0/1 mask of shape (steps, batch_size) covering every example once.

    The last batch is padded with index 0 and masked out, so no example is dropped.
    """
    steps = -(-num_examples // batch_size)
    indices = np.zeros(steps * batch_size, np.int32)
    indices[:num_examples] = np.arange(num_examples)
    mask = np.zeros(steps * batch_size, np.float32)
    mask[:num_examples] = 1.0
    return indices.reshape(steps, batch_size), mask.reshape(steps, batch_size)
