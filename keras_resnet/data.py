"""tf.data input pipelines with the paper's augmentation (TensorFlow-specific).

Public interface (other modules rely on it):
- `DataInfo`: what a trained model needs to know about its data (classes, recipe, view size,
  mean), saved beside every run as `data_info.json` and read back by the export code.
- `eval_preprocess(images, info)`: pure-TensorFlow evaluation preprocessing, the same ops the
  evaluation pipeline runs, usable inside a SavedModel graph.
- `load(name, ...)` -> `Datasets`: training / validation / test datasets of (image, label).
- `ten_crop(images, info)`: the paper's 10-crop evaluation views.

Recipes:
- cifar (section 4.2): the per-pixel mean image of the training images actually used is subtracted,
  then 4 pixels of zeros are padded on each side (so padding equals the mean colour, as in
  fb.resnet.torch), a random 32x32 window is taken and flipped with probability 1/2. Evaluation
  sees the original 32x32 view.
- imagenet (section 3.4): scale augmentation resizes the shorter side to a length drawn uniformly
  from [256, 480] and takes a random 224x224 crop, flipped with probability 1/2; optional PCA
  lighting noise (AlexNet's colour augmentation); a per-CHANNEL mean is subtracted. Evaluation
  resizes the shorter side to 256 and takes the center 224x224. Everything scales with
  `image_size` S: shorter side in [256 S/224, 480 S/224], evaluation resize 256 S/224 (for S=128:
  [146, 274] and 146; see `scale_range` and `resize_size_for`).

Data is decoded once and held in memory as uint8 when it fits (`cache_images`), and every random
choice comes from stateless ops seeded from `seed`, so an augmented example only depends on the
seed and its position in the stream. The mean (and, for streamed folders, the one pass that finds
corrupt files) is cached under `cache_dir`, keyed by the files and the split actually used.
`validation_split` holds out a fixed, stratified 10% of train (CIFAR's 45k/5k). Each worker reads
its own shard (`num_workers`/`worker_index`) and tf.distribute's auto-sharding is off.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Callable

import numpy as np
import tensorflow as tf

CIFAR_RECIPE = "cifar"
IMAGENET_RECIPE = "imagenet"

DATA_ENV = "KERAS_RESNET_DATA"
CACHE_ENV = "KERAS_RESNET_CACHE"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

TFDS_NAMES = ("cifar10", "cifar100", "imagenette", "imagenet2012")
# TFDS's 160px imagenette: the size of the shared folder copy and enough for the default 128 crops.
IMAGENETTE_TFDS = "imagenette/160px-v2"
FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TEST_SPLIT_NAMES = ("val", "validation", "test")

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

# 45k/5k on CIFAR: the held-out fraction, stratified, from a fixed seed so that the validation
# set never moves with the training seed.
VALIDATION_FRACTION = 0.1
SPLIT_SEED = 20151210
IMAGENET2012_HELD_OUT = 10_000

IMAGENETTE_NAMES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}

AUTOTUNE = tf.data.AUTOTUNE
log = logging.getLogger(__name__)


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

    def ten_crop_test(self) -> tf.data.Dataset:
        """The test split as batches of (float32 [B, 10, S, S, 3] views, int32 [B]): average the
        model's 10 outputs per image for the paper's 10-crop evaluation."""
        return self._ten_crop_test()


# ----------------------------------------------------------------------------------------------
# Paths and sizes


def default_data_root() -> pathlib.Path:
    """`$KERAS_RESNET_DATA`, else `../shared/data` relative to the repository root."""
    env = os.environ.get(DATA_ENV)
    return pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def default_cache_dir() -> pathlib.Path:
    """`$KERAS_RESNET_CACHE`, else `~/.cache/keras_resnet` (never the data dir, read-only in CI)."""
    env = os.environ.get(CACHE_ENV)
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "keras_resnet"


def scale_range(image_size: int) -> tuple[int, int]:
    """Range of the shorter side for scale augmentation: the paper's [256, 480] at 224, scaled."""
    return tuple(round(s * image_size / IMAGENET_CROP) for s in IMAGENET_SCALE)


def resize_size_for(image_size: int) -> int:
    """Shorter side before the evaluation center crop: the paper's 256 at 224, scaled."""
    return round(IMAGENET_RESIZE * image_size / IMAGENET_CROP)


# ----------------------------------------------------------------------------------------------
# Augmentation and evaluation views (pure TensorFlow, batch or single image)


def cifar_augment(images: tf.Tensor, mean: tf.Tensor | np.ndarray, seed: tf.Tensor, pad: int = CIFAR_PAD):
    """Section 4.2 training view of a batch: float32 [B, S, S, 3] from 0-255 [B, S, S, 3].

    Mean subtraction, `pad` pixels of zero padding, a random S x S window of the padded image and a
    random horizontal flip, all per image but as a few vectorized gathers over the whole batch.

    Args:
        images: uint8 or float batch of square images.
        mean: the (S, S, 3) mean image (or anything that broadcasts).
        seed: int32/int64 [2] seed for the stateless random ops.
        pad: zero padding on each side.
    """
    x = tf.cast(images, tf.float32) - tf.cast(mean, tf.float32)
    size = x.shape[1] or tf.shape(x)[1]
    batch = tf.shape(x)[0]
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    s_top, s_left, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    top = tf.random.stateless_uniform([batch, 1], s_top, 0, 2 * pad + 1, tf.int32)
    left = tf.random.stateless_uniform([batch, 1], s_left, 0, 2 * pad + 1, tf.int32)
    flip = tf.random.stateless_uniform([batch, 1], s_flip, 0, 2, tf.int32) > 0
    r = tf.range(size)
    # A flipped window reads its columns right to left: crop and flip are one gather.
    cols = tf.where(flip, left + size - 1 - r, left + r)
    x = tf.gather(x, top + r, axis=1, batch_dims=1)
    return tf.gather(x, cols, axis=2, batch_dims=1)


def imagenet_augment(images: tf.Tensor, size: int, scale: tuple[int, int], seed: tf.Tensor) -> tf.Tensor:
    """Section 3.4 training crops of a 0-255 batch [B, H, W, 3]: float32 [B, size, size, 3], mean not removed.

    Resizing the shorter side to L ~ U[scale] and cropping size x size equals cropping a square of
    side size * min(H, W) / L from the original and resizing only that window: the same view for
    a fraction of the work, and one `crop_and_resize` op for the whole batch. The window's corner
    pixels map to the output's corner pixels (bilinear), so every sample lies inside the image.
    A random horizontal flip is the same window read right to left.
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
    flip = tf.random.stateless_uniform([batch], s_flip) < 0.5
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
    return tf.image.resize(images, tf.maximum(new, side))


def _center_crop(images: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.shape(images)
    top, left = (shape[1] - size) // 2, (shape[2] - size) // 2
    return images[:, top : top + size, left : left + size, :]


# ----------------------------------------------------------------------------------------------
# Sources: where the uint8 images come from


@dataclasses.dataclass
class _Split:
    """One split of decoded uint8 images in memory (`images` [N, H, W, 3] when all sizes agree,
    else one flat buffer with per-image `offsets`/`shapes`), or of files decoded on the fly, or
    a TFDS split streamed from disk."""

    labels: np.ndarray  # int32 [N]
    images: np.ndarray | None = None
    offsets: np.ndarray | None = None
    shapes: np.ndarray | None = None
    paths: np.ndarray | None = None
    # (workers, index, seed or None) -> (encoded image, label) examples of a streamed TFDS split
    tfds_split: Callable[[int, int, int | None], tf.data.Dataset] | None = None
    num_examples: int = 0

    def __post_init__(self):
        self.num_examples = self.num_examples or len(self.labels)

    @property
    def uniform(self) -> bool:
        return self.images is not None and self.images.ndim == 4

    def subset(self, idx: np.ndarray) -> _Split:
        """The examples at `idx` (in-memory and file splits)."""
        if self.uniform:
            return _Split(self.labels[idx], images=self.images[idx])
        if self.paths is not None:
            return _Split(self.labels[idx], paths=self.paths[idx])
        return _pack([self.image(i) for i in idx], self.labels[idx])

    def image(self, i: int) -> np.ndarray:
        if self.uniform:
            return self.images[i]
        o, s = self.offsets[i], self.shapes[i]
        return self.images[o : o + int(np.prod(s))].reshape(s)


def _pack(images: list[np.ndarray], labels: np.ndarray) -> _Split:
    """Keeps same-sized images as one [N, H, W, 3] array (batchable), others in a flat buffer."""
    labels = np.asarray(labels, np.int32)
    if len({im.shape for im in images}) <= 1:
        shape = images[0].shape if images else (0, 0, 3)
        stacked = np.stack(images) if images else np.zeros((0, *shape), np.uint8)
        return _Split(labels, images=stacked)
    shapes = np.array([im.shape for im in images], np.int64)
    sizes = shapes.prod(axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return _Split(
        labels, images=np.concatenate([im.reshape(-1) for im in images]), offsets=offsets, shapes=shapes
    )


def _split_dataset(split: _Split, shuffle_seed: int | None, workers: int, index: int) -> tf.data.Dataset:
    """Unbatched (uint8 [H, W, 3], int32) examples of a split, this worker's shard, optionally
    shuffled and repeated forever (training)."""
    if split.tfds_split is not None:
        ds = split.tfds_split(workers, index, shuffle_seed)
        if shuffle_seed is not None:  # files are shuffled too; this mixes examples across files
            ds = ds.shuffle(10_000, seed=shuffle_seed).repeat()
        # Decoded after the shuffle buffer, which then holds JPEG bytes, not 10x bigger pixels.
        return ds.map(lambda data, label: (_decode(data), label), num_parallel_calls=AUTOTUNE)
    n = split.num_examples
    ds = tf.data.Dataset.range(n).shard(workers, index)
    if shuffle_seed is not None:
        ds = ds.shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=True).repeat()
    labels = tf.constant(split.labels)
    if split.uniform:
        images = tf.constant(split.images)

        def get(i):
            return images[i], labels[i]
    elif split.paths is not None:
        paths = tf.constant(split.paths)

        def get(i):
            return _decode(tf.io.read_file(paths[i])), labels[i]
    else:
        images, offsets, shapes = (tf.constant(a) for a in (split.images, split.offsets, split.shapes))

        def get(i):
            o, s = offsets[i], shapes[i]
            return tf.reshape(images[o : o + tf.reduce_prod(s)], s), labels[i]

    return ds.map(get, num_parallel_calls=AUTOTUNE)


def _decode(data: tf.Tensor) -> tf.Tensor:
    # channels=3: a few real-world JPEGs are grayscale (or CMYK); PNGs may carry alpha.
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def _seeds(seed: int) -> tf.data.Dataset:
    """Endless, reproducible stream of [2] int64 seeds for the stateless random ops."""
    return tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)


# ----------------------------------------------------------------------------------------------
# Pipelines


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    # We shard per worker ourselves (num_workers/worker_index): tf.distribute must not re-shard,
    # and must not warn that it cannot shard a dataset that does not read files.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _train_dataset(
    split: _Split, info: DataInfo, batch_size: int, seed: int, color: bool, workers: int, index: int
):
    mean = tf.constant(info.mean, tf.float32)
    size, scale = info.image_size, scale_range(info.image_size)

    def batch_ops(images, labels, s):
        if info.recipe == CIFAR_RECIPE:
            return cifar_augment(images, mean, s), labels
        if color:  # one pass over the pixels: subtract (mean - shift)
            return images - (mean - lighting_shift(tf.shape(images)[0], s))[:, None, None, :], labels
        return images - mean, labels

    if info.recipe == CIFAR_RECIPE:  # small images in memory: gather and augment whole batches
        images, labels = tf.constant(split.images), tf.constant(split.labels)
        n = split.num_examples
        idx = tf.data.Dataset.range(n).shard(workers, index)
        idx = idx.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
        idx = idx.batch(batch_size, drop_remainder=True)

        def augment(i, s):
            return batch_ops(tf.gather(images, i), tf.gather(labels, i), s)

        return tf.data.Dataset.zip(idx, _seeds(seed + 1)).map(augment, num_parallel_calls=AUTOTUNE)

    # ImageNet crops one image at a time, even when all have one size: measured on imagenette,
    # per-image maps spread over the cores better than one crop_and_resize per batch (1.3-1.8x).
    def crop(image, label, s):
        return imagenet_augment(image[None], size, scale, s)[0], label

    ds = _split_dataset(split, seed, workers, index)
    ds = tf.data.Dataset.zip(ds, _seeds(seed + 1)).map(lambda x, s: crop(*x, s), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
    return tf.data.Dataset.zip(ds, _seeds(seed + 2)).map(
        lambda x, s: batch_ops(*x, s), num_parallel_calls=AUTOTUNE
    )


def _eval_dataset(
    split: _Split, info: DataInfo, batch_size: int, workers: int, index: int, ten: bool = False
):
    view = ten_crop if ten else eval_preprocess
    if split.uniform:
        images, labels = tf.constant(split.images), tf.constant(split.labels)
        idx = tf.data.Dataset.range(split.num_examples).shard(workers, index).batch(batch_size)
        return idx.map(
            lambda i: (view(tf.gather(images, i), info), tf.gather(labels, i)), num_parallel_calls=AUTOTUNE
        )
    ds = _split_dataset(split, None, workers, index)
    # Images of different sizes cannot be batched before they are resized: one at a time.
    ds = ds.map(lambda image, label: (view(image[None], info)[0], label), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, num_parallel_calls=AUTOTUNE)


# ----------------------------------------------------------------------------------------------
# Held-out split and the cached mean


def held_out_split(
    labels: np.ndarray, fraction: float = VALIDATION_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic, stratified (train, validation) indices: round(fraction * count) per class
    held out (5,000 = 500 per class on CIFAR-10), chosen by a fixed seed, both sorted."""
    rng = np.random.default_rng(SPLIT_SEED)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        held.append(rng.permutation(idx)[: round(fraction * len(idx))])
    held = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held), held


def _cached(
    cache_dir: pathlib.Path, kind: str, key: dict, compute: Callable[[], dict]
) -> dict[str, np.ndarray]:
    """`compute()` (named arrays) once per `key`, then read back from `cache_dir/<kind>-*.npz`.

    Written to a temporary name and renamed, so a crash never leaves half a file; the key is
    written beside it as JSON for humans.
    """
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() else "_" for c in str(key.get("dataset", "data")))[-40:]
    path = cache_dir / f"{kind}-{slug}-{digest}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return dict(f)
        except (OSError, ValueError) as e:  # a damaged cache is recomputed, not fatal
            log.warning("Ignoring unreadable cache %s (%s); recomputing.", path, e)
    value = {k: np.asarray(v) for k, v in compute().items()}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".npz.tmp", delete=False) as f:
            np.savez(f, **value)
        os.replace(f.name, path)
        path.with_suffix(".json").write_text(json.dumps(key, sort_keys=True, indent=1))
    except OSError as e:
        log.warning("Could not write the cache %s (%s): set cache_dir or $%s.", path, e, CACHE_ENV)
    return value


def _cached_mean(cache_dir: pathlib.Path, key: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
    return _cached(cache_dir, "mean", key, lambda: {"mean": np.asarray(compute(), np.float32)})["mean"]


def _mean_image(images: np.ndarray) -> np.ndarray:
    """float64 mean over the first axis, in chunks so 50k images need no float64 copy."""
    total = np.zeros(images.shape[1:], np.float64)
    for start in range(0, len(images), 4096):
        total += images[start : start + 4096].sum(axis=0, dtype=np.float64)
    return total / max(len(images), 1)


def _channel_mean(split: _Split) -> np.ndarray:
    """Per-channel mean over every pixel of an in-memory split (any image sizes)."""
    flat = split.images.reshape(-1, 3)
    return flat.sum(axis=0, dtype=np.float64) / max(len(flat), 1)


# ----------------------------------------------------------------------------------------------
# TFDS


def _tfds_builder(name: str, data_dir: str, download: bool):
    import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy import, only needed here)

    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if name == "imagenet2012":
        how = (
            f"ImageNet needs a manual download: register at https://image-net.org/download-images, put "
            f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {data_dir}/downloads/manual/, then "
            f"prepare it with download=True (--download)"
        )
    else:
        how = "prepare it with download=True (--download) on a machine with internet access"
    if not download:
        raise FileNotFoundError(
            f"Dataset {name!r} is not prepared in data_dir {data_dir} (looked for {builder.data_dir}) and "
            f"downloading is off. Either {how}, or point data_dir (--data_dir, or ${DATA_ENV} whose "
            f"tensorflow_datasets/ subfolder is the default) at a directory that holds it."
        )
    try:
        builder.download_and_prepare()
    except Exception as e:
        raise RuntimeError(f"Preparing {name!r} in data_dir {data_dir} failed: {e}\nTo fix: {how}.") from e
    return builder


@functools.lru_cache(maxsize=4)
def _tfds_in_memory(name: str, data_dir: str, split: str, download: bool) -> _Split:
    """A small TFDS split decoded once into memory (once per process)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    builder = _tfds_builder(name, data_dir, download)
    log.info("Decoding %s[%s] from %s into memory.", name, split, data_dir)
    if None not in builder.info.features["image"].shape:
        images, labels = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
        return _Split(labels.astype(np.int32), images=images)
    pairs = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True)))
    return _pack([im for im, _ in pairs], np.array([lb for _, lb in pairs]))


def _tfds_streamed(name: str, data_dir: str, split: str, download: bool) -> _Split:
    """A TFDS split too big for memory (imagenet2012): files sharded per worker, JPEGs decoded on the fly."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    builder = _tfds_builder(name, data_dir, download)
    num = builder.info.splits[split].num_examples

    def make(workers: int, index: int, seed: int | None) -> tf.data.Dataset:
        config = tfds.ReadConfig(
            shuffle_seed=seed,
            input_context=tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=index),
        )
        ds = builder.as_dataset(
            split=split,
            as_supervised=True,
            shuffle_files=seed is not None,
            read_config=config,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        return ds.map(lambda data, label: (data, tf.cast(label, tf.int32)))

    return _Split(np.zeros(0, np.int32), tfds_split=make, num_examples=num)


def _tfds_class_names(name: str, data_dir: str, download: bool) -> tuple[str, ...]:
    names = _tfds_builder(name, data_dir, download).info.features["label"].names
    return tuple(IMAGENETTE_NAMES.get(n, n) for n in names) if name.startswith("imagenette") else tuple(names)


# ----------------------------------------------------------------------------------------------
# Image folders: ROOT/<split>/<class>/<image>


def index_folder(root: str | pathlib.Path) -> tuple[tuple[str, ...], dict[str, tuple[list[str], list[int]]]]:
    """Lists an image folder: (class names, {split: (paths, labels)}) for `train` and the test split.

    Raises:
        FileNotFoundError / ValueError: one message per way the layout can be wrong.
    """
    root = pathlib.Path(root)
    layout = "ROOT/<split>/<class>/<image> (JPEG or PNG), with splits train and val (or validation/test)"
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist: expected {layout}.")
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if "train" not in subdirs:
        hint = (
            " It looks like a split folder (its subfolders hold images): pass its parent."
            if any(_images_in(root / d) for d in subdirs)
            else ""
        )
        raise FileNotFoundError(
            f"No 'train' split folder in {root} (found: {subdirs or 'nothing'}).{hint} Expected {layout}."
        )
    test_split = next((s for s in TEST_SPLIT_NAMES if s in subdirs), None)
    if test_split is None:
        raise FileNotFoundError(
            f"No evaluation split in {root}: expected one of {'/'.join(TEST_SPLIT_NAMES)} beside 'train' "
            f"(found: {subdirs}). Expected {layout}."
        )
    classes = {}
    for split in ("train", test_split):
        d = root / split
        loose = _images_in(d)
        names = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        if loose or not names:
            raise ValueError(
                f"{d} holds {len(loose)} image file(s) directly and {len(names)} class folder(s): every "
                f"image must sit in a class folder, {d}/<class>/<image>. Expected {layout}."
            )
        empty = [n for n in names if not _images_in(d / n)]
        if empty:
            raise ValueError(
                f"Empty class folder(s) in {d}: {', '.join(empty)} hold no {'/'.join(IMAGE_SUFFIXES)} "
                f"images. Add images or remove the folder(s)."
            )
        classes[split] = names
    if classes["train"] != classes[test_split]:
        only_train = sorted(set(classes["train"]) - set(classes[test_split]))
        only_test = sorted(set(classes[test_split]) - set(classes["train"]))
        raise ValueError(
            f"Classes differ between {root}/train and {root}/{test_split}: "
            f"only in train: {only_train or 'none'}; only in {test_split}: {only_test or 'none'}. "
            "Both splits need the same class folders."
        )
    names = classes["train"]
    splits = {}
    for split in ("train", test_split):
        paths, labels = [], []
        for label, name in enumerate(names):
            files = _images_in(root / split / name)
            paths += [str(p) for p in files]
            labels += [label] * len(files)
        splits[split] = (paths, labels)
    return tuple(names), splits


def _images_in(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _fingerprint(paths: list[str]) -> str:
    h = hashlib.sha1()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _scan_files(paths: tuple[str, ...], keep: bool, verbose: bool):
    """One parallel decode pass over the files: (images or None, per-image channel sums, pixel
    counts, indices that failed to read or decode)."""
    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), list(paths)))

    def read(i, path):
        image = _decode(tf.io.read_file(path))
        return i, image, tf.reduce_sum(tf.cast(image, tf.int64), [0, 1])

    # ignore_errors drops exactly the examples whose read or decode failed; their indices name the files.
    ds = ds.map(read, num_parallel_calls=AUTOTUNE, deterministic=False).ignore_errors().prefetch(AUTOTUNE)
    images: list[np.ndarray | None] = [None] * len(paths)
    sums = np.zeros((len(paths), 3), np.int64)
    pixels = np.zeros(len(paths), np.int64)
    ok = np.zeros(len(paths), bool)
    progbar = None
    if verbose and len(paths) >= 1000:
        import keras  # noqa: PLC0415

        print(f"Decoding {len(paths)} images under {os.path.dirname(os.path.dirname(paths[0]))} (once)")
        progbar = keras.utils.Progbar(len(paths), unit_name="image")
    for k, (i, image, s) in enumerate(ds.as_numpy_iterator()):
        ok[i], sums[i], pixels[i] = True, s, image.shape[0] * image.shape[1]
        if keep:
            images[i] = image
        if progbar and (k + 1) % 500 == 0:
            progbar.update(k + 1)
    if progbar:
        progbar.update(len(paths), finalize=True)
    return (images if keep else None), sums, pixels, np.flatnonzero(~ok)


def _decoded_bytes_estimate(paths: list[str], sample: int = 16) -> int:
    """Decoded size of all files, extrapolated from the decoded/encoded ratio of a few."""
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(int)]
    encoded = sum(os.path.getsize(p) for p in picks)
    decoded = 0
    for p in picks:
        try:
            shape = (
                tf.image.extract_jpeg_shape(tf.io.read_file(p))
                if p.lower().endswith(("jpg", "jpeg"))
                else None
            )
            decoded += (
                int(np.prod(shape[:2])) * 3 if shape is not None else _decode(tf.io.read_file(p)).numpy().size
            )
        except tf.errors.OpError:  # corrupt files are reported by the scan
            pass
    total = sum(os.path.getsize(p) for p in paths)
    return int(total * decoded / max(encoded, 1))


def _memory_budget() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError):
        return 4 << 30


def _folder_split(
    name: str,
    split: str,
    paths: list[str],
    labels: list[int],
    keep: bool,
    skip_corrupt: bool,
    verbose: bool,
    cache_dir: pathlib.Path,
):
    """(split, per-image channel sums, pixel counts, skipped count) for one folder split.

    Every file is decoded once to find the corrupt ones and the mean. In memory (`keep`) that
    pass also fills the cache; streamed, its result is kept in `cache_dir` so that later runs
    skip it until a file changes.
    """
    fingerprint = _fingerprint(paths)
    if keep:
        out, sums, pixels, bad = _decoded_folder_split(tuple(paths), tuple(labels), fingerprint, verbose)
    else:

        def scan():
            _, sums, pixels, bad = _scan_files(tuple(paths), False, verbose)
            return {"sums": sums, "pixels": pixels, "bad": bad}

        found = _cached(cache_dir, "scan", {"dataset": name, "split": split, "files": fingerprint}, scan)
        bad = found["bad"]
        good = np.setdiff1d(np.arange(len(paths)), bad)
        out = _Split(np.asarray(labels, np.int32)[good], paths=np.asarray(paths)[good])
        sums, pixels = found["sums"][good], found["pixels"][good]
    if len(bad) and not skip_corrupt:
        listed = "\n  ".join(paths[i] for i in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(
            f"{len(bad)} corrupt or unreadable image file(s) in the {split!r} split of {name}:\n"
            f"  {listed}{more}\n"
            f"Fix or delete them, or pass skip_corrupt=True (--skip_corrupt) to leave them out."
        )
    if len(bad):
        log.warning("Skipping %d unreadable image(s) in %s/%s, e.g. %s", len(bad), name, split, paths[bad[0]])
    return out, sums, pixels, len(bad)


@functools.lru_cache(maxsize=4)
def _decoded_folder_split(paths: tuple[str, ...], labels: tuple[int, ...], fingerprint: str, verbose: bool):
    """The readable files of a split decoded into memory, once per process and `fingerprint`
    (paths, sizes, mtimes: an edited file is read again)."""
    del fingerprint
    images, sums, pixels, bad = _scan_files(paths, True, verbose)
    good = np.setdiff1d(np.arange(len(paths)), bad)
    return _pack([images[i] for i in good], np.asarray(labels, np.int32)[good]), sums[good], pixels[good], bad


@dataclasses.dataclass
class _Source:
    """What a dataset name resolves to, before the pipelines are built."""

    name: str
    recipe: str
    class_names: tuple[str, ...]
    train: _Split
    validation: _Split | None
    test: _Split
    mean: np.ndarray
    default_size: int
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)


def _hold_out(train: _Split, validation_split: bool) -> tuple[_Split, _Split | None, np.ndarray]:
    """(train, validation or None, indices of the train examples kept) for an in-memory split."""
    if not validation_split:
        return train, None, np.arange(train.num_examples)
    train_idx, val_idx = held_out_split(train.labels)
    return train.subset(train_idx), train.subset(val_idx), train_idx


def _from_folder(
    folder: pathlib.Path,
    name: str,
    validation_split: bool,
    skip_corrupt: bool,
    cache_images: bool | None,
    verbose: bool,
    cache: pathlib.Path,
) -> _Source:
    class_names, files = index_folder(folder)
    test_name = next(s for s in files if s != "train")
    display = "imagenette" if name == "imagenette" else f"{FOLDER_PREFIX}{folder}"
    if cache_images is None:
        cache_images = _decoded_bytes_estimate(files["train"][0] + files[test_name][0]) <= _memory_budget()
    skipped = {}
    train, sums, pixels, skipped["train"] = _folder_split(
        display, "train", *files["train"], cache_images, skip_corrupt, verbose, cache
    )
    test, _, _, skipped[test_name] = _folder_split(
        display, test_name, *files[test_name], cache_images, skip_corrupt, verbose, cache
    )
    if set(class_names) <= set(IMAGENETTE_NAMES):
        class_names = tuple(IMAGENETTE_NAMES[c] for c in class_names)
    train, validation, kept = _hold_out(train, validation_split)
    key = {
        "dataset": str(folder.resolve()),
        "files": _fingerprint(files["train"][0]),
        "examples": train.num_examples,
        "validation_split": validation_split,
        "kind": "channel",
    }
    mean = _cached_mean(cache, key, lambda: sums[kept].sum(axis=0) / max(pixels[kept].sum(), 1))
    skipped = {k: v for k, v in skipped.items() if v}
    return _Source(display, IMAGENET_RECIPE, class_names, train, validation, test, mean, 128, skipped)


def _from_cifar(
    name: str,
    tfds_dir: str,
    download: bool,
    validation_split: bool,
    image_size: int | None,
    cache: pathlib.Path,
) -> _Source:
    full = _tfds_in_memory(name, tfds_dir, "train", download)
    test = _tfds_in_memory(name, tfds_dir, "test", download)
    train, validation, _ = _hold_out(full, validation_split)
    native = train.images.shape[1]
    if image_size and image_size != native:
        raise ValueError(
            f"image_size={image_size}: the cifar recipe trains on the original {native}x{native} view "
            f"(section 4.2); leave image_size unset for {name}."
        )
    builder_dir = pathlib.Path(_tfds_builder(name, tfds_dir, download).data_dir)
    key = {
        "dataset": name,
        "version": builder_dir.name,
        "data": str(builder_dir.resolve()),
        "files": sorted((p.name, p.stat().st_size) for p in builder_dir.iterdir()),
        "examples": train.num_examples,
        "validation_split": validation_split,
        "kind": "image",
    }
    mean = _cached_mean(cache, key, lambda: _mean_image(train.images))
    class_names = _tfds_class_names(name, tfds_dir, download)
    return _Source(name, CIFAR_RECIPE, class_names, train, validation, test, mean, native)


def _from_tfds_imagenet(
    name: str, tfds_dir: str, download: bool, validation_split: bool, cache: pathlib.Path
) -> _Source:
    class_names = _tfds_class_names(IMAGENETTE_TFDS if name == "imagenette" else name, tfds_dir, download)
    if name == "imagenet2012":
        held = IMAGENET2012_HELD_OUT  # TFDS shuffled the train files when preparing: the tail is random
        train_split, val_split = (
            (f"train[:-{held}]", f"train[-{held}:]") if validation_split else ("train", None)
        )
        train = _tfds_streamed(name, tfds_dir, train_split, download)
        validation = _tfds_streamed(name, tfds_dir, val_split, download) if val_split else None
        test = _tfds_streamed(name, tfds_dir, "validation", download)
        mean = np.array(IMAGENET_MEAN, np.float32)
        return _Source(name, IMAGENET_RECIPE, class_names, train, validation, test, mean, IMAGENET_CROP)
    train, validation, _ = _hold_out(
        _tfds_in_memory(IMAGENETTE_TFDS, tfds_dir, "train", download), validation_split
    )
    test = _tfds_in_memory(IMAGENETTE_TFDS, tfds_dir, "validation", download)
    key = {
        "dataset": IMAGENETTE_TFDS,
        "data": str(pathlib.Path(tfds_dir).resolve()),
        "examples": train.num_examples,
        "validation_split": validation_split,
        "kind": "channel",
    }
    mean = _cached_mean(cache, key, lambda: _channel_mean(train))
    return _Source(name, IMAGENET_RECIPE, class_names, train, validation, test, mean, 128)


# ----------------------------------------------------------------------------------------------
# load


def load(
    name: str,
    *,
    data_dir: str | None = None,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    validation_split: bool = False,
    download: bool = False,
    seed: int = 0,
    deterministic: bool = False,
    image_size: int | None = None,
    color_augmentation: bool = False,
    skip_corrupt: bool = False,
    cache_dir: str | None = None,
    num_workers: int = 1,
    worker_index: int = 0,
    cache_images: bool | None = None,
    verbose: bool = True,
) -> Datasets:
    """Training and evaluation datasets for a TFDS name or an image folder.

    Args:
        name: `cifar10`, `cifar100`, `imagenette`, `imagenet2012` (TFDS), or `folder:<root>` / an
            existing directory laid out as ROOT/<split>/<class>/<image>.
        data_dir: TFDS data dir (default `$KERAS_RESNET_DATA/tensorflow_datasets`). `imagenette`
            falls back to the image folder `<data root>/imagenette` when TFDS has no copy.
        batch_size: GLOBAL training batch size (all replicas and workers).
        eval_batch_size: evaluation batch size (default batch_size).
        validation_split: hold out 10% of train, stratified and fixed (CIFAR's 45k/5k); the mean
            is then computed on the remaining 90%.
        download: allow TFDS to download and prepare missing data (off: a clear error instead).
        seed: shuffling and augmentation seed.
        deterministic: keep the training order reproducible across runs (parallel maps may then
            wait for slow elements); evaluation order is always the split's.
        image_size: model input side (default 32 for cifar, 224 for imagenet2012, 128 otherwise).
        color_augmentation: PCA lighting noise (imagenet recipe).
        skip_corrupt: leave out corrupt/unreadable folder images (counted in `Datasets.skipped`)
            instead of raising.
        cache_dir: where the mean is cached (default `$KERAS_RESNET_CACHE` or ~/.cache/keras_resnet).
        num_workers, worker_index: shard all splits per worker (MultiWorkerMirroredStrategy); keep
            batch_size global.
        cache_images: hold decoded folder images in memory (default: when they take at most a
            quarter of RAM).
        verbose: print progress while decoding large folders.
    """
    if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
        raise ValueError(
            f"batch_size and eval_batch_size must be positive, got {batch_size}, {eval_batch_size}."
        )
    if not 0 <= worker_index < num_workers:
        raise ValueError(f"worker_index must be in [0, num_workers={num_workers}), got {worker_index}.")
    eval_batch_size = eval_batch_size or batch_size
    cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    data_root = default_data_root()
    tfds_dir = str(data_dir or data_root / "tensorflow_datasets")

    folder = None
    if name.startswith(FOLDER_PREFIX):
        folder = pathlib.Path(name[len(FOLDER_PREFIX) :]).expanduser()
    elif name not in TFDS_NAMES and os.path.isdir(name):
        folder = pathlib.Path(name)
    elif name not in TFDS_NAMES:
        raise ValueError(
            f"Unknown dataset {name!r}: expected one of {', '.join(TFDS_NAMES)}, or folder:<root> / an "
            f"existing directory laid out as ROOT/<split>/<class>/<image>."
        )
    elif name == "imagenette" and not (pathlib.Path(tfds_dir) / IMAGENETTE_TFDS).is_dir():
        fallback = pathlib.Path(data_dir).parent / "imagenette" if data_dir else data_root / "imagenette"
        if fallback.is_dir() or not download:
            if not fallback.is_dir():
                raise FileNotFoundError(
                    f"imagenette not found: no TFDS copy in data_dir {tfds_dir} and no image folder "
                    f"{fallback}. Pass download=True (--download) to fetch it with TFDS, or set "
                    f"${DATA_ENV} to a directory holding imagenette/{{train,val}}/<wnid>/*.JPEG."
                )
            folder = fallback

    if folder is not None:
        src = _from_folder(folder, name, validation_split, skip_corrupt, cache_images, verbose, cache)
    elif name in ("cifar10", "cifar100"):
        src = _from_cifar(name, tfds_dir, download, validation_split, image_size, cache)
    else:
        src = _from_tfds_imagenet(name, tfds_dir, download, validation_split, cache)
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
    w, i = num_workers, worker_index

    def finish(ds: tf.data.Dataset, ordered: bool = True) -> tf.data.Dataset:
        # Evaluation always keeps the split's order, so predictions line up with examples.
        return ds.prefetch(AUTOTUNE).with_options(_options(ordered))

    def evaluation(split: _Split | None, ten: bool = False) -> tf.data.Dataset | None:
        return None if split is None else finish(_eval_dataset(split, info, eval_batch_size, w, i, ten))

    return Datasets(
        train=finish(_train_dataset(train, info, batch_size, seed, color_augmentation, w, i), deterministic),
        validation=evaluation(validation),
        test=evaluation(test),
        info=info,
        steps_per_epoch=train.num_examples // batch_size,
        validation_examples=validation.num_examples if validation is not None else 0,
        test_examples=test.num_examples,
        skipped=src.skipped,
        _ten_crop_test=lambda: evaluation(test, ten=True),
    )
