"""Preprocessing shared by training, evaluation and serving (pure TensorFlow ops).

- `DataInfo`: what a trained model needs to know about its data (classes, recipe, view size,
  mean), saved beside every run as `data_info.json` and read back by the export code.
- `eval_preprocess(images, info)`: the evaluation view, the same ops in the evaluation pipeline
  and inside an exported SavedModel's graph; `ten_crop` the paper's 10-crop views.
- `cifar_augment`, `imagenet_augment`, `lighting_shift`: the training views of section 4.2 and
  section 3.4, vectorized over a batch and driven by stateless seeds.

Recipes:
- cifar (section 4.2): the per-pixel mean image of the training images actually used is subtracted,
  then 4 pixels of zeros are padded on each side (so padding equals the mean colour, as in
  fb.resnet.torch), a random 32x32 window is taken and flipped with probability 1/2. Evaluation
  sees the original 32x32 view. Optional, off by default: other translations, alternating flips,
  cutout.
- imagenet (section 3.4): scale augmentation resizes the shorter side to a length drawn uniformly
  from [256, 480] and takes a random 224x224 crop, flipped with probability 1/2; optional PCA
  lighting noise (AlexNet's colour augmentation); a per-CHANNEL mean is subtracted. Evaluation
  resizes the shorter side to 256 and takes the center 224x224. Everything scales with
  `image_size` S: shorter side in [256 S/224, 480 S/224], evaluation resize 256 S/224 (for S=128:
  [146, 274] and 146; see `scale_range` and `resize_size_for`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import tensorflow as tf

from keras_resnet import files

CIFAR_RECIPE = "cifar"
IMAGENET_RECIPE = "imagenet"

CIFAR_PAD = 4
# The paper's ImageNet numbers at 224: scale range of the shorter side and the evaluation resize.
IMAGENET_CROP = 224
IMAGENET_SCALE = (256, 480)
IMAGENET_RESIZE = 256
# Standard per-channel ImageNet train mean (0-255), used for imagenet2012 where a pass over
# 1.28M images to recompute it would cost more than it could change.
IMAGENET_MEAN = (123.68, 116.78, 103.94)
# AlexNet's PCA of ImageNet RGB (0-1 scale), as in fb.resnet.torch's `Lighting`.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
LIGHTING_STD = 0.1


@dataclasses.dataclass(frozen=True, eq=False)
class DataInfo:
    """Everything about a dataset that training, evaluation and serving must agree on.

    Attributes:
        name: dataset name (`cifar10`, `imagenette`, `digits`, or `folder:<root>`).
        recipe: "cifar" (section 4.2) or "imagenet" (section 3.4) augmentation and evaluation.
        num_classes: number of classes.
        class_names: one name per label index.
        image_size: side of the square model input (training crop == evaluation view).
        resize_size: evaluation resizes the shorter side to this before the center crop
            (imagenet recipe; equals image_size for cifar).
        mean: float32 values subtracted from 0-255 pixels: a (H, W, 3) mean image (cifar) or
            a (3,) per-channel mean (imagenet).
        train_examples: examples in the training split actually used.

    Equal infos compare equal and hash alike (the mean by value).
    """

    name: str
    recipe: str
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int
    resize_size: int
    mean: np.ndarray
    train_examples: int

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["class_names"] = list(self.class_names)
        d["mean"] = np.asarray(self.mean, np.float32).tolist()
        return d

    @classmethod
    def from_json(cls, d: dict) -> DataInfo:
        d = dict(d)
        d["class_names"] = tuple(d["class_names"])
        d["mean"] = np.asarray(d["mean"], np.float32)
        return cls(**d)

    def __eq__(self, other) -> bool:
        if not isinstance(other, DataInfo):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_json(), sort_keys=True))

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        return files.write_json(pathlib.Path(directory) / "data_info.json", self.to_json(), indent=None)

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> DataInfo:
        path = pathlib.Path(directory) / "data_info.json"
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError, AttributeError) as err:  # not JSON, or not this record
            raise ValueError(
                f"{path} is not a data description this version writes ({type(err).__name__}: "
                f"{str(err)[:80]}): take it from the training run's --model_dir, or train again."
            ) from None


def scale_range(image_size: int) -> tuple[int, int]:
    """Range of the shorter side for scale augmentation: the paper's [256, 480] at 224, scaled."""
    return tuple(round(s * image_size / IMAGENET_CROP) for s in IMAGENET_SCALE)


def resize_size_for(image_size: int) -> int:
    """Shorter side before the evaluation center crop: the paper's 256 at 224, scaled."""
    return round(IMAGENET_RESIZE * image_size / IMAGENET_CROP)


# ----------------------------------------------------------------------------------------------
# Augmentation and evaluation views (pure TensorFlow, batch or single image)


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


def eval_preprocess(images: tf.Tensor, info: DataInfo) -> tf.Tensor:
    """Evaluation view of a batch of 0-255 images of any size: float32 [B, S, S, 3], mean-subtracted.

    cifar: resized to S x S when not already that size (the paper evaluates the original view).
    imagenet: shorter side resized to `resize_size`, then an S x S center crop. Resizing is
    bilinear, antialiased when it shrinks.
    """
    images = tf.cast(images, tf.float32)
    size = info.image_size
    if info.recipe == CIFAR_RECIPE:
        shape = tf.shape(images)
        images = tf.cond(
            tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size)),
            lambda: images,
            lambda: tf.image.resize(images, (size, size), antialias=True),
        )
    else:
        images = _resize_shorter_side(images, info.resize_size)
        images = _center_crop(images, size)
    images = tf.ensure_shape(images, [None, size, size, 3])
    return images - tf.constant(info.mean, tf.float32)


def ten_crop(images: tf.Tensor, info: DataInfo) -> tf.Tensor:
    """The paper's 10-crop views of a 0-255 batch: float32 [B, 10, S, S, 3], mean-subtracted.

    4 corners + center and their horizontal flips, taken from the shorter side resized to
    `resize_size` (imagenet recipe) or from the mean-subtracted image zero-padded by 4 like in
    training (cifar recipe, whose center crop is the original view).
    """
    x = tf.cast(images, tf.float32)
    size = info.image_size
    if info.recipe == CIFAR_RECIPE:
        x = eval_preprocess(x, info)
        x = tf.pad(x, [[0, 0], [CIFAR_PAD, CIFAR_PAD], [CIFAR_PAD, CIFAR_PAD], [0, 0]])
    else:
        x = _resize_shorter_side(x, info.resize_size) - tf.constant(info.mean, tf.float32)
    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    crops = [
        x[:, :size, :size],
        x[:, :size, w - size :],
        x[:, h - size :, :size],
        x[:, h - size :, w - size :],
        _center_crop(x, size),
    ]
    crops += [c[:, :, ::-1] for c in crops]
    return tf.ensure_shape(tf.stack(crops, axis=1), [None, 10, size, size, 3])


def _resize_shorter_side(images: tf.Tensor, side: int) -> tf.Tensor:
    shape = tf.shape(images)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.minimum(h, w)
    new = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
    # Antialiased: a photo many times the view's size must not alias (upscaling is unaffected).
    return tf.image.resize(images, tf.maximum(new, side), antialias=True)


def _center_crop(images: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.shape(images)
    top, left = (shape[1] - size) // 2, (shape[2] - size) // 2
    return images[:, top : top + size, left : left + size, :]
