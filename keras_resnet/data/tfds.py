"""TFDS datasets: CIFAR-10/100, imagenette and imagenet2012, and TFDS's download made safe to try.

Where data lives: `--data_dir`, else `$KERAS_RESNET_DATA/tensorflow_datasets`, else TFDS's own
default (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`). A missing dataset is downloaded and
prepared by TFDS unless `download=False`; an unreachable download host is found in seconds
(TFDS itself retries for minutes) and named in one line.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
import socket
import urllib.parse

import numpy as np
import tensorflow as tf

from keras_resnet.data import splits
from keras_resnet.data.info import IMAGENET_MEAN
from keras_resnet.data.storage import ImageArray, RaggedImages, Source, SourceRequest, TFDSStream, pack

log = logging.getLogger(__name__)

DATA_ENV = "KERAS_RESNET_DATA"
TFDS_ENV = "TFDS_DATA_DIR"
# TFDS's 160px imagenette: enough for the default 128 crops, and 4x smaller than full size.
IMAGENETTE_TFDS = "imagenette/160px-v2"
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


class DataUnavailable(FileNotFoundError):
    """The dataset is not where it was looked for and cannot be fetched; the message says how to fix it."""


def default_tfds_dir() -> pathlib.Path:
    """`$KERAS_RESNET_DATA/tensorflow_datasets` when set, else TFDS's own default data dir."""
    if env := os.environ.get(DATA_ENV):
        return pathlib.Path(env).expanduser() / "tensorflow_datasets"
    return pathlib.Path(os.environ.get(TFDS_ENV) or "~/tensorflow_datasets").expanduser()


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
        log.info(f"Downloading and preparing {name} into {data_dir} (once)...")
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
def in_memory(name: str, data_dir: str, split: str, download: bool) -> ImageArray | RaggedImages:
    """A small TFDS split decoded once into memory (once per process)."""
    import tensorflow_datasets as tfds

    builder = tfds_builder(name, data_dir, download)
    try:
        if None not in builder.info.features["image"].shape:
            images, labels = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
            return ImageArray(images, labels.astype(np.int32))
        pairs = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True)))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
        shards = sorted(pathlib.Path(builder.data_dir).glob(f"*-{split}.*"))
        damaged = ", ".join(p.name for p in _damaged(shards)) or "none found by a re-read"
        raise DataUnavailable(
            f"The {split!r} split of {name} in {builder.data_dir} is damaged ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120]}; damaged: {damaged}): restore it from a good copy, "
            "or delete that folder and run again to download and prepare it anew."
        ) from None
    return pack([im for im, _ in pairs], np.array([lb for _, lb in pairs]))


def _damaged(shards: list[pathlib.Path]) -> list[pathlib.Path]:
    """The record files that do not read to their end: TensorFlow's error ("corrupted record at N")
    names none, so each is read again on its own (seconds, and only once something failed)."""
    bad = []
    for shard in shards:
        try:
            tf.data.TFRecordDataset(str(shard)).reduce(0, lambda count, _: count + 1)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
            bad.append(shard)
    return bad


def streamed(name: str, data_dir: str, split: str, download: bool) -> TFDSStream:
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


def class_names_of(name: str, data_dir: str, download: bool) -> tuple[str, ...]:
    names = tfds_builder(name, data_dir, download).info.features["label"].names
    return tuple(IMAGENETTE_NAMES.get(n, n) for n in names) if name.startswith("imagenette") else tuple(names)


def train_fingerprint(builder) -> str:
    """`data_sha256` of a prepared TFDS dataset's training files."""
    found = sorted(p for p in pathlib.Path(builder.data_dir).iterdir() if f"{builder.name}-train." in p.name)
    return splits.fingerprint(found)


def cifar(request: SourceRequest) -> Source:
    """CIFAR-10 or -100 at their native 32x32, decoded into memory; the per-pixel mean image."""
    native = 32  # checked before any download or decoding
    if request.image_size and request.image_size != native:
        raise ValueError(
            f"--image_size={request.image_size}: the cifar recipe trains on the original {native}x{native} "
            f"view (section 4.2); leave --image_size unset for {request.name}."
        )
    name, tfds_dir, download = request.name, request.tfds_dir, request.download
    full = in_memory(name, tfds_dir, "train", download)
    test = in_memory(name, tfds_dir, "test", download)
    train, validation, _ = splits.hold_out(full, request.validation_split)
    builder = tfds_builder(name, tfds_dir, download)
    sha = train_fingerprint(builder)
    key = {
        "dataset": name,
        "data_sha256": sha,
        "examples": train.num_examples,
        "validation_split": request.validation_split,
        "kind": "image",
    }
    mean = splits.cached_mean(_cache(request), key, lambda: splits.mean_image(train.images))
    return Source(name, class_names_of(name, tfds_dir, download), train, validation, test, mean, sha)


def imagenet2012(request: SourceRequest) -> Source:
    """ImageNet (ILSVRC 2012) streamed from TFDS's record files; the standard per-channel mean."""
    name, tfds_dir, download = request.name, request.tfds_dir, request.download
    held = IMAGENET2012_HELD_OUT  # TFDS shuffled the train files when preparing: the tail is random
    train_split, val_split = (
        (f"train[:-{held}]", f"train[-{held}:]") if request.validation_split else ("train", None)
    )
    train = streamed(name, tfds_dir, train_split, download)
    validation = streamed(name, tfds_dir, val_split, download) if val_split else None
    test = streamed(name, tfds_dir, "validation", download)
    sha = train_fingerprint(tfds_builder(name, tfds_dir, download))
    mean = np.array(IMAGENET_MEAN, np.float32)
    return Source(name, class_names_of(name, tfds_dir, download), train, validation, test, mean, sha)


def imagenette_tfds(request: SourceRequest) -> Source:
    """TFDS's 160 px imagenette, decoded into memory; the per-channel mean."""
    tfds_dir, download = request.tfds_dir, request.download
    full = in_memory(IMAGENETTE_TFDS, tfds_dir, "train", download)
    train, validation, _ = splits.hold_out(full, request.validation_split)
    test = in_memory(IMAGENETTE_TFDS, tfds_dir, "validation", download)
    sha = train_fingerprint(tfds_builder(IMAGENETTE_TFDS, tfds_dir, download))
    key = {
        "dataset": IMAGENETTE_TFDS,
        "data_sha256": sha,
        "examples": train.num_examples,
        "validation_split": request.validation_split,
        "kind": "channel",
    }
    mean = splits.cached_mean(_cache(request), key, lambda: splits.channel_mean(train))
    names = class_names_of(IMAGENETTE_TFDS, tfds_dir, download)
    return Source(request.name, names, train, validation, test, mean, sha)


def _cache(request: SourceRequest) -> pathlib.Path:
    return pathlib.Path(request.cache_dir) if request.cache_dir else splits.default_cache_dir()
