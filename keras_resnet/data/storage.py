"""How a split's images are held, and how each kind lists its examples as a tf.data pipeline.

- `ImageArray`: same-sized images decoded into one uint8 array (CIFAR, digits, resized folders);
- `RaggedImages`: images of different sizes decoded into one flat buffer (imagenette);
- `ImageFiles`: files decoded on every pass (folders too big for memory);
- `TFDSStream`: a TFDS split read from its record files (imagenet2012).

`Source` is what a dataset's module (`tfds`, `folders`, `digits`) returns: its splits, classes,
mean and fingerprint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import tensorflow as tf

from keras_resnet.config import MAX_PIXELS

AUTOTUNE = tf.data.AUTOTUNE


JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def decode(data: tf.Tensor) -> tf.Tensor:
    # channels=3: a few real-world JPEGs are grayscale (or CMYK); PNGs may carry alpha.
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def is_jpeg(data: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.strings.substr(data, 0, len(JPEG_MAGIC)), JPEG_MAGIC)


def is_png(data: tf.Tensor) -> tf.Tensor:
    return tf.logical_and(
        tf.equal(tf.strings.substr(data, 0, len(PNG_MAGIC)), PNG_MAGIC), tf.strings.length(data) >= 24
    )


def declared_size(data: tf.Tensor) -> tf.Tensor:
    """int64 [height, width] that a JPEG's or PNG's header declares, read without decoding."""
    return tf.cond(
        is_jpeg(data),
        lambda: tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64),
        # A PNG's IHDR chunk stores width and height big-endian at bytes 16..24.
        lambda: tf.cast(
            tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.int32, little_endian=False)[::-1], tf.int64
        ),
    )


def decode_bounded(data: tf.Tensor, max_pixels: int = MAX_PIXELS) -> tf.Tensor:
    """`decode`, refusing (InvalidArgumentError) an image whose header declares more than `max_pixels`."""
    size = declared_size(data)
    small = tf.debugging.assert_less_equal(size[0] * size[1], tf.constant(max_pixels, tf.int64))
    with tf.control_dependencies([small]):
        return decode(data)


def _indices(n: int, shuffle_seed: int | None, workers: int, index: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.range(n).shard(workers, index)
    if shuffle_seed is not None:
        ds = ds.shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=True).repeat()
    return ds


@dataclasses.dataclass
class ImageArray:
    """Same-sized images in memory: uint8 [N, H, W, 3] (batchable by gathering)."""

    images: np.ndarray
    labels: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> ImageArray:
        return ImageArray(self.images[idx], self.labels[idx])

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def examples(self, shuffle_seed: int | None, workers: int, index: int) -> tf.data.Dataset:
        """Unbatched (uint8 [H, W, 3], int32) examples of this worker's shard; shuffled and
        repeated forever when `shuffle_seed` is given (training)."""
        images, labels = tf.constant(self.images), tf.constant(self.labels)
        ds = _indices(self.num_examples, shuffle_seed, workers, index)
        return ds.map(lambda i: (images[i], labels[i]), num_parallel_calls=AUTOTUNE)


@dataclasses.dataclass
class RaggedImages:
    """Images of different sizes in memory: one flat uint8 buffer with per-image offsets and shapes."""

    buffer: np.ndarray
    offsets: np.ndarray
    shapes: np.ndarray
    labels: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        o, s = self.offsets[i], self.shapes[i]
        return self.buffer[o : o + int(np.prod(s))].reshape(s)

    def subset(self, idx: np.ndarray) -> ImageArray | RaggedImages:
        return pack([self.image(i) for i in idx], self.labels[idx])

    def examples(self, shuffle_seed: int | None, workers: int, index: int) -> tf.data.Dataset:
        buffer, offsets, shapes = (tf.constant(a) for a in (self.buffer, self.offsets, self.shapes))
        labels = tf.constant(self.labels)

        def get(i):
            o, s = offsets[i], shapes[i]
            return tf.reshape(buffer[o : o + tf.reduce_prod(s)], s), labels[i]

        ds = _indices(self.num_examples, shuffle_seed, workers, index)
        return ds.map(get, num_parallel_calls=AUTOTUNE)


def pack(images: list[np.ndarray], labels: np.ndarray) -> ImageArray | RaggedImages:
    """Same-sized images as one [N, H, W, 3] array (batchable), others in a flat buffer."""
    labels = np.asarray(labels, np.int32)
    if len({im.shape for im in images}) <= 1:
        stacked = np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)
        return ImageArray(stacked, labels)
    shapes = np.array([im.shape for im in images], np.int64)
    offsets = np.concatenate([[0], np.cumsum(shapes.prod(axis=1))[:-1]]).astype(np.int64)
    return RaggedImages(np.concatenate([im.reshape(-1) for im in images]), offsets, shapes, labels)


@dataclasses.dataclass
class ImageFiles:
    """Encoded image files, decoded on every pass."""

    paths: np.ndarray
    labels: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> ImageFiles:
        return ImageFiles(self.paths[idx], self.labels[idx])

    def image(self, i: int) -> np.ndarray:
        return decode_bounded(tf.io.read_file(self.paths[i])).numpy()

    def examples(self, shuffle_seed: int | None, workers: int, index: int) -> tf.data.Dataset:
        paths, labels = tf.constant(self.paths), tf.constant(self.labels)
        ds = _indices(self.num_examples, shuffle_seed, workers, index)
        return ds.map(
            lambda i: (decode_bounded(tf.io.read_file(paths[i])), labels[i]), num_parallel_calls=AUTOTUNE
        )


@dataclasses.dataclass
class TFDSStream:
    """A TFDS split too big for memory, read from its files (sharded per worker), decoded on the fly.

    `make(workers, index, seed or None)` gives the (encoded image, int32 label) examples.
    """

    make: Callable[[int, int, int | None], tf.data.Dataset]
    num_examples: int
    SHUFFLE_BUFFER: ClassVar[int] = 10_000

    def image(self, i: int) -> np.ndarray:
        data, _ = next(iter(self.make(1, 0, None).skip(i).take(1)))
        return decode(data).numpy()

    def examples(self, shuffle_seed: int | None, workers: int, index: int) -> tf.data.Dataset:
        ds = self.make(workers, index, shuffle_seed)
        if shuffle_seed is not None:  # files are shuffled too; this mixes examples across files
            ds = ds.shuffle(self.SHUFFLE_BUFFER, seed=shuffle_seed).repeat()
        # Decoded after the shuffle buffer, which then holds JPEG bytes, not 10x bigger pixels.
        return ds.map(lambda data, label: (decode(data), label), num_parallel_calls=AUTOTUNE)


Split = ImageArray | RaggedImages | ImageFiles | TFDSStream


@dataclasses.dataclass
class Source:
    """The images a dataset name resolves to, before the pipelines are built.

    `data_sha256` fingerprints the training split's files (`splits.fingerprint`); every cache
    derived from the data (the mean, a folder's scan) is keyed by it.
    """

    name: str
    class_names: tuple[str, ...]
    train: Split
    validation: Split | None
    test: Split
    mean: np.ndarray
    data_sha256: str
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SourceRequest:
    """What a dataset's module is asked for: `data.load`'s arguments that concern the images."""

    name: str
    tfds_dir: str
    download: bool = True
    validation_split: bool = False
    image_size: int | None = None
    skip_corrupt: bool = False
    cache_images: bool | None = None
    cache_dir: str = ""
    verbose: bool = True
