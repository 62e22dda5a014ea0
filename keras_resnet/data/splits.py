"""What is derived from a dataset's files: its fingerprint, its held-out split, its cached mean.

- `fingerprint(paths)`: `data_sha256`, the first 16 hex digits of the SHA-256 of the training
  split's files (their bytes; for image folders, and files too big to read once per run, their
  sorted names and sizes). A run records it in `summary.json`; every cache below is keyed by it,
  so a changed dataset at the same path and version never meets a stale cache.
- `held_out_split`, `hold_out`: a fixed, stratified 10% of the training images (CIFAR's 45k/5k).
- `cached`, `cached_mean`: arrays computed once per key under `$KERAS_RESNET_CACHE` (default
  `~/.cache/keras_resnet`, never the data dir, which may be read-only).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from keras_resnet import files
from keras_resnet.data.storage import ImageArray, RaggedImages, Split

CACHE_ENV = "KERAS_RESNET_CACHE"
# Held-out splits: a fixed, stratified fraction, chosen by a fixed seed so that the validation
# set never moves with the training seed (CIFAR's 45k/5k).
VALIDATION_FRACTION = 0.1
SPLIT_SEED = 20151210
# Files are hashed byte for byte up to this many bytes in all (CIFAR-10's train file: 117 MB, 0.3 s);
# beyond it (imagenet2012's 140 GB) their names and sizes stand for them.
CONTENT_HASH_LIMIT = 2 << 30
FINGERPRINT_DIGITS = 16

log = logging.getLogger(__name__)


def default_cache_dir() -> pathlib.Path:
    """`$KERAS_RESNET_CACHE`, else `~/.cache/keras_resnet` (never the data dir, which may be read-only)."""
    env = os.environ.get(CACHE_ENV)
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "keras_resnet"


def fingerprint(paths: Sequence[str | os.PathLike], content: bool = True, root: str | None = None) -> str:
    """`data_sha256` of a split's files: their bytes in sorted order when `content` and they total
    at most CONTENT_HASH_LIMIT, else their sorted names (relative to `root`, if given) and sizes."""
    listing = sorted(
        (os.path.relpath(p, root) if root else os.path.basename(p), os.path.getsize(p), os.fspath(p))
        for p in paths
    )
    if content and sum(size for _, size, _ in listing) <= CONTENT_HASH_LIMIT:
        return _content_hash(tuple((path, os.stat(path).st_mtime_ns, size) for _, size, path in listing))
    digest = hashlib.sha256()
    for name, size, _ in listing:
        digest.update(f"{name}\0{size}\n".encode())
    return digest.hexdigest()[:FINGERPRINT_DIGITS]


@functools.lru_cache(maxsize=8)
def _content_hash(files_: tuple[tuple[str, int, int], ...]) -> str:
    """Once per process and (path, mtime, size) listing: the files' bytes hashed in order."""
    digest = hashlib.sha256()
    for path, _, _ in files_:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:FINGERPRINT_DIGITS]


def array_fingerprint(*arrays: np.ndarray) -> str:
    """`data_sha256` of data that is not in files (the embedded digits): of the arrays' bytes."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:FINGERPRINT_DIGITS]


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


def hold_out(train: Split, validation_split: bool) -> tuple[Split, Split | None, np.ndarray]:
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


def cached_mean(cache_dir: pathlib.Path, key: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
    found = cached(cache_dir, "mean", key, lambda: {"mean": np.asarray(compute(), np.float32)}, ("mean",))
    return found["mean"]


def mean_image(images: np.ndarray) -> np.ndarray:
    """float64 mean over the first axis, in chunks so 50k images need no float64 copy."""
    total = np.zeros(images.shape[1:], np.float64)
    for start in range(0, len(images), 4096):
        total += images[start : start + 4096].sum(axis=0, dtype=np.float64)
    return total / max(len(images), 1)


def channel_mean(split: ImageArray | RaggedImages) -> np.ndarray:
    """Per-channel mean over every pixel of an in-memory split (any image sizes)."""
    flat = (split.images if isinstance(split, ImageArray) else split.buffer).reshape(-1, 3)
    return flat.sum(axis=0, dtype=np.float64) / max(len(flat), 1)
