"""tf.data input pipelines: a dataset name (or a run's `DataConfig`) in, `Datasets` out.

    ds = data.load("cifar10", batch_size=128, validation_split=True)   # 45k/5k
    ds.train, ds.validation, ds.test, ds.info, ds.steps_per_epoch

`load_config` resolves the name through the registry (`registry.DATASETS`), builds its recipe
(`recipes`) from the config's options, and the pipelines around it: training batches are
infinite, shuffled and augmented, with the GLOBAL batch size (tf.distribute splits them across
replicas); evaluation batches keep the split's order. Every random choice comes from stateless
ops seeded from `seed`, so an augmented example only depends on the seed, its position in the
stream and TensorFlow's global seed. Each worker reads its own shard (`num_workers`/
`worker_index`) and tf.distribute's auto-sharding is off.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from keras_resnet.config import DataConfig
from keras_resnet.data import registry
from keras_resnet.data.info import CIFAR_RECIPE, DataInfo, resize_size_for
from keras_resnet.data.recipes import RECIPES, eval_preprocess, ten_crop
from keras_resnet.data.storage import ImageArray, Split, TFDSStream

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
        mirrored: whether training flips images (a test-time view that mirrors needs it).
        skipped: corrupt or unreadable files left out per split (`skip_corrupt=True`).
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    info: DataInfo
    steps_per_epoch: int
    validation_examples: int
    test_examples: int
    mirrored: bool = True
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    _ten_crop_test: Callable[[], tf.data.Dataset] | None = dataclasses.field(default=None, repr=False)
    _train_evaluation: Callable[[], tf.data.Dataset] | None = dataclasses.field(default=None, repr=False)
    _train_sample: Callable[[int], tf.data.Dataset] | None = dataclasses.field(default=None, repr=False)
    _test_split: Split | None = dataclasses.field(default=None, repr=False)

    def train_evaluation(self) -> tf.data.Dataset:
        """The training images actually trained on, once each, in their evaluation view (no
        augmentation): to measure the final model's training error as the paper's curves end."""
        return self._train_evaluation()

    def train_sample(self, n: int) -> tf.data.Dataset:
        """`n` training images in their evaluation view (mean subtracted, unaugmented, full size),
        spread evenly over the split (a stream: its first n), the same on every worker; batches of
        (float32 [B, S, S, 3], int32 [B]). What a statistic of the inputs is computed from."""
        return self._train_sample(n)

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


def load(name: str, **options: Any) -> Datasets:
    """The datasets of `name` (`cifar10`, `cifar100`, `imagenette`, `imagenet2012`, `digits`, or
    `folder:<root>` / a directory laid out as ROOT/<split>/<class>/<image>).

    `options` are `DataConfig`'s fields (`batch_size`, `validation_split`, `image_size`, `flip`,
    `translate`, `cutout`, `low_res_size`, ...; see `train.py --help`) and `load_config`'s
    keyword arguments (`seed`, `start_step`, `num_workers`, `cache_dir`, ...).
    """
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    config = DataConfig(dataset=name, **{k: v for k, v in options.items() if k in fields})
    return load_config(config, **{k: v for k, v in options.items() if k not in fields})


def load_config(
    config: DataConfig,
    *,
    seed: int = 0,
    start_step: int = 0,
    deterministic: bool = False,
    num_workers: int = 1,
    worker_index: int = 0,
    cache_images: bool | None = None,
    cache_dir: str | None = None,
    subtract_mean: bool = True,
    verbose: bool = True,
) -> Datasets:
    """Training and evaluation datasets of a run's `DataConfig`.

    Args:
        config: the dataset and its options; `data_dir` defaults to
            `$KERAS_RESNET_DATA/tensorflow_datasets` if set, else TFDS's own. `eval_batch_size` 0
            is `batch_size`; `image_size` 0 the dataset's default (32 for cifar and digits, 224
            for imagenet2012, 128 otherwise).
        seed: shuffling and augmentation seed.
        start_step: the training step the batches start at (a resumed run): its batches and
            augmentations differ from the first run's.
        deterministic: keep the training order reproducible across runs (slower).
        num_workers, worker_index: shard all splits per worker (MultiWorkerMirroredStrategy).
        cache_images: hold decoded folder images in memory (default: when they fit in a quarter of RAM).
        cache_dir: where the mean is cached (default `$KERAS_RESNET_CACHE` or ~/.cache/keras_resnet).
        subtract_mean: False for a network that carries its own input normalization (fine-tuning
            from pretrained weights): every view is then raw 0-255 pixels and `info.mean` zeros.
        verbose: print progress while decoding large folders.

    Raises:
        ValueError: bad arguments, an unknown name, a bad folder layout, fewer than 2 classes.
        FileNotFoundError (`DataUnavailable`): missing data that cannot be fetched; the message
            names the dataset, where it was looked for and the fix.
    """
    batch_size = config.batch_size
    eval_batch_size = config.eval_batch_size or batch_size
    _check_arguments(batch_size, eval_batch_size, num_workers, worker_index)
    row = registry.lookup(config.dataset)
    size = config.image_size or row.default_size
    recipe = RECIPES[row.recipe](config, size, row.mirror, config.dataset)  # refuses options before decoding
    src = registry.resolve(
        config.dataset,
        data_dir=config.data_dir or None,
        download=config.download,
        validation_split=config.validation_split,
        image_size=config.image_size or None,
        skip_corrupt=config.skip_corrupt,
        cache_images=cache_images,
        cache_dir=cache_dir or "",
        verbose=verbose,
    )
    info = _info(src, row, size, subtract_mean)
    _check_source(src, info, batch_size)
    w, i = num_workers, worker_index

    def evaluation(split: Split | None, ten: bool = False) -> tf.data.Dataset | None:
        # Evaluation always keeps the split's order, so predictions line up with examples.
        return None if split is None else _finish(_eval_dataset(split, info, eval_batch_size, w, i, ten))

    train = recipe.train(src.train, info, batch_size, seed, start_step, w, i)
    return Datasets(
        train=_finish(train, deterministic),
        validation=evaluation(src.validation),
        test=evaluation(src.test),
        info=info,
        steps_per_epoch=src.train.num_examples // batch_size,
        validation_examples=src.validation.num_examples if src.validation is not None else 0,
        test_examples=src.test.num_examples,
        mirrored=recipe.flip != "none",
        skipped=src.skipped,
        _ten_crop_test=lambda: evaluation(src.test, ten=True),
        _train_evaluation=lambda: evaluation(src.train),
        _train_sample=functools.partial(_train_sample, src.train, info, eval_batch_size),
        _test_split=src.test,
    )


def _check_arguments(batch_size: int, eval_batch_size: int, num_workers: int, worker_index: int) -> None:
    if batch_size < 1 or eval_batch_size < 1:
        raise ValueError(
            f"batch_size and eval_batch_size must be positive, got {batch_size}, {eval_batch_size}."
        )
    if not 0 <= worker_index < num_workers:
        raise ValueError(f"worker_index must be in [0, num_workers={num_workers}), got {worker_index}.")


def _check_source(src, info: DataInfo, batch_size: int) -> None:
    """A classifier needs two classes, and a batch no larger than the training split."""
    if info.num_classes < 2:
        raise ValueError(f"{src.name} has {info.num_classes} class: a classifier needs at least 2.")
    if src.train.num_examples < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {src.train.num_examples} training examples of "
            f"{src.name}: lower --batch_size."
        )


def _info(src, row: registry.Dataset, size: int, subtract_mean: bool) -> DataInfo:
    mean = np.asarray(src.mean, np.float32)
    return DataInfo(
        name=src.name,
        recipe=row.recipe,
        num_classes=len(src.class_names),
        class_names=tuple(src.class_names),
        image_size=size,
        resize_size=size if row.recipe == CIFAR_RECIPE else resize_size_for(size),
        mean=mean if subtract_mean else np.zeros_like(mean),
        train_examples=src.train.num_examples,
        data_sha256=src.data_sha256,
    )


def _train_sample(split: Split, info: DataInfo, batch_size: int, n: int) -> tf.data.Dataset:
    """`Datasets.train_sample`: every (num_examples / n)-th image, unsharded."""
    n = min(n, split.num_examples)
    if not isinstance(split, TFDSStream):  # evenly spaced: a folder lists its classes in turn
        split = split.subset(np.arange(n, dtype=np.int64) * split.num_examples // n)
    return _finish(_eval_dataset(split, info, batch_size, 1, 0).unbatch().take(n).batch(batch_size))


def _finish(ds: tf.data.Dataset, deterministic: bool = True) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = deterministic
    # We shard per worker ourselves (num_workers/worker_index): tf.distribute must not re-shard,
    # and must not warn that it cannot shard a dataset that does not read files.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.prefetch(AUTOTUNE).with_options(options)


def _eval_dataset(split: Split, info: DataInfo, batch_size: int, w: int, i: int, ten: bool = False):
    view = ten_crop if ten else eval_preprocess
    if isinstance(split, ImageArray):
        images, labels = tf.constant(split.images), tf.constant(split.labels)
        idx = tf.data.Dataset.range(split.num_examples).shard(w, i).batch(batch_size)
        return idx.map(
            lambda k: (view(tf.gather(images, k), info), tf.gather(labels, k)), num_parallel_calls=AUTOTUNE
        )
    ds = split.examples(None, w, i)
    # Images of different sizes cannot be batched before they are resized: one at a time.
    ds = ds.map(lambda image, label: (view(image[None], info)[0], label), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, num_parallel_calls=AUTOTUNE)
