"""Images as Keras users hold them, to the float32 RGB batches a trained network is served with.

    for batch in rgb_batches(images, batch_size=32):    # float32 [n, H, W, 3], 0..255
        ...

Taken as `keras.applications` models take them: uint8 or float arrays (numpy, tensors, PIL
images), one image or a batch, [H, W] grayscale or channels-last with 1, 3 or 4 channels (grey
repeated, alpha dropped), or a list of images of different sizes. Floats are read as 0..255, the
convention of keras.applications' `preprocess_input`; `value_range=(0, 1)` says they are 0..1, and a
float input whose values all lie in [0, 1] under the default gets a one-line warning (it is most
likely 0..1, and would be read as a nearly black image). Anything else is a `ValueError` of one
line naming the expected shape and dtype, before TensorFlow sees it. Pure numpy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

CHANNELS = (1, 3, 4)
EXPECTED = (
    "uint8 or float RGB pixels: an image [H, W] or [H, W, C], a batch [N, H, W, C] with C = 1, 3 or 4, "
    "or a list of images of any sizes"
)
PIXEL_RANGE = (0.0, 255.0)


def _refuse(problem: str) -> ValueError:
    return ValueError(f"images: {problem}; expected {EXPECTED}.")


def _array(x: Any, what: str) -> np.ndarray:
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as err:  # ragged nesting, unconvertible objects
        raise _refuse(f"{what} is no array ({str(err).splitlines()[0]})") from None
    if a.dtype.kind not in "uif":
        raise _refuse(f"{what} has dtype {a.dtype}")
    return a


def _rgb(a: np.ndarray, what: str) -> np.ndarray:
    """[..., H, W, C] with C in CHANNELS -> [..., H, W, 3]: grey repeated, alpha dropped."""
    if a.shape[-1] not in CHANNELS:
        raise _refuse(f"{what} has shape {a.shape}, {a.shape[-1]} channels (channels go last)")
    if 0 in a.shape[-3:-1]:
        raise _refuse(f"{what} has shape {a.shape}, an empty image")
    if a.shape[-1] == 1:
        return np.repeat(a, 3, axis=-1)
    return a[..., :3]


def _image(a: np.ndarray, what: str) -> np.ndarray:
    """One image ([H, W] or [H, W, C]) as a batch of one [1, H, W, 3]."""
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise _refuse(f"{what} has shape {a.shape}")
    return _rgb(a, what)[None]


def _grouped(images: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Consecutive images of one size stacked into batches of at most `batch_size`."""
    batches: list[list[np.ndarray]] = []
    for image in images:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and last[0].shape == image.shape:
            last.append(image)
        else:
            batches.append([image])
    return [np.concatenate(b) for b in batches]


def _as_pixels(batches: list[np.ndarray], value_range: tuple[float, float]) -> list[np.ndarray]:
    """The batches as float32 0..255, after the dtype and range checks over all of them."""
    if not batches:
        return []
    low = min(float(b.min()) for b in batches)
    high = max(float(b.max()) for b in batches)
    floats = any(b.dtype.kind == "f" for b in batches)
    if floats and not (np.isfinite(low) and np.isfinite(high)):
        raise _refuse("the pixels hold NaN or infinity")
    lo, hi = (float(v) for v in value_range) if floats else PIXEL_RANGE
    if not lo < hi:
        raise ValueError(f"value_range={tuple(value_range)}: give (low, high) with low < high, e.g. (0, 1).")
    if low < lo or high > hi:
        kind = "float" if floats else "integer"
        raise _refuse(f"{kind} pixels from {low:g} to {high:g}, outside value_range=({lo:g}, {hi:g})")
    if floats and (lo, hi) == PIXEL_RANGE and 0 < high <= 1:
        warnings.warn(
            "images: float pixels all within [0, 1] are read as 0..255 (nearly black); "
            "pass value_range=(0, 1) if they are 0..1.",
            UserWarning,
            stacklevel=4,
        )
    scale = 255.0 / (hi - lo)
    return [((b.astype(np.float32) - lo) * scale).astype(np.float32) for b in batches]


def _nested(images: Sequence) -> bool:
    return bool(images) and isinstance(images[0], list | tuple)


def rgb_batches(
    images: Any, batch_size: int = 256, value_range: tuple[float, float] = PIXEL_RANGE
) -> list[np.ndarray]:
    """`images` as float32 [n, H, W, 3] batches of 0..255 pixels, in order, n <= `batch_size`.

    Raises:
        ValueError: one line naming what was given and the expected shape and dtype.
    """
    if not (isinstance(batch_size, int | np.integer) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    # A list of images (arrays, tensors); nested Python lists are one array, as Keras reads them.
    if isinstance(images, Sequence) and not isinstance(images, str | bytes) and not _nested(images):
        singles = [_image(_array(image, f"images[{i}]"), f"images[{i}]") for i, image in enumerate(images)]
        return _as_pixels(_grouped(singles, batch_size), value_range)
    a = _array(images, "the input")
    if a.ndim == 4:
        batch = _rgb(a, "the batch") if len(a) else a
        batches = [batch[i : i + batch_size] for i in range(0, len(batch), batch_size)]
    elif a.ndim in (2, 3):
        batches = [_image(a, "the image")]
    else:
        raise _refuse(f"the input has shape {a.shape}")
    return _as_pixels(batches, value_range)
