"""Image folders, ROOT/<split>/<class>/<image> (JPEG or PNG): listed, checked, decoded once.

Every file is decoded once to find the corrupt ones (and those that declare more than
`config.MAX_PIXELS`) and the mean; a folder that fits in a quarter of RAM stays decoded in
memory, a bigger one is decoded on every pass and its scan is cached until a file changes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pathlib

import numpy as np
import tensorflow as tf

from keras_resnet import console
from keras_resnet.config import MAX_PIXELS
from keras_resnet.data import splits
from keras_resnet.data.storage import (
    AUTOTUNE,
    JPEG_MAGIC,
    PNG_MAGIC,
    ImageFiles,
    Source,
    SourceRequest,
    declared_size,
    decode_bounded,
    pack,
)
from keras_resnet.data.tfds import IMAGENETTE_NAMES

FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TEST_SPLIT_NAMES = ("val", "validation", "test")

log = logging.getLogger(__name__)


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
    found = sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    for p in found:
        try:
            str(p).encode()
        except UnicodeEncodeError:  # bytes that are not UTF-8: TensorFlow takes paths as UTF-8 strings
            raise ValueError(
                f"Image file {os.fsencode(p)!r} has a name that is not valid UTF-8: rename it."
            ) from None
    return found


def _listing(paths: list[str]) -> str:
    """Paths, sizes and modification times: a scan of the split is redone when any file changes."""
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
        image = decode_bounded(tf.io.read_file(path))
        return i, image, tf.reduce_sum(tf.cast(image, tf.int64), [0, 1])

    # ignore_errors drops exactly the examples whose read or decode failed (or that declare more
    # than MAX_PIXELS); their indices name the files.
    ds = ds.map(read, num_parallel_calls=AUTOTUNE, deterministic=False).ignore_errors().prefetch(AUTOTUNE)
    images: list[np.ndarray | None] = [None] * len(paths)
    sums = np.zeros((len(paths), 3), np.int64)
    pixels = np.zeros(len(paths), np.int64)
    ok = np.zeros(len(paths), bool)
    bar = None
    if verbose and len(paths) >= 1000:
        bar = console.Bar(
            len(paths), f"decoding the images under {os.path.dirname(os.path.dirname(paths[0]))} (once)"
        )
    for k, (i, image, s) in enumerate(ds.as_numpy_iterator()):
        ok[i], sums[i], pixels[i] = True, s, image.shape[0] * image.shape[1]
        if keep:
            images[i] = image
        if bar:
            bar.update(k + 1)
    if bar:
        bar.close()
    return (images if keep else None), sums, pixels, np.flatnonzero(~ok)


def _decoded_bytes_estimate(paths: list[str], sample: int = 16) -> int:
    """Decoded size of all files, extrapolated from the decoded/encoded ratio of a few.

    The sizes come from the files' headers, never from decoding: a 1.2 MB PNG may declare
    20000x20000 pixels (1.2 GB decoded), which the scan then refuses by the same header.
    """
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(int)]
    encoded = sum(os.path.getsize(p) for p in picks)
    decoded = 0
    for p in picks:
        try:
            height, width = (int(v) for v in declared_size(tf.io.read_file(p)))
        except (tf.errors.OpError, ValueError):  # corrupt files are reported by the scan
            continue
        if 0 < height * width <= MAX_PIXELS:  # larger ones are refused by the scan
            decoded += height * width * 3
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
    listing = _listing(paths)
    if keep:
        out, sums, pixels, bad = _decoded_folder_split(tuple(paths), tuple(labels), listing, verbose)
    else:

        def scan():
            _, sums, pixels, bad = _scan_files(tuple(paths), False, verbose)
            return {"sums": sums, "pixels": pixels, "bad": bad}

        key = {"dataset": name, "split": split, "files": listing}
        found = splits.cached(cache_dir, "scan", key, scan, ("sums", "pixels", "bad"))
        bad = found["bad"]
        good = np.setdiff1d(np.arange(len(paths)), bad)
        out = ImageFiles(np.asarray(paths)[good], np.asarray(labels, np.int32)[good])
        sums, pixels = found["sums"][good], found["pixels"][good]
    if len(bad) and not skip_corrupt:
        raise ValueError(
            f"{len(bad)} corrupt or unreadable image file(s) in the {split!r} split of {name} (the first: "
            f"{paths[bad[0]]}: {why_unusable(paths[bad[0]])}): fix, shrink or delete them, or leave them out "
            "with --skip_corrupt (data.load(skip_corrupt=True))."
        )
    if len(bad):
        log.warning("Skipping %d unreadable image(s) in %s/%s, e.g. %s", len(bad), name, split, paths[bad[0]])
    return out, sums, pixels, len(bad)


@functools.lru_cache(maxsize=4)
def _decoded_folder_split(paths: tuple[str, ...], labels: tuple[int, ...], listing: str, verbose: bool):
    """The readable files of a split decoded into memory, once per process and `listing`
    (paths, sizes, mtimes: an edited file is read again)."""
    del listing
    images, sums, pixels, bad = _scan_files(paths, True, verbose)
    good = np.setdiff1d(np.arange(len(paths)), bad)
    return pack([images[i] for i in good], np.asarray(labels, np.int32)[good]), sums[good], pixels[good], bad


def why_unusable(path: str) -> str:
    """Why a file the scan left out cannot be used, in a few words (read from its header only)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if not (head.startswith(JPEG_MAGIC) or (head.startswith(PNG_MAGIC) and head[12:16] == b"IHDR")):
        return "neither a JPEG nor a PNG"
    try:
        size = [int(v) for v in declared_size(tf.io.read_file(path))]
    except tf.errors.OpError:
        return "a JPEG whose header does not read"
    if size[0] * size[1] > MAX_PIXELS:
        return f"{size[1]}x{size[0]} pixels, more than the {MAX_PIXELS:,} an image may have"
    return "it does not decode"


def folder(request: SourceRequest, root: pathlib.Path, display: str) -> Source:
    """An image folder ROOT/{train,val}/<class>/<image>: decoded into memory when it fits in a
    quarter of RAM (else decoded on every pass), its per-channel mean, corrupt files refused."""
    class_names, found = index_folder(root)
    test_name = next(s for s in found if s != "train")
    keep = request.cache_images
    if keep is None:
        keep = _decoded_bytes_estimate(found["train"][0] + found[test_name][0]) <= _memory_budget()
    cache = pathlib.Path(request.cache_dir) if request.cache_dir else splits.default_cache_dir()
    scanned = {
        split: _folder_split(
            display, split, *found[split], keep, request.skip_corrupt, request.verbose, cache
        )
        for split in ("train", test_name)
    }
    (train, sums, pixels, _), (test, *_) = scanned["train"], scanned[test_name]
    if set(class_names) <= set(IMAGENETTE_NAMES):
        class_names = tuple(IMAGENETTE_NAMES[c] for c in class_names)
    train, validation, kept = splits.hold_out(train, request.validation_split)
    sha = splits.fingerprint(found["train"][0], content=False, root=str(root))
    key = {
        "dataset": str(root.resolve()),
        "data_sha256": sha,
        "files": _listing(found["train"][0]),
        "examples": train.num_examples,
        "validation_split": request.validation_split,
        "kind": "channel",
    }
    mean = splits.cached_mean(cache, key, lambda: sums[kept].sum(axis=0) / max(pixels[kept].sum(), 1))
    skipped = {split: s[3] for split, s in scanned.items() if s[3]}
    return Source(display, class_names, train, validation, test, mean, sha, skipped=skipped)


def source(request: SourceRequest) -> Source:
    """The folder `request.name` names: `folder:<root>`, or an existing directory."""
    name = request.name
    root = pathlib.Path(name[len(FOLDER_PREFIX) :] if name.startswith(FOLDER_PREFIX) else name).expanduser()
    return folder(request, root, f"{FOLDER_PREFIX}{root}")
