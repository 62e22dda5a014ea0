"""Where the images come from: TFDS, image folders and the embedded digits, as uint8 splits.

`resolve(name, ...)` turns a dataset name into a `Source`: class names, the training /
validation / test splits, the training mean and the recipe. A split is one of four small storage
types, each able to list its examples as a tf.data pipeline:

- `ImageArray`: same-sized images decoded into one uint8 array (CIFAR, digits, resized folders);
- `RaggedImages`: images of different sizes decoded into one flat buffer (imagenette);
- `ImageFiles`: files decoded on every pass (folders too big for memory);
- `TFDSStream`: a TFDS split read from its record files (imagenet2012).

Where data lives: TFDS datasets in `--data_dir`, else `$KERAS_RESNET_DATA/tensorflow_datasets`,
else TFDS's own default (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`); a missing dataset is
downloaded and prepared by TFDS unless `download=False`. The mean (and the pass that finds corrupt
folder images) is cached under `$KERAS_RESNET_CACHE` (default `~/.cache/keras_resnet`), keyed by
the files and the split actually used.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import socket
import urllib.parse
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import tensorflow as tf

from keras_resnet import files
from keras_resnet.preprocessing import CIFAR_RECIPE, IMAGENET_CROP, IMAGENET_MEAN, IMAGENET_RECIPE

DATA_ENV = "KERAS_RESNET_DATA"
CACHE_ENV = "KERAS_RESNET_CACHE"
TFDS_ENV = "TFDS_DATA_DIR"

TFDS_NAMES = ("cifar10", "cifar100", "imagenette", "imagenet2012")
EMBEDDED_NAMES = ("digits",)
# TFDS's 160px imagenette: enough for the default 128 crops, and 4x smaller than full size.
IMAGENETTE_TFDS = "imagenette/160px-v2"
FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TEST_SPLIT_NAMES = ("val", "validation", "test")

# Held-out splits: a fixed, stratified fraction, chosen by a fixed seed so that the validation
# set never moves with the training seed (CIFAR's 45k/5k).
VALIDATION_FRACTION = 0.1
SPLIT_SEED = 20151210
IMAGENET2012_HELD_OUT = 10_000
DIGITS_TEST_FRACTION = 0.2  # 1,797 digits: 1,438 to train on, 359 to test (stratified)

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


class DataUnavailable(FileNotFoundError):
    """The dataset is not where it was looked for and cannot be fetched; the message says how to fix it."""


# ----------------------------------------------------------------------------------------------
# Locations


def default_tfds_dir() -> pathlib.Path:
    """`$KERAS_RESNET_DATA/tensorflow_datasets` when set, else TFDS's own default data dir."""
    if env := os.environ.get(DATA_ENV):
        return pathlib.Path(env).expanduser() / "tensorflow_datasets"
    return pathlib.Path(os.environ.get(TFDS_ENV) or "~/tensorflow_datasets").expanduser()


def default_cache_dir() -> pathlib.Path:
    """`$KERAS_RESNET_CACHE`, else `~/.cache/keras_resnet` (never the data dir, which may be read-only)."""
    env = os.environ.get(CACHE_ENV)
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "keras_resnet"


# ----------------------------------------------------------------------------------------------
# Storage types: what a split holds, and how it lists its examples


def decode(data: tf.Tensor) -> tf.Tensor:
    # channels=3: a few real-world JPEGs are grayscale (or CMYK); PNGs may carry alpha.
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def _indices(n: int, shuffle_seed: int | None, workers: int, index: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.range(n).shard(workers, index)
    if shuffle_seed is not None:
        ds = ds.shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=True).repeat()
    return ds


@dataclasses.dataclass
class ImageArray:
    """Same-sized images in memory: uint8 [N, H, W, 3] (batchable by gathering)."""

    images: np.ndarray
    labels: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> ImageArray:
        return ImageArray(self.images[idx], self.labels[idx])

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def examples(self, shuffle_seed: int | None, workers: int, index: int) -> tf.data.Dataset:
        """Unbatched (uint8 [H, W, 3], int32) examples of this worker's shard; shuffled and
        repeated forever when `shuffle_seed` is given (training)."""
        images, labels = tf.constant(self.images), tf.constant(self.labels)
        ds = _indices(self.num_examples, shuffle_seed, workers, index)
        return ds.map(lambda i: (images[i], labels[i]), num_parallel_calls=AUTOTUNE)


@dataclasses.dataclass
class RaggedImages:
    """Images of different sizes in memory: one flat uint8 buffer with per-image offsets and shapes."""

    buffer: np.ndarray
    offsets: np.ndarray
    shapes: np.ndarray
    labels: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        o, s = self.offsets[i], self.shapes[i]
        return self.buffer[o : o + int(np.prod(s))].reshape(s)

    def subset(self, idx: np.ndarray) -> ImageArray | RaggedImages:
        return pack([self.image(i) for i in idx], self.labels[idx])

    def examples(self, shuffle_seed: int | None, workers: int, index: int) -> tf.data.Dataset:
        buffer, offsets, shapes = (tf.constant(a) for a in (self.buffer, self.offsets, self.shapes))
        labels = tf.constant(self.labels)

        def get(i):
            o, s = offsets[i], shapes[i]
            return tf.reshape(buffer[o : o + tf.reduce_prod(s)], s), labels[i]

        ds = _indices(self.num_examples, shuffle_seed, workers, index)
        return ds.map(get, num_parallel_calls=AUTOTUNE)


def pack(images: list[np.ndarray], labels: np.ndarray) -> ImageArray | RaggedImages:
    """Same-sized images as one [N, H, W, 3] array (batchable), others in a flat buffer."""
    labels = np.asarray(labels, np.int32)
    if len({im.shape for im in images}) <= 1:
        stacked = np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)
        return ImageArray(stacked, labels)
    shapes = np.array([im.shape for im in images], np.int64)
    offsets = np.concatenate([[0], np.cumsum(shapes.prod(axis=1))[:-1]]).astype(np.int64)
    return RaggedImages(np.concatenate([im.reshape(-1) for im in images]), offsets, shapes, labels)


@dataclasses.dataclass
class ImageFiles:
    """Encoded image files, decoded on every pass."""

    paths: np.ndarray
    labels: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> ImageFiles:
        return ImageFiles(self.paths[idx], self.labels[idx])

    def image(self, i: int) -> np.ndarray:
        return decode(tf.io.read_file(self.paths[i])).numpy()

    def examples(self, shuffle_seed: int | None, workers: int, index: int) -> tf.data.Dataset:
        paths, labels = tf.constant(self.paths), tf.constant(self.labels)
        ds = _indices(self.num_examples, shuffle_seed, workers, index)
        return ds.map(lambda i: (decode(tf.io.read_file(paths[i])), labels[i]), num_parallel_calls=AUTOTUNE)


@dataclasses.dataclass
class TFDSStream:
    """A TFDS split too big for memory, read from its files (sharded per worker), decoded on the fly.

    `make(workers, index, seed or None)` gives the (encoded image, int32 label) examples.
    """

    make: Callable[[int, int, int | None], tf.data.Dataset]
    num_examples: int
    SHUFFLE_BUFFER: ClassVar[int] = 10_000

    def image(self, i: int) -> np.ndarray:
        data, _ = next(iter(self.make(1, 0, None).skip(i).take(1)))
        return decode(data).numpy()

    def examples(self, shuffle_seed: int | None, workers: int, index: int) -> tf.data.Dataset:
        ds = self.make(workers, index, shuffle_seed)
        if shuffle_seed is not None:  # files are shuffled too; this mixes examples across files
            ds = ds.shuffle(self.SHUFFLE_BUFFER, seed=shuffle_seed).repeat()
        # Decoded after the shuffle buffer, which then holds JPEG bytes, not 10x bigger pixels.
        return ds.map(lambda data, label: (decode(data), label), num_parallel_calls=AUTOTUNE)


Split = ImageArray | RaggedImages | ImageFiles | TFDSStream


@dataclasses.dataclass
class Source:
    """What a dataset name resolves to, before the pipelines are built."""

    name: str
    recipe: str
    class_names: tuple[str, ...]
    train: Split
    validation: Split | None
    test: Split
    mean: np.ndarray
    default_size: int
    mirror: bool = True  # whether horizontal flips keep the class (not for digits)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Held-out split and the cached mean


def held_out_split(
    labels: np.ndarray, fraction: float = VALIDATION_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic, stratified (kept, held-out) indices: round(fraction * count) per class
    held out (5,000 = 500 per class on CIFAR-10), chosen by a fixed seed, both sorted."""
    rng = np.random.default_rng(SPLIT_SEED)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        held.append(rng.permutation(idx)[: round(fraction * len(idx))])
    held = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held), held


def _hold_out(train: Split, validation_split: bool) -> tuple[Split, Split | None, np.ndarray]:
    """(train, validation or None, indices of the train examples kept) for an in-memory split."""
    if not validation_split:
        return train, None, np.arange(train.num_examples)
    train_idx, val_idx = held_out_split(train.labels)
    if not len(val_idx):
        raise ValueError(
            f"--validation_split holds out {VALIDATION_FRACTION:.0%} of each class, which is no image of "
            f"these {train.num_examples} training images: add images, or drop --validation_split."
        )
    return train.subset(train_idx), train.subset(val_idx), train_idx


def cached(
    cache_dir: pathlib.Path, kind: str, key: dict, compute: Callable[[], dict], names: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """`compute()` (the arrays `names`) once per `key`, then read back from `cache_dir/<kind>-*.npz`.

    The key is written beside it as JSON for humans. A damaged cache (unreadable, or without one
    of `names`) is recomputed; an unwritable cache directory only costs the recomputation next time.
    """
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() else "_" for c in str(key.get("dataset", "data")))[-40:]
    path = cache_dir / f"{kind}-{slug}-{digest}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                found = {name: f[name] for name in names}  # KeyError if one is missing
            return found
        # A cut or emptied file: zipfile.BadZipFile / EOFError; not our arrays: KeyError and others.
        except Exception as e:
            log.warning("Ignoring unreadable cache %s (%s: %s); recomputing.", path, type(e).__name__, e)
    value = {k: np.asarray(v) for k, v in compute().items()}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with files.replacing(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **value)
        files.write_json(path.with_suffix(".json"), key)
    except OSError as e:
        log.warning("Could not write the cache %s (%s): set $%s to a writable directory.", path, e, CACHE_ENV)
    return value


def _cached_mean(cache_dir: pathlib.Path, key: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
    found = cached(cache_dir, "mean", key, lambda: {"mean": np.asarray(compute(), np.float32)}, ("mean",))
    return found["mean"]


def _mean_image(images: np.ndarray) -> np.ndarray:
    """float64 mean over the first axis, in chunks so 50k images need no float64 copy."""
    total = np.zeros(images.shape[1:], np.float64)
    for start in range(0, len(images), 4096):
        total += images[start : start + 4096].sum(axis=0, dtype=np.float64)
    return total / max(len(images), 1)


def _channel_mean(split: ImageArray | RaggedImages) -> np.ndarray:
    """Per-channel mean over every pixel of an in-memory split (any image sizes)."""
    flat = (split.images if isinstance(split, ImageArray) else split.buffer).reshape(-1, 3)
    return flat.sum(axis=0, dtype=np.float64) / max(len(flat), 1)


# ----------------------------------------------------------------------------------------------
# TFDS


def _download_hosts(builder) -> list[str]:
    try:
        urls = list(builder.url_infos or ())
    except Exception:  # builders without a checksums file list no URLs
        urls = []
    return sorted({urllib.parse.urlsplit(u).hostname for u in urls if u.startswith("http")} - {None})


def _reachable(host: str, timeout: float = 5.0) -> bool:
    """Whether an HTTPS connection to `host` opens within `timeout` seconds.

    TFDS retries a failed download for minutes (urllib3's backoff); this answers in seconds.
    """
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def tfds_builder(name: str, data_dir: str, download: bool):
    """The TFDS builder of `name`, prepared: downloaded and prepared first when allowed.

    Raises:
        DataUnavailable: missing and not downloadable (--nodownload, no network, a manual
            download, or a failed download), one line naming the dataset, the dir and the fix.
    """
    import tensorflow_datasets as tfds  # heavy, and only needed here

    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    where = f"not in {data_dir} (looked for {builder.data_dir})"
    elsewhere = f"or point --data_dir (or ${DATA_ENV}/tensorflow_datasets) at a directory that holds it"
    if name == "imagenet2012":
        manual = pathlib.Path(data_dir) / "downloads" / "manual"
        tars = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
        if not download or not all((manual / t).is_file() for t in tars):
            raise DataUnavailable(
                f"Dataset 'imagenet2012' is {where} and needs a manual download: register at "
                f"https://image-net.org, put {' and '.join(tars)} in {manual}/, then run again "
                f"(without --nodownload), {elsewhere}."
            )
    elif not download:
        raise DataUnavailable(
            f"Dataset {name!r} is {where} and --nodownload forbids fetching it: drop --nodownload to "
            f"download and prepare it there, {elsewhere}."
        )
    else:
        for host in _download_hosts(builder):
            if not _reachable(host):
                raise DataUnavailable(
                    f"Dataset {name!r} is {where} and cannot be downloaded: {host} is unreachable from "
                    f"this machine. Prepare it where there is internet (python train.py --dataset={name} "
                    f"--data_dir=DIR) and copy DIR here, {elsewhere}; or train offline on --dataset=digits."
                )
        print(f"Downloading and preparing {name} into {data_dir} (once)...", flush=True)
    try:
        builder.download_and_prepare()
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise DataUnavailable(
            f"Downloading or preparing {name!r} into {data_dir} failed ({type(err).__name__}: {first}). "
            f"Check the network and the free disk space and run again, {elsewhere}."
        ) from err
    return builder


@functools.lru_cache(maxsize=4)
def _tfds_in_memory(name: str, data_dir: str, split: str, download: bool) -> ImageArray | RaggedImages:
    """A small TFDS split decoded once into memory (once per process)."""
    import tensorflow_datasets as tfds

    builder = tfds_builder(name, data_dir, download)
    if None not in builder.info.features["image"].shape:
        images, labels = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
        return ImageArray(images, labels.astype(np.int32))
    pairs = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True)))
    return pack([im for im, _ in pairs], np.array([lb for _, lb in pairs]))


def _tfds_streamed(name: str, data_dir: str, split: str, download: bool) -> TFDSStream:
    """A TFDS split too big for memory (imagenet2012): files sharded per worker, decoded on the fly."""
    import tensorflow_datasets as tfds

    builder = tfds_builder(name, data_dir, download)

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

    return TFDSStream(make, builder.info.splits[split].num_examples)


def _tfds_class_names(name: str, data_dir: str, download: bool) -> tuple[str, ...]:
    names = tfds_builder(name, data_dir, download).info.features["label"].names
    return tuple(IMAGENETTE_NAMES.get(n, n) for n in names) if name.startswith("imagenette") else tuple(names)


def _from_cifar(
    name: str,
    tfds_dir: str,
    download: bool,
    validation_split: bool,
    image_size: int | None,
    cache: pathlib.Path,
) -> Source:
    native = 32  # CIFAR-10 and -100; checked before any download or decoding
    if image_size and image_size != native:
        raise ValueError(
            f"--image_size={image_size}: the cifar recipe trains on the original {native}x{native} view "
            f"(section 4.2); leave --image_size unset for {name}."
        )
    full = _tfds_in_memory(name, tfds_dir, "train", download)
    test = _tfds_in_memory(name, tfds_dir, "test", download)
    train, validation, _ = _hold_out(full, validation_split)
    builder_dir = pathlib.Path(tfds_builder(name, tfds_dir, download).data_dir)
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
    return Source(name, CIFAR_RECIPE, class_names, train, validation, test, mean, native)


def _from_tfds_imagenet(
    name: str, tfds_dir: str, download: bool, validation_split: bool, cache: pathlib.Path
) -> Source:
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
        return Source(name, IMAGENET_RECIPE, class_names, train, validation, test, mean, IMAGENET_CROP)
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
    return Source(name, IMAGENET_RECIPE, class_names, train, validation, test, mean, 128)


# ----------------------------------------------------------------------------------------------
# The embedded dataset: scikit-learn's handwritten digits


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
    return images, labels, held_out_split(labels, DIGITS_TEST_FRACTION)[1]


def _from_digits(validation_split: bool, image_size: int | None) -> Source:
    size = image_size or 32  # the CIFAR nets' input
    images, labels = _digits_images(size)
    train_idx, test_idx = held_out_split(labels, DIGITS_TEST_FRACTION)
    full = ImageArray(images[train_idx], labels[train_idx])
    train, validation, _ = _hold_out(full, validation_split)
    mean = _mean_image(train.images).astype(np.float32)  # 1,437 small images: not worth a cache
    names = tuple(str(d) for d in range(10))
    test = ImageArray(images[test_idx], labels[test_idx])
    return Source("digits", CIFAR_RECIPE, names, train, validation, test, mean, size, mirror=False)


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
    if len(names) < 2:
        raise ValueError(
            f"{root}/train holds {len(names)} class folder ({names[0]}): a classifier needs at least 2 "
            "classes, one folder each."
        )
    splits = {}
    for split in ("train", test_split):
        paths, labels = [], []
        for label, name in enumerate(names):
            found = _images_in(root / split / name)
            paths += [str(p) for p in found]
            labels += [label] * len(found)
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
        image = decode(tf.io.read_file(path))
        return i, image, tf.reduce_sum(tf.cast(image, tf.int64), [0, 1])

    # ignore_errors drops exactly the examples whose read or decode failed; their indices name the files.
    ds = ds.map(read, num_parallel_calls=AUTOTUNE, deterministic=False).ignore_errors().prefetch(AUTOTUNE)
    images: list[np.ndarray | None] = [None] * len(paths)
    sums = np.zeros((len(paths), 3), np.int64)
    pixels = np.zeros(len(paths), np.int64)
    ok = np.zeros(len(paths), bool)
    progbar = None
    if verbose and len(paths) >= 1000:
        import keras

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
            if p.lower().endswith(("jpg", "jpeg")):
                decoded += int(np.prod(tf.image.extract_jpeg_shape(tf.io.read_file(p))[:2])) * 3
            else:
                decoded += decode(tf.io.read_file(p)).numpy().size
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
    pass also fills the split; streamed, its result is kept in `cache_dir` so that later runs
    skip it until a file changes.
    """
    fingerprint = _fingerprint(paths)
    if keep:
        out, sums, pixels, bad = _decoded_folder_split(tuple(paths), tuple(labels), fingerprint, verbose)
    else:

        def scan():
            _, sums, pixels, bad = _scan_files(tuple(paths), False, verbose)
            return {"sums": sums, "pixels": pixels, "bad": bad}

        key = {"dataset": name, "split": split, "files": fingerprint}
        found = cached(cache_dir, "scan", key, scan, ("sums", "pixels", "bad"))
        bad = found["bad"]
        good = np.setdiff1d(np.arange(len(paths)), bad)
        out = ImageFiles(np.asarray(paths)[good], np.asarray(labels, np.int32)[good])
        sums, pixels = found["sums"][good], found["pixels"][good]
    if len(bad) and not skip_corrupt:
        raise ValueError(
            f"{len(bad)} corrupt or unreadable image file(s) in the {split!r} split of {name} (the first: "
            f"{paths[bad[0]]}): fix or delete them, or leave them out with --skip_corrupt "
            "(data.load(skip_corrupt=True))."
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
    return pack([images[i] for i in good], np.asarray(labels, np.int32)[good]), sums[good], pixels[good], bad


def _from_folder(
    folder: pathlib.Path,
    name: str,
    validation_split: bool,
    skip_corrupt: bool,
    cache_images: bool | None,
    verbose: bool,
    cache: pathlib.Path,
) -> Source:
    class_names, found = index_folder(folder)
    test_name = next(s for s in found if s != "train")
    display = "imagenette" if name == "imagenette" else f"{FOLDER_PREFIX}{folder}"
    if cache_images is None:
        cache_images = _decoded_bytes_estimate(found["train"][0] + found[test_name][0]) <= _memory_budget()
    skipped = {}
    train, sums, pixels, skipped["train"] = _folder_split(
        display, "train", *found["train"], cache_images, skip_corrupt, verbose, cache
    )
    test, _, _, skipped[test_name] = _folder_split(
        display, test_name, *found[test_name], cache_images, skip_corrupt, verbose, cache
    )
    if set(class_names) <= set(IMAGENETTE_NAMES):
        class_names = tuple(IMAGENETTE_NAMES[c] for c in class_names)
    train, validation, kept = _hold_out(train, validation_split)
    key = {
        "dataset": str(folder.resolve()),
        "files": _fingerprint(found["train"][0]),
        "examples": train.num_examples,
        "validation_split": validation_split,
        "kind": "channel",
    }
    mean = _cached_mean(cache, key, lambda: sums[kept].sum(axis=0) / max(pixels[kept].sum(), 1))
    skipped = {k: v for k, v in skipped.items() if v}
    return Source(display, IMAGENET_RECIPE, class_names, train, validation, test, mean, 128, skipped=skipped)


# ----------------------------------------------------------------------------------------------
# resolve


def resolve(
    name: str,
    *,
    data_dir: str | None = None,
    download: bool = True,
    validation_split: bool = False,
    image_size: int | None = None,
    skip_corrupt: bool = False,
    cache_images: bool | None = None,
    cache_dir: pathlib.Path | None = None,
    verbose: bool = True,
) -> Source:
    """The `Source` of a dataset name; see `data.load` for the arguments.

    Raises:
        ValueError: an unknown name or a bad folder layout.
        FileNotFoundError (`DataUnavailable`): data that is missing and cannot be fetched.
    """
    cache = cache_dir or default_cache_dir()
    tfds_dir = str(pathlib.Path(data_dir).expanduser() if data_dir else default_tfds_dir())
    if name in EMBEDDED_NAMES:
        return _from_digits(validation_split, image_size)
    folder = None
    if name.startswith(FOLDER_PREFIX):
        folder = pathlib.Path(name[len(FOLDER_PREFIX) :]).expanduser()
    elif name not in TFDS_NAMES and os.path.isdir(name):
        folder = pathlib.Path(name)
    elif name not in TFDS_NAMES:
        raise ValueError(
            f"Unknown dataset {name!r}: expected one of {', '.join(TFDS_NAMES + EMBEDDED_NAMES)}, or "
            f"folder:<root> / an existing directory laid out as ROOT/<split>/<class>/<image>."
        )
    elif name == "imagenette" and not (pathlib.Path(tfds_dir) / IMAGENETTE_TFDS).is_dir():
        # An image folder beside the TFDS dir (as in $KERAS_RESNET_DATA) is used when TFDS has no copy.
        beside = pathlib.Path(tfds_dir).parent / "imagenette"
        if (beside / "train").is_dir():
            folder = beside
    if folder is not None:
        return _from_folder(folder, name, validation_split, skip_corrupt, cache_images, verbose, cache)
    if name in ("cifar10", "cifar100"):
        return _from_cifar(name, tfds_dir, download, validation_split, image_size, cache)
    try:
        return _from_tfds_imagenet(name, tfds_dir, download, validation_split, cache)
    except DataUnavailable as err:
        if name != "imagenette":
            raise
        folder = pathlib.Path(tfds_dir).parent / "imagenette"
        raise DataUnavailable(
            f"{err} An image folder {folder}/{{train,val}}/<wnid>/*.JPEG works too."
        ) from None
