"""The stem initialised as a patch-whitening filter bank (`--stem_init=pca`), as in airbench and
hlb-cifar10: the first convolution's filters are the top principal components of the training
images' k x k patches, each scaled by 1 / sqrt(eigenvalue + eps), so that on those images its
outputs are decorrelated with unit variance (up to eps).

    kernel = whitening_kernel(batches, kernel_size=3, filters=16)   # (3, 3, 3, 16)
    whiten_stem(model, batches)                                       # assigns conv1_conv's kernel

NumPy and Keras only; `batches` are float arrays [B, H, W, C] of the run's input pipeline (mean
subtracted, `data.Datasets.train_sample`). Computed once, at the start of a fresh run: a resumed
run's checkpoint holds the weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import keras
import numpy as np

IMAGES = 4096  # training images a run whitens its stem from (airbench: 5,000)
STEM = "conv1_conv"  # models.builder's name for the first convolution (CIFAR and ImageNet nets)
# eps relative to the mean per-dimension variance of the patches: airbench's 5e-4 on inputs of
# unit variance, in whatever units the pipeline feeds (here mean-subtracted 0-255 pixels).
RELATIVE_EPS = 5e-4
POSITIONS = 32  # patch positions per side at most: every position of a 32 px image, every 7th of 224
CHUNK = 64  # images per patch extraction (CIFAR: 57,600 patches, 6 MB)


def patches(images: np.ndarray, kernel_size: int, stride: int = 1) -> np.ndarray:
    """Every `kernel_size` square patch of NHWC `images` (at `stride`), flattened in the order of a
    Conv2D kernel's (row, column, channel) axes: [N * positions, k * k * C]."""
    k = kernel_size
    windows = np.lib.stride_tricks.sliding_window_view(images, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    # [N, Y, X, C, k, k] -> [N, Y, X, k, k, C]
    return np.moveaxis(windows, 3, -1).reshape(-1, k * k * images.shape[-1])


def patch_covariance(batches: Iterable[np.ndarray], kernel_size: int) -> tuple[np.ndarray, int]:
    """(covariance of the patches, number of patches) over all `batches`, accumulated in float64."""
    total, outer, count = None, None, 0
    for batch in batches:
        batch = np.asarray(batch, np.float32)
        side = min(batch.shape[1:3]) - kernel_size + 1
        stride = max(1, math.ceil(side / POSITIONS))
        for start in range(0, len(batch), CHUNK):
            p = patches(batch[start : start + CHUNK], kernel_size, stride).astype(np.float64)
            total = p.sum(axis=0) if total is None else total + p.sum(axis=0)
            outer = p.T @ p if outer is None else outer + p.T @ p
            count += len(p)
    if count < 2:
        raise ValueError("the patch whitening needs images larger than the stem's kernel, and at least one.")
    mean = total / count
    return (outer - count * np.outer(mean, mean)) / (count - 1), count


def whitening_kernel(
    batches: Iterable[np.ndarray], kernel_size: int, filters: int, relative_eps: float = RELATIVE_EPS
) -> np.ndarray:
    """A (k, k, C, filters) Conv2D kernel whose filters whiten the patches of `batches`: the top
    `filters` eigenvectors of their covariance, largest eigenvalue first, each over
    sqrt(eigenvalue + eps). Signs are fixed (each filter's largest weight positive), so every worker
    of a cluster computes the same kernel from the same images."""
    cov, _ = patch_covariance(batches, kernel_size)
    dims = cov.shape[0]
    if filters > dims:
        raise ValueError(f"{filters} filters cannot whiten {dims}-dimensional patches: at most {dims}.")
    eigenvalues, eigenvectors = np.linalg.eigh(cov)  # ascending
    top = np.argsort(eigenvalues)[::-1][:filters]
    values, vectors = np.clip(eigenvalues[top], 0.0, None), eigenvectors[:, top]
    largest = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(filters)]
    vectors = vectors * np.where(largest < 0, -1.0, 1.0)
    eps = relative_eps * np.trace(cov) / dims
    scaled = vectors / np.sqrt(values + eps)
    channels = dims // (kernel_size * kernel_size)
    return scaled.reshape(kernel_size, kernel_size, channels, filters).astype(np.float32)


def whiten_stem(model: keras.Model, batches: Iterable[np.ndarray]) -> keras.layers.Conv2D:
    """Sets the first convolution's kernel (`conv1_conv`) to the whitening of `batches`' patches."""
    stem = model.get_layer(STEM)
    height, width, _, filters = stem.kernel.shape
    if height != width:
        raise ValueError(f"{STEM} has a {height}x{width} kernel; the patch whitening takes square ones.")
    kernel = whitening_kernel(batches, height, filters)
    stem.kernel.assign(kernel.astype(keras.backend.standardize_dtype(stem.kernel.dtype)))
    return stem
