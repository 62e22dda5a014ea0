"""The views of an image batch (pure TensorFlow ops, batch or single image), shared by training,
evaluation and serving.

- `cifar_augment`, `alternating_flips`: the training view of section 4.2, vectorized over a
  batch and driven by stateless seeds: the per-pixel mean subtracted, 4 pixels of zeros padded on
  each side (so padding equals the mean colour, as in fb.resnet.torch), a random window, a flip.
- `imagenet_augment`, `lighting_shift`, `pca_lighting`: section 3.4's scale augmentation (the
  shorter side resized to a length in [256, 480], a random 224 crop, a flip) and AlexNet's colour
  noise; everything scales with the view size S (`info.scale_range`).
- `cifar_eval_view`, `imagenet_eval_view`, `ten_crop_views`: the evaluation views (the original
  32x32; the shorter side resized to 256 S/224 and the center S x S; the paper's 10 crops).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_resnet.data.info import CIFAR_PAD

# AlexNet's PCA of ImageNet RGB (0-1 scale), as in fb.resnet.torch's `Lighting`.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
LIGHTING_STD = 0.1
MAX_ASPECT = 2  # long side over short side kept by the evaluation view before it resizes
# The 10-crop view's corners lie at the ends of the long side: cut only what no photograph has
# (a 1x1,000,000 PNG scaled to a 256 px short side would be 768 GB of floats).
MAX_TEN_CROP_ASPECT = 16


def cifar_augment(
    images: tf.Tensor,
    mean: tf.Tensor | np.ndarray,
    seed: tf.Tensor,
    pad: int = CIFAR_PAD,
    flips: tf.Tensor | None = None,
    cutout: int = 0,
):
    """Section 4.2 training view of a batch: float32 [B, S, S, 3] from 0-255 [B, S, S, 3].

    Mean subtraction, `pad` pixels of zero padding, a random S x S window of the padded image and a
    horizontal flip, all per image but as a few vectorized gathers over the whole batch.

    Args:
        images: uint8 or float batch of square images.
        mean: the (S, S, 3) mean image (or anything that broadcasts).
        seed: int32/int64 [2] seed for the stateless random ops.
        pad: zero padding on each side, i.e. the largest translation (0: none).
        flips: bool [B], which images to mirror; None: each with probability 1/2 (the paper).
        cutout: side of a square set to zero (the mean colour) at a random center in each image,
            clipped at the borders (DeVries & Taylor, 2017); 0: none.
    """
    x = tf.cast(images, tf.float32) - tf.cast(mean, tf.float32)
    size = x.shape[1] or tf.shape(x)[1]
    batch = tf.shape(x)[0]
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    s_top, s_left, s_flip, s_cut = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    top = tf.random.stateless_uniform([batch, 1], s_top, 0, 2 * pad + 1, tf.int32)
    left = tf.random.stateless_uniform([batch, 1], s_left, 0, 2 * pad + 1, tf.int32)
    if flips is None:
        flip = tf.random.stateless_uniform([batch, 1], s_flip, 0, 2, tf.int32) > 0
    else:
        flip = tf.reshape(tf.cast(flips, tf.bool), [batch, 1])
    r = tf.range(size)
    # A flipped window reads its columns right to left: crop and flip are one gather.
    cols = tf.where(flip, left + size - 1 - r, left + r)
    x = tf.gather(x, top + r, axis=1, batch_dims=1)
    x = tf.gather(x, cols, axis=2, batch_dims=1)
    if cutout:
        corner = tf.random.stateless_uniform([batch, 2], s_cut, 0, size, tf.int32) - cutout // 2
        rows = (r[None] >= corner[:, :1]) & (r[None] < corner[:, :1] + cutout)
        columns = (r[None] >= corner[:, 1:]) & (r[None] < corner[:, 1:] + cutout)
        keep = ~(rows[:, :, None] & columns[:, None, :])
        x = x * tf.cast(keep, x.dtype)[..., None]
    return x


def alternating_flips(index: tf.Tensor, epoch: tf.Tensor, seed: int) -> tf.Tensor:
    """Alternating flips (Jordan, 2024, airbench): each image mirrored in every other epoch.

    Whether an image starts mirrored is a fixed pseudo-random bit of (index, seed); from then on
    it alternates, so every image is seen both ways within any two consecutive epochs.
    """
    index = tf.cast(index, tf.int64)
    start = tf.bitwise.bitwise_and(tf.bitwise.right_shift((index + seed) * 2654435761, 16), 1)
    return tf.equal(tf.math.floormod(start + tf.cast(epoch, tf.int64), 2), 1)


def imagenet_augment(
    images: tf.Tensor, size: int, scale: tuple[int, int], seed: tf.Tensor, mirror: bool = True
) -> tf.Tensor:
    """Section 3.4 training crops of a 0-255 batch [B, H, W, 3]: float32 [B, size, size, 3], mean not removed.

    Resizing the shorter side to L ~ U[scale] and cropping size x size equals cropping a square of
    side size * min(H, W) / L from the original and resizing only that window: the same view for
    a fraction of the work, and one `crop_and_resize` op for the whole batch. The window's corner
    pixels map to the output's corner pixels (bilinear), so every sample lies inside the image.
    A random horizontal flip (unless `mirror` is False) is the same window read right to left.
    """
    s_scale, s_top, s_left, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    shape = tf.shape(images)
    batch = shape[0]
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    short = tf.minimum(h, w)
    target = tf.random.stateless_uniform([batch], s_scale, float(scale[0]), float(scale[1]))
    side = tf.clip_by_value(tf.round(size * short / target), 1.0, short)
    top = tf.floor(tf.random.stateless_uniform([batch], s_top) * (h - side + 1))
    left = tf.floor(tf.random.stateless_uniform([batch], s_left) * (w - side + 1))
    flip = tf.random.stateless_uniform([batch], s_flip) < (0.5 if mirror else 0.0)
    y1, y2 = top / (h - 1), (top + side - 1) / (h - 1)
    x1, x2 = left / (w - 1), (left + side - 1) / (w - 1)
    x1, x2 = tf.where(flip, x2, x1), tf.where(flip, x1, x2)
    boxes = tf.stack([y1, x1, y2, x2], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(batch), (size, size))


def lighting_shift(batch: tf.Tensor, seed: tf.Tensor, std: float = LIGHTING_STD) -> tf.Tensor:
    """AlexNet's colour augmentation: per image, the RGB shift eigvec @ (alpha * eigval) * 255,
    alpha ~ N(0, std); float32 [batch, 3] for 0-255 pixels."""
    alpha = tf.random.stateless_normal([batch, 3], seed, stddev=std)
    eigvec = tf.constant(PCA_EIGVEC, tf.float32)
    return tf.matmul(alpha * tf.constant(PCA_EIGVAL, tf.float32), eigvec, transpose_b=True) * 255.0


def pca_lighting(images: tf.Tensor, seed: tf.Tensor, std: float = LIGHTING_STD) -> tf.Tensor:
    """`lighting_shift` added to every pixel of a 0-255 batch [B, H, W, 3]."""
    return images + lighting_shift(tf.shape(images)[0], seed, std)[:, None, None, :]


def cifar_eval_view(images: tf.Tensor, size: int, mean) -> tf.Tensor:
    """The cifar recipe's evaluation view: float32 [B, S, S, 3], mean-subtracted; the original
    view, resized (bilinear, antialiased when it shrinks) only when not already S x S."""
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    images = tf.cond(
        tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size)),
        lambda: images,
        lambda: tf.image.resize(images, (size, size), antialias=True),
    )
    return tf.ensure_shape(images, [None, size, size, 3]) - tf.constant(mean, tf.float32)


def imagenet_eval_view(images: tf.Tensor, size: int, resize: int, mean) -> tf.Tensor:
    """The imagenet recipe's evaluation view: the shorter side resized to `resize`, the center S x S.

    The long side is first cut to at most MAX_ASPECT times the short one, around the center: the
    same view (the center crop lies far inside), but a 1x1,000,000 image is not scaled up to
    146x146,000,000 pixels first.
    """
    images = center_crop_aspect(tf.cast(images, tf.float32), MAX_ASPECT)
    images = center_crop(resize_shorter_side(images, resize), size)
    return tf.ensure_shape(images, [None, size, size, 3]) - tf.constant(mean, tf.float32)


def ten_crop_views(x: tf.Tensor, size: int) -> tf.Tensor:
    """The paper's 10 crops of a mean-subtracted batch larger than S: float32 [B, 10, S, S, 3],
    the 4 corners and the center, and their horizontal flips."""
    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    crops = [
        x[:, :size, :size],
        x[:, :size, w - size :],
        x[:, h - size :, :size],
        x[:, h - size :, w - size :],
        center_crop(x, size),
    ]
    crops += [c[:, :, ::-1] for c in crops]
    return tf.ensure_shape(tf.stack(crops, axis=1), [None, 10, size, size, 3])


def resize_shorter_side(images: tf.Tensor, side: int) -> tf.Tensor:
    shape = tf.shape(images)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.minimum(h, w)
    new = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
    # Antialiased: a photo many times the view's size must not alias (upscaling is unaffected).
    return tf.image.resize(images, tf.maximum(new, side), antialias=True)


def center_crop(images: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.shape(images)
    top, left = (shape[1] - size) // 2, (shape[2] - size) // 2
    return images[:, top : top + size, left : left + size, :]


def center_crop_aspect(images: tf.Tensor, max_aspect: int) -> tf.Tensor:
    """The middle of a batch whose long side exceeds `max_aspect` times its short side."""
    shape = tf.shape(images)
    h, w = shape[1], shape[2]
    short = tf.minimum(h, w)
    new_h, new_w = tf.minimum(h, max_aspect * short), tf.minimum(w, max_aspect * short)
    top, left = (h - new_h) // 2, (w - new_w) // 2
    return images[:, top : top + new_h, left : left + new_w, :]
