"""tf.data input pipelines with the paper's augmentation (TensorFlow-specific).

    ds = data.load("cifar10", batch_size=128, validation_split=True)   # 45k/5k
    ds.train, ds.validation, ds.test, ds.info, ds.steps_per_epoch

`load` resolves the name to its images (`sources`), then builds the pipelines around the views of
`preprocessing`: training batches are infinite, shuffled and augmented, with the GLOBAL batch
size (tf.distribute splits them across replicas); evaluation batches keep the split's order.
Every random choice comes from stateless ops seeded from `seed`, so an augmented example only
depends on the seed, its position in the stream and TensorFlow's global seed (tf.data combines
op seeds with it; train.py sets it to --seed). Each worker reads its own shard
(`num_workers`/`worker_index`) and tf.distribute's auto-sharding is off.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from keras_resnet import sources
from keras_resnet.preprocessing import (
    CIFAR_PAD,
    CIFAR_RECIPE,
    DataInfo,
    alternating_flips,
    cifar_augment,
    eval_preprocess,
    imagenet_augment,
    lighting_shift,
    resize_size_for,
    scale_range,
    ten_crop,
)
from keras_resnet.sources import DataUnavailable  # noqa: F401  (re-exported: what callers catch)

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class Datasets:
    """What `load` returns.

    Attributes:
        train: infinite, shuffled, augmented; batches of the GLOBAL batch size (remainder dropped),
            elements (float32 [B, S, S, 3] mean-subtracted, int32 [B]).
        validation: finite evaluation view of the held-out split (`validation_split=True`), else None.
        test: finite evaluation view of the test split (cifar `test`, imagenet/folders `val`).
        info: the `DataInfo` a model trained on this data must carry.
        steps_per_epoch: train_examples // batch_size.
        validation_examples: examples in `validation` (0 without a held-out split).
        test_examples: examples in `test`.
        skipped: corrupt or unreadable files left out per split (`skip_corrupt=True`).
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    info: DataInfo
    steps_per_epoch: int
    validation_examples: int
    test_examples: int
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    _ten_crop_test: Callable[[], tf.data.Dataset] | None = dataclasses.field(default=None, repr=False)
    _train_evaluation: Callable[[], tf.data.Dataset] | None = dataclasses.field(default=None, repr=False)
    _test_split: sources.Split | None = dataclasses.field(default=None, repr=False)

    def train_evaluation(self) -> tf.data.Dataset:
        """The training images actually trained on, once each, in their evaluation view (no
        augmentation): to measure the final model's training error as the paper's curves end."""
        return self._train_evaluation()

    def ten_crop_test(self) -> tf.data.Dataset:
        """The test split as batches of (float32 [B, 10, S, S, 3] views, int32 [B]): average the
        model's 10 outputs per image for the paper's 10-crop evaluation."""
        return self._ten_crop_test()

    def test_example(self, i: int = 0) -> tuple[np.ndarray, int]:
        """Test image `i` as stored (uint8 [H, W, 3], before any preprocessing) and its label."""
        split = self._test_split
        labels = getattr(split, "labels", None)
        if labels is None:  # a streamed split: read the example itself
            return split.image(i), int(next(iter(split.make(1, 0, None).skip(i).take(1)))[1])
        return split.image(i), int(labels[i])


def load(
    name: str,
    *,
    data_dir: str | None = None,
    download: bool = True,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    validation_split: bool = False,
    seed: int = 0,
    start_step: int = 0,
    deterministic: bool = False,
    image_size: int | None = None,
    color_augmentation: bool = False,
    flip: str = "",
    translate: int = CIFAR_PAD,
    cutout: int = 0,
    low_res_size: int = 0,
    low_res_epochs: int = 0,
    skip_corrupt: bool = False,
    cache_dir: str | None = None,
    num_workers: int = 1,
    worker_index: int = 0,
    cache_images: bool | None = None,
    verbose: bool = True,
) -> Datasets:
    """Training and evaluation datasets for a TFDS name, the embedded digits or an image folder.

    Args:
        name: `cifar10`, `cifar100`, `imagenette`, `imagenet2012` (TFDS), `digits` (scikit-learn's
            handwritten digits, no download), or `folder:<root>` / an existing directory laid out
            as ROOT/<split>/<class>/<image>.
        data_dir: TFDS data dir (default `$KERAS_RESNET_DATA/tensorflow_datasets` if set, else
            TFDS's own). `imagenette` falls back to an image folder `imagenette/` beside it.
        download: let TFDS download and prepare a missing dataset (off: a clear error instead).
        batch_size: GLOBAL training batch size (all replicas and workers).
        eval_batch_size: evaluation batch size (default batch_size).
        validation_split: hold out 10% of train, stratified and fixed (CIFAR's 45k/5k); the mean
            is then computed on the remaining 90%.
        seed: shuffling and augmentation seed.
        start_step: the training step the batches start at (a resumed run): its batches and
            augmentations differ from the first run's, and alternating flips continue the
            run's alternation (exactly when it resumes at an epoch boundary).
        deterministic: keep the training order reproducible across runs (parallel maps may then
            wait for slow elements); evaluation order is always the split's.
        image_size: model input side (default 32 for cifar and digits, 224 for imagenet2012, 128
            otherwise).
        color_augmentation: PCA lighting noise (imagenet recipe only).
        flip: "random" (the paper), "alternating" (cifar recipe: every other epoch per image),
            "none"; empty: random, except for digits (none: a mirrored digit is another shape).
        translate: cifar recipe only: largest random translation in pixels (the paper: 4).
        cutout: cifar recipe only: side of a random square zeroed in each training image (0: off).
        low_res_size, low_res_epochs: cifar recipe only: the training batches of the first
            `low_res_epochs` epochs are resized (bilinear, antialiased) to `low_res_size` px after
            their augmentation; evaluation keeps the full size.
        skip_corrupt: leave out corrupt/unreadable folder images (counted in `Datasets.skipped`)
            instead of raising.
        cache_dir: where the mean is cached (default `$KERAS_RESNET_CACHE` or ~/.cache/keras_resnet).
        num_workers, worker_index: shard all splits per worker (MultiWorkerMirroredStrategy); keep
            batch_size global.
        cache_images: hold decoded folder images in memory (default: when they take at most a
            quarter of RAM).
        verbose: print progress while decoding large folders.

    Raises:
        ValueError: bad arguments, an unknown name, a bad folder layout, fewer than 2 classes.
        FileNotFoundError (`DataUnavailable`): missing data that cannot be fetched; the message
            names the dataset, where it was looked for and the fix.
    """
    if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
        raise ValueError(
            f"batch_size and eval_batch_size must be positive, got {batch_size}, {eval_batch_size}."
        )
    if not 0 <= worker_index < num_workers:
        raise ValueError(f"worker_index must be in [0, num_workers={num_workers}), got {worker_index}.")
    if flip not in ("", "random", "alternating", "none"):
        raise ValueError(f"flip={flip!r}: expected random, alternating, none or empty.")
    src = sources.resolve(
        name,
        data_dir=data_dir,
        download=download,
        validation_split=validation_split,
        image_size=image_size,
        skip_corrupt=skip_corrupt,
        cache_images=cache_images,
        cache_dir=pathlib.Path(cache_dir) if cache_dir else None,
        verbose=verbose,
    )
    if len(src.class_names) < 2:
        raise ValueError(f"{src.name} has {len(src.class_names)} class: a classifier needs at least 2.")
    size = image_size or src.default_size
    train, validation, test = src.train, src.validation, src.test
    info = DataInfo(
        name=src.name,
        recipe=src.recipe,
        num_classes=len(src.class_names),
        class_names=tuple(src.class_names),
        image_size=size,
        resize_size=size if src.recipe == CIFAR_RECIPE else resize_size_for(size),
        mean=np.asarray(src.mean, np.float32),
        train_examples=train.num_examples,
    )
    if train.num_examples < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {train.num_examples} training examples of "
            f"{src.name}: lower --batch_size."
        )
    flip = flip or ("random" if src.mirror else "none")
    # An option the recipe does not apply is refused, not ignored.
    if info.recipe == CIFAR_RECIPE and color_augmentation:
        raise ValueError(
            f"--color_augmentation is part of the imagenet recipe; {src.name} uses the cifar recipe: drop it."
        )
    if info.recipe != CIFAR_RECIPE:
        if flip == "alternating":
            raise ValueError("--flip=alternating is implemented for the cifar recipe only; use random.")
        if translate != CIFAR_PAD or cutout or low_res_size:
            raise ValueError(
                f"--translate, --cutout and --low_res_size belong to the cifar recipe; {src.name} uses "
                "the imagenet recipe (scale augmentation): leave them at their defaults."
            )
    if low_res_size >= size:
        raise ValueError(f"--low_res_size={low_res_size} must be smaller than the {size} px images.")
    w, i = num_workers, worker_index
    eval_batch_size = eval_batch_size or batch_size

    def finish(ds: tf.data.Dataset, ordered: bool = True) -> tf.data.Dataset:
        # Evaluation always keeps the split's order, so predictions line up with examples.
        return ds.prefetch(AUTOTUNE).with_options(_options(ordered))

    def evaluation(split: sources.Split | None, ten: bool = False) -> tf.data.Dataset | None:
        return None if split is None else finish(_eval_dataset(split, info, eval_batch_size, w, i, ten))

    steps_per_epoch = train.num_examples // batch_size
    low_res = (low_res_size, low_res_epochs * steps_per_epoch) if low_res_size else (0, 0)
    augment = _Augmentation(color_augmentation, flip, translate, cutout, low_res)
    return Datasets(
        train=finish(_train_dataset(train, info, batch_size, seed, start_step, augment, w, i), deterministic),
        validation=evaluation(validation),
        test=evaluation(test),
        info=info,
        steps_per_epoch=steps_per_epoch,
        validation_examples=validation.num_examples if validation is not None else 0,
        test_examples=test.num_examples,
        skipped=src.skipped,
        _ten_crop_test=lambda: evaluation(test, ten=True),
        _train_evaluation=lambda: evaluation(train),
        _test_split=test,
    )


# ----------------------------------------------------------------------------------------------
# Pipelines


@dataclasses.dataclass(frozen=True)
class _Augmentation:
    color: bool = False
    flip: str = "random"
    translate: int = CIFAR_PAD
    cutout: int = 0
    low_res: tuple[int, int] = (0, 0)  # (side in px, training steps from the start)


def _seeds(seed: int, worker: int) -> tf.data.Dataset:
    """Endless, reproducible stream of [2] int64 seeds for the stateless random ops, its own for
    each worker (the same crops and flips at the same batch positions on every worker otherwise)."""
    pairs = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
    return pairs if worker == 0 else pairs.map(lambda s: s + tf.constant([0, worker], tf.int64))


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    # We shard per worker ourselves (num_workers/worker_index): tf.distribute must not re-shard,
    # and must not warn that it cannot shard a dataset that does not read files.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _cifar_train(
    split: sources.ImageArray,
    info: DataInfo,
    batch_size: int,
    seed: int,
    start_step: int,
    aug: _Augmentation,
    w,
    i,
):
    """Small images in memory: gather and augment whole batches."""
    mean = tf.constant(info.mean, tf.float32)
    images, labels = tf.constant(split.images), tf.constant(split.labels)
    n = split.num_examples
    order = tf.data.Dataset.range(n).shard(w, i)
    shard_size = len(range(i, n, w))
    stream = order.shuffle(shard_size, seed=seed + start_step, reshuffle_each_iteration=True).repeat()
    if aug.flip == "alternating":
        # Each pass is exactly one shuffled shard, so an element's position says its epoch. A
        # resumed run starts a new pass, counted as the epoch nearest to where it stopped.
        first = round(start_step * batch_size / shard_size)
        stream = stream.enumerate().map(lambda p, k: (k, alternating_flips(k, first + p // shard_size, seed)))
    batches = stream.batch(batch_size, drop_remainder=True)

    side, low_res_steps = aug.low_res

    def augment(step, batch, s):
        k, flips = batch if aug.flip == "alternating" else (batch, None)
        if aug.flip == "none":
            flips = tf.zeros(tf.shape(k), tf.bool)
        x = cifar_augment(tf.gather(images, k), mean, s, pad=aug.translate, flips=flips, cutout=aug.cutout)
        if low_res_steps > start_step:
            # Fewer pixels, fewer multiply-adds: the early steps train the same net on smaller images.
            x = tf.cond(
                step < low_res_steps, lambda: tf.image.resize(x, (side, side), antialias=True), lambda: x
            )
        return x, tf.gather(labels, k)

    seeds = _seeds(seed + start_step + 1, i)
    steps = tf.data.Dataset.zip(batches, seeds).enumerate(start_step)
    return steps.map(lambda step, pair: augment(step, *pair), num_parallel_calls=AUTOTUNE)


def _train_dataset(
    split: sources.Split,
    info: DataInfo,
    batch_size: int,
    seed: int,
    start_step: int,
    aug: _Augmentation,
    w,
    i,
):
    if info.recipe == CIFAR_RECIPE:
        return _cifar_train(split, info, batch_size, seed, start_step, aug, w, i)
    seed += start_step
    mean = tf.constant(info.mean, tf.float32)
    size, scale = info.image_size, scale_range(info.image_size)

    # ImageNet crops one image at a time, even when all have one size: measured on imagenette,
    # per-image maps spread over the cores better than one crop_and_resize per batch (1.3-1.8x).
    def crop(image, label, s):
        return imagenet_augment(image[None], size, scale, s, mirror=aug.flip == "random")[0], label

    def normalize(images, labels, s):
        if aug.color:  # one pass over the pixels: subtract (mean - shift)
            return images - (mean - lighting_shift(tf.shape(images)[0], s))[:, None, None, :], labels
        return images - mean, labels

    ds = split.examples(seed, w, i)
    ds = tf.data.Dataset.zip(ds, _seeds(seed + 1, i))
    ds = ds.map(lambda x, s: crop(*x, s), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
    return tf.data.Dataset.zip(ds, _seeds(seed + 2, i)).map(
        lambda x, s: normalize(*x, s), num_parallel_calls=AUTOTUNE
    )


def _eval_dataset(split: sources.Split, info: DataInfo, batch_size: int, w: int, i: int, ten: bool = False):
    view = ten_crop if ten else eval_preprocess
    if isinstance(split, sources.ImageArray):
        images, labels = tf.constant(split.images), tf.constant(split.labels)
        idx = tf.data.Dataset.range(split.num_examples).shard(w, i).batch(batch_size)
        return idx.map(
            lambda k: (view(tf.gather(images, k), info), tf.gather(labels, k)), num_parallel_calls=AUTOTUNE
        )
    ds = split.examples(None, w, i)
    # Images of different sizes cannot be batched before they are resized: one at a time.
    ds = ds.map(lambda image, label: (view(image[None], info)[0], label), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, num_parallel_calls=AUTOTUNE)
