"""The paper's two recipes as objects: each owns its options, its refusals, its training pipeline
and its evaluation views.

- `CifarRecipe` (section 4.2): the per-pixel mean image subtracted, 4-pixel translations and
  flips; options: other translations, alternating flips, cutout, low-resolution first epochs.
  Evaluation sees the original 32x32 view.
- `ImagenetRecipe` (section 3.4): scale augmentation (shorter side in [256, 480] S/224, a random
  S x S crop, a flip), optional PCA lighting noise, a per-channel mean. Evaluation resizes the
  shorter side to 256 S/224 and takes the center S x S.

An option is a field of `DataConfig`; a recipe that does not apply it refuses it by name.
`eval_preprocess(images, info)` is the evaluation view of any trained model's data, the same
ops in the evaluation pipeline and inside an exported SavedModel's graph.
"""

from __future__ import annotations

from typing import ClassVar

import tensorflow as tf

from keras_resnet.config import DataConfig
from keras_resnet.data import views
from keras_resnet.data.info import CIFAR_PAD, CIFAR_RECIPE, IMAGENET_RECIPE, DataInfo, scale_range
from keras_resnet.data.storage import ImageArray, Split

AUTOTUNE = tf.data.AUTOTUNE


def seeds(seed: int, worker: int) -> tf.data.Dataset:
    """Endless, reproducible stream of [2] int64 seeds for the stateless random ops, its own for
    each worker (the same crops and flips at the same batch positions on every worker otherwise)."""
    pairs = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
    return pairs if worker == 0 else pairs.map(lambda s: s + tf.constant([0, worker], tf.int64))


class Recipe:
    """A recipe for `config`'s options on a dataset whose images may be mirrored (`mirror`)."""

    name: ClassVar[str]

    def __init__(self, config: DataConfig, size: int, mirror: bool, dataset: str):
        self.config, self.size, self.dataset = config, size, dataset
        self.flip = config.flip or ("random" if mirror else "none")
        self.check()

    def check(self) -> None:
        """Raises ValueError naming the flag this recipe does not apply, or whose value cannot work."""

    def train(
        self, split: Split, info: DataInfo, batch_size: int, seed: int, start_step: int, w: int, i: int
    ):
        """Infinite, shuffled, augmented batches (float32 [B, S, S, 3] mean-subtracted, int32 [B])."""
        raise NotImplementedError

    @staticmethod
    def eval_view(images: tf.Tensor, info: DataInfo) -> tf.Tensor:
        raise NotImplementedError

    @staticmethod
    def ten_crop(images: tf.Tensor, info: DataInfo) -> tf.Tensor:
        raise NotImplementedError


class CifarRecipe(Recipe):
    name = CIFAR_RECIPE

    def check(self) -> None:
        c, size = self.config, self.size
        if c.color_augmentation:
            raise ValueError(
                f"--color_augmentation is part of the imagenet recipe; {self.dataset} uses the cifar recipe: "
                "drop it."
            )
        if c.low_res_size >= size:
            raise ValueError(f"--low_res_size={c.low_res_size} must be smaller than the {size} px images.")
        if c.translate >= size or c.cutout > size:
            raise ValueError(
                f"--translate={c.translate} and --cutout={c.cutout} must be below the {size} px image side "
                f"(the paper translates by 4; cutout is usually half the side, {size // 2})."
            )

    def train(self, split: ImageArray, info, batch_size, seed, start_step, w, i):
        """Small images in memory: whole batches gathered and augmented at once."""
        c = self.config
        mean = tf.constant(info.mean, tf.float32)
        images, labels = tf.constant(split.images), tf.constant(split.labels)
        n = split.num_examples
        shard_size = len(range(i, n, w))
        order = tf.data.Dataset.range(n).shard(w, i)
        stream = order.shuffle(shard_size, seed=seed + start_step, reshuffle_each_iteration=True).repeat()
        if self.flip == "alternating":
            # Each pass is exactly one shuffled shard, so an element's position says its epoch. A
            # resumed run starts a new pass, counted as the epoch nearest to where it stopped.
            first = round(start_step * batch_size / shard_size)
            stream = stream.enumerate().map(
                lambda p, k: (k, views.alternating_flips(k, first + p // shard_size, seed))
            )
        batches = stream.batch(batch_size, drop_remainder=True)
        low_res_steps = c.low_res_epochs * (n // batch_size) if c.low_res_size else 0

        def augment(step, batch, s):
            k, flips = batch if self.flip == "alternating" else (batch, None)
            if self.flip == "none":
                flips = tf.zeros(tf.shape(k), tf.bool)
            x = views.cifar_augment(
                tf.gather(images, k), mean, s, pad=c.translate, flips=flips, cutout=c.cutout
            )
            if low_res_steps > start_step:
                # Fewer pixels, fewer multiply-adds: the early steps train the same net on smaller images.
                side = c.low_res_size
                x = tf.cond(
                    step < low_res_steps, lambda: tf.image.resize(x, (side, side), antialias=True), lambda: x
                )
            return x, tf.gather(labels, k)

        steps = tf.data.Dataset.zip(batches, seeds(seed + start_step + 1, i)).enumerate(start_step)
        return steps.map(lambda step, pair: augment(step, *pair), num_parallel_calls=AUTOTUNE)

    @staticmethod
    def eval_view(images, info):
        return views.cifar_eval_view(images, info.image_size, info.mean)

    @staticmethod
    def ten_crop(images, info):
        """From the mean-subtracted image zero-padded by 4 as in training (its center: the original)."""
        x = CifarRecipe.eval_view(images, info)
        x = tf.pad(x, [[0, 0], [CIFAR_PAD, CIFAR_PAD], [CIFAR_PAD, CIFAR_PAD], [0, 0]])
        return views.ten_crop_views(x, info.image_size)


class ImagenetRecipe(Recipe):
    name = IMAGENET_RECIPE

    def check(self) -> None:
        c = self.config
        if self.flip == "alternating":
            raise ValueError("--flip=alternating is implemented for the cifar recipe only; use random.")
        if c.translate != CIFAR_PAD or c.cutout or c.low_res_size:
            raise ValueError(
                f"--translate, --cutout and --low_res_size belong to the cifar recipe; {self.dataset} uses "
                "the imagenet recipe (scale augmentation): leave them at their defaults."
            )

    def train(self, split, info, batch_size, seed, start_step, w, i):
        seed += start_step
        mean = tf.constant(info.mean, tf.float32)
        size, scale = info.image_size, scale_range(info.image_size)
        mirror, color = self.flip == "random", self.config.color_augmentation

        # One image at a time, even when all have one size: measured on imagenette, per-image
        # maps spread over the cores better than one crop_and_resize per batch (1.3-1.8x).
        def crop(image, label, s):
            return views.imagenet_augment(image[None], size, scale, s, mirror=mirror)[0], label

        def normalize(images, labels, s):
            if color:  # one pass over the pixels: subtract (mean - shift)
                return images - (mean - views.lighting_shift(tf.shape(images)[0], s))[
                    :, None, None, :
                ], labels
            return images - mean, labels

        ds = tf.data.Dataset.zip(split.examples(seed, w, i), seeds(seed + 1, i))
        ds = ds.map(lambda x, s: crop(*x, s), num_parallel_calls=AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
        return tf.data.Dataset.zip(ds, seeds(seed + 2, i)).map(
            lambda x, s: normalize(*x, s), num_parallel_calls=AUTOTUNE
        )

    @staticmethod
    def eval_view(images, info):
        return views.imagenet_eval_view(images, info.image_size, info.resize_size, info.mean)

    @staticmethod
    def ten_crop(images, info):
        x = views.center_crop_aspect(tf.cast(images, tf.float32), views.MAX_TEN_CROP_ASPECT)
        x = views.resize_shorter_side(x, info.resize_size)
        return views.ten_crop_views(x - tf.constant(info.mean, tf.float32), info.image_size)


RECIPES: dict[str, type[Recipe]] = {CIFAR_RECIPE: CifarRecipe, IMAGENET_RECIPE: ImagenetRecipe}


def eval_preprocess(images: tf.Tensor, info: DataInfo) -> tf.Tensor:
    """Evaluation view of a batch of 0-255 images of any size: float32 [B, S, S, 3], mean-subtracted."""
    return RECIPES[info.recipe].eval_view(images, info)


def ten_crop(images: tf.Tensor, info: DataInfo) -> tf.Tensor:
    """The paper's 10-crop views of a 0-255 batch: float32 [B, 10, S, S, 3], mean-subtracted."""
    return RECIPES[info.recipe].ten_crop(images, info)
