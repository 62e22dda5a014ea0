"""tf.data input pipelines with the paper's augmentation (TensorFlow-specific).

Public interface (other modules rely on it):
- `DataInfo`: what a trained model needs to know about its data (classes, recipe, view size,
  mean), saved beside every run as `data_info.json` and read back by the export code.
- `eval_preprocess(images, info)`: pure-TensorFlow evaluation preprocessing, the same ops the
  evaluation pipeline runs, usable inside a SavedModel graph.
- `load(name, ...)` -> `Datasets`: training / validation / test datasets of (image, label).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import tensorflow as tf

CIFAR_RECIPE = "cifar"
IMAGENET_RECIPE = "imagenet"


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """Everything about a dataset that training, evaluation and serving must agree on.

    Attributes:
        name: dataset name (`cifar10`, `imagenette`, or `folder:<root>`).
        recipe: "cifar" (section 4.2) or "imagenet" (section 3.4) augmentation and evaluation.
        num_classes: number of classes.
        class_names: one name per label index.
        image_size: side of the square model input (training crop == evaluation view).
        resize_size: evaluation resizes the shorter side to this before the center crop
            (imagenet recipe; equals image_size for cifar).
        mean: float32 values subtracted from 0-255 pixels: a (H, W, 3) mean image (cifar) or
            a (3,) per-channel mean (imagenet).
        train_examples: examples in the training split actually used.
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
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        d["mean"] = np.asarray(self.mean, np.float32).tolist()
        return d

    @classmethod
    def from_json(cls, d: dict) -> DataInfo:
        d = dict(d)
        d["class_names"] = tuple(d["class_names"])
        d["mean"] = np.asarray(d["mean"], np.float32)
        return cls(**d)

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        path = pathlib.Path(directory) / "data_info.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json()))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> DataInfo:
        return cls.from_json(json.loads((pathlib.Path(directory) / "data_info.json").read_text()))


def eval_preprocess(images: tf.Tensor, info: DataInfo) -> tf.Tensor:
    """Evaluation view of a batch of 0-255 images of any size: float32 [B, S, S, 3], mean-subtracted.

    cifar: resized to S x S when not already that size (the paper evaluates the original view).
    imagenet: shorter side resized to `resize_size`, then an S x S center crop.
    """
    images = tf.cast(images, tf.float32)
    size = info.image_size
    if info.recipe == CIFAR_RECIPE:
        shape = tf.shape(images)
        images = tf.cond(
            tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size)),
            lambda: images,
            lambda: tf.image.resize(images, (size, size)),
        )
    else:
        images = _resize_shorter_side(images, info.resize_size)
        images = _center_crop(images, size)
    images = tf.ensure_shape(images, [None, size, size, 3])
    return images - tf.constant(info.mean, tf.float32)


def _resize_shorter_side(images: tf.Tensor, side: int) -> tf.Tensor:
    shape = tf.shape(images)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.minimum(h, w)
    new = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
    return tf.image.resize(images, tf.maximum(new, side))


def _center_crop(images: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.shape(images)
    top, left = (shape[1] - size) // 2, (shape[2] - size) // 2
    return images[:, top : top + size, left : left + size, :]
