"""The embedded dataset: scikit-learn's 1,797 real 8x8 handwritten digits, shipped inside its wheel.

Nothing to download: the quickstart, the tests and any offline machine train on it. Images are
upsampled to the model's input; horizontal flips stay off (a mirrored digit is another shape).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from keras_resnet.data import splits
from keras_resnet.data.storage import ImageArray, Source, SourceRequest

DIGITS_TEST_FRACTION = 0.2  # 1,797 digits: 1,438 to train on, 359 to test (stratified)


@functools.lru_cache(maxsize=2)
def _digits_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits (0..16) as uint8 RGB [N, size, size, 3] (0..255) and int32 labels."""
    from sklearn.datasets import load_digits  # ships the data inside the wheel: no network

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    if size != pixels.shape[1]:
        # Bilinear, as an exported model enlarges an 8x8 image it is sent (antialiasing only
        # acts when shrinking).
        resized = tf.image.resize(tf.constant(pixels, tf.float32), (size, size)).numpy()
        pixels = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    return np.repeat(pixels, 3, axis=-1), digits.target.astype(np.int32)


def digits_8x8() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 8x8 RGB images, labels, indices of the fixed test split) of the original digits."""
    images, labels = _digits_images(8)
    return images, labels, splits.held_out_split(labels, DIGITS_TEST_FRACTION)[1]


def digits(request: SourceRequest) -> Source:
    """The digits, upsampled to the model's input (default 32, the CIFAR nets'), a fixed 1,438/359 split."""
    size = request.image_size or 32
    images, labels = _digits_images(size)
    train_idx, test_idx = splits.held_out_split(labels, DIGITS_TEST_FRACTION)
    full = ImageArray(images[train_idx], labels[train_idx])
    train, validation, _ = splits.hold_out(full, request.validation_split)
    mean = splits.mean_image(train.images).astype(np.float32)  # 1,437 small images: not worth a cache
    names = tuple(str(d) for d in range(10))
    test = ImageArray(images[test_idx], labels[test_idx])
    sha = splits.array_fingerprint(*_digits_images(8))
    return Source("digits", names, train, validation, test, mean, sha)
