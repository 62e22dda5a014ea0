"""The data pipelines: the paper's augmentations on hand-made images, image folders and their
errors, the held-out split and cached mean, tf.distribute sharding, and the real data."""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from keras_resnet import data
from keras_resnet.config import DataConfig
from keras_resnet.data import info as data_info
from keras_resnet.data import pipeline, recipes, registry, splits, views
from keras_resnet.data import tfds as tfds_source


def _seed(i: int) -> tf.Tensor:
    return tf.constant([i, 17], tf.int64)


# ------------------------------------------------------------------------------------------------
# Augmentation and evaluation views on hand-made images


def _window(image: np.ndarray, top: int, left: int, size: int, flip: bool) -> np.ndarray:
    w = image[top : top + size, left : left + size]
    return w[:, ::-1] if flip else w


def test_cifar_augment_is_a_window_of_the_zero_padded_image_or_its_mirror():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
    out = views.cifar_augment(images, mean, _seed(1), pad=2).numpy()
    assert out.shape == (64, 8, 8, 3) and out.dtype == np.float32
    padded = np.pad(images.astype(np.float32) - mean, [(0, 0), (2, 2), (2, 2), (0, 0)])
    seen = set()
    for b in range(64):
        matches = [
            (top, left, flip)
            for top in range(5)
            for left in range(5)
            for flip in (False, True)
            if np.allclose(out[b], _window(padded[b], top, left, 8, flip))
        ]
        assert matches, f"image {b} is no window of the padded image nor its mirror"
        seen.add(matches[0])
    # 64 random draws of 5 x 5 x 2 choices: both flips and every offset row/column show up.
    assert {f for _, _, f in seen} == {False, True}
    assert {t for t, _, _ in seen} == set(range(5)) and {left for _, left, _ in seen} == set(range(5))
    # Stateless: the same seed gives the same batch, another seed another one.
    np.testing.assert_array_equal(out, views.cifar_augment(images, mean, _seed(1), pad=2).numpy())
    assert not np.array_equal(out, views.cifar_augment(images, mean, _seed(2), pad=2).numpy())


def test_imagenet_augment_crops_a_scaled_square_window_and_flips():
    # A ramp image (red = column, green = row): bilinear resampling of a linear ramp is exact,
    # so the output reveals the window it was cut from.
    h, w, size = 96, 120, 32
    ys, xs = np.mgrid[0:h, 0:w]
    image = np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.float32)
    images = np.repeat(image[None], 64, axis=0)
    scale = (40, 80)  # shorter side (96) resized to 40..80, then a 32 crop: window side 38..77
    out = views.imagenet_augment(images, size, scale, _seed(3)).numpy()
    assert out.shape == (64, size, size, 3)
    flips = []
    for b in range(64):
        red, green = out[b, :, :, 0], out[b, :, :, 1]
        np.testing.assert_allclose(red, red[:1].repeat(size, 0), atol=1e-3)  # red constant down a column
        np.testing.assert_allclose(green, green[:, :1].repeat(size, 1), atol=1e-3)
        top, bottom = green[0, 0], green[-1, 0]
        left, right = min(red[0, 0], red[0, -1]), max(red[0, 0], red[0, -1])
        side = bottom - top + 1
        assert right - left + 1 == pytest.approx(side, abs=1e-3), "the window is square"
        assert round(size * h / scale[1]) <= round(side) <= round(size * h / scale[0])
        assert 0 <= top and bottom <= h - 1 and 0 <= left and right <= w - 1
        assert top == pytest.approx(round(top), abs=1e-3) and left == pytest.approx(round(left), abs=1e-3)
        flips.append(red[0, 0] > red[0, -1])
    assert 0 < sum(flips) < 64, "both flipped and unflipped crops"
    # One image at a time (images of mixed sizes) takes the same code path.
    one = views.imagenet_augment(images[:1], size, scale, _seed(3)).numpy()
    np.testing.assert_allclose(one[0], out[0], atol=1e-4)


def test_imagenet_augment_without_scaling_is_the_image_or_its_mirror():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (16, 24, 24, 3), dtype=np.uint8)
    out = views.imagenet_augment(images, 24, (24, 24), _seed(4)).numpy()
    mirrored = [not np.allclose(out[b], images[b], atol=1e-3) for b in range(16)]
    for b in range(16):
        assert np.allclose(out[b], images[b, :, ::-1] if mirrored[b] else images[b], atol=1e-3)
    assert 0 < sum(mirrored) < 16
    unmirrored = views.imagenet_augment(images, 24, (24, 24), _seed(4), mirror=False).numpy()
    np.testing.assert_allclose(unmirrored, images, atol=1e-3)


def test_pca_lighting_shifts_every_pixel_of_an_image_by_one_colour():
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (32, 5, 5, 3)).astype(np.float32)
    shift = (views.pca_lighting(tf.constant(images), _seed(5)) - images).numpy()
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :1, :1], shift.shape), atol=1e-3)
    # The shift is eigvec @ (alpha * eigval) * 255: solving for alpha gives N(0, 0.1) draws.
    eigvec, eigval = np.array(views.PCA_EIGVEC), np.array(views.PCA_EIGVAL)
    alpha = np.linalg.solve(eigvec, shift[:, 0, 0].T).T / (eigval * 255)
    assert 0.03 < alpha.std() < 0.3
    np.testing.assert_allclose(views.pca_lighting(tf.constant(images), _seed(5), std=0.0), images)


def _info(recipe: str, size: int, resize: int, mean) -> data_info.DataInfo:
    return data_info.DataInfo("hand", recipe, 2, ("a", "b"), size, resize, np.asarray(mean, np.float32), 10)


def test_ten_crop_corners_center_and_mirrors():
    rng = np.random.default_rng(3)
    mean = np.array([10.0, 20.0, 30.0], np.float32)
    images = rng.integers(0, 256, (2, 12, 16, 3)).astype(np.float32)
    info = _info(data_info.IMAGENET_RECIPE, 8, 12, mean)  # shorter side already 12: no resampling
    crops = recipes.ten_crop(images, info).numpy()
    assert crops.shape == (2, 10, 8, 8, 3)
    x = images - mean
    expected = [x[:, :8, :8], x[:, :8, 8:], x[:, 4:, :8], x[:, 4:, 8:], x[:, 2:10, 4:12]]
    for k, e in enumerate(expected):
        np.testing.assert_allclose(crops[:, k], e, atol=1e-4)
        np.testing.assert_allclose(crops[:, k + 5], e[:, :, ::-1], atol=1e-4)
    np.testing.assert_allclose(crops[:, 4], recipes.eval_preprocess(images, info), atol=1e-4)


def test_cifar_ten_crop_center_is_the_original_view():
    rng = np.random.default_rng(4)
    mean = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
    images = rng.integers(0, 256, (3, 8, 8, 3)).astype(np.float32)
    info = _info(data_info.CIFAR_RECIPE, 8, 8, mean)
    crops = recipes.ten_crop(images, info).numpy()
    np.testing.assert_allclose(crops[:, 4], images - mean, atol=1e-4)
    np.testing.assert_allclose(crops[:, 4], recipes.eval_preprocess(images, info), atol=1e-4)
    padded = np.pad(images - mean, [(0, 0), (4, 4), (4, 4), (0, 0)])
    np.testing.assert_allclose(crops[:, 0], padded[:, :8, :8], atol=1e-4)
    np.testing.assert_allclose(crops[:, 7], padded[:, 8:, :8][:, :, ::-1], atol=1e-4)  # bottom-left, mirrored


def test_scale_range_and_resize_scale_with_image_size():
    assert data_info.scale_range(224) == (256, 480) and data_info.resize_size_for(224) == 256
    assert data_info.scale_range(128) == (146, 274) and data_info.resize_size_for(128) == 146


def test_held_out_split_is_disjoint_stratified_and_stable():
    labels = np.repeat(np.arange(10), 5000)[np.random.default_rng(5).permutation(50_000)]
    train, val = splits.held_out_split(labels)
    assert len(train) == 45_000 and len(val) == 5_000
    assert not set(train) & set(val) and len(set(train) | set(val)) == 50_000
    np.testing.assert_array_equal(np.bincount(labels[val]), [500] * 10)
    train2, val2 = splits.held_out_split(labels)
    np.testing.assert_array_equal(val, val2)
    np.testing.assert_array_equal(train, train2)


# ------------------------------------------------------------------------------------------------
# Image folders


def _write_image(path: pathlib.Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    encode = tf.io.encode_png if path.suffix.lower() == ".png" else tf.io.encode_jpeg
    path.write_bytes(encode(image).numpy())


def _make_folder(
    root: pathlib.Path, classes=("cat", "dog", "fox"), per_class=(8, 3), sizes=((20, 24), (24, 20))
):
    """ROOT/{train,val}/<class>/<i>.png of random images of a few sizes; returns {split: [images]}."""
    rng = np.random.default_rng(6)
    written = {"train": [], "val": []}
    for split, count in zip(("train", "val"), per_class, strict=True):
        for c in classes:
            for i in range(count):
                image = rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8)
                _write_image(root / split / c / f"{i:03d}.png", image)
                written[split].append(image)
    return written


def test_folder_dataset_shapes_classes_and_mean(tmp_path):
    written = _make_folder(tmp_path / "pets")
    ds = data.load(
        f"folder:{tmp_path / 'pets'}",
        batch_size=4,
        eval_batch_size=5,
        image_size=16,
        cache_dir=tmp_path / "c",
    )
    assert ds.info.class_names == ("cat", "dog", "fox") and ds.info.recipe == data_info.IMAGENET_RECIPE
    assert ds.info.train_examples == 24 and ds.test_examples == 9 and ds.steps_per_epoch == 6
    x, y = next(iter(ds.train))
    assert x.shape == (4, 16, 16, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
    test_labels = np.concatenate([y.numpy() for _, y in ds.test])
    np.testing.assert_array_equal(test_labels, np.repeat([0, 1, 2], 3))
    pixels = np.concatenate([im.reshape(-1, 3) for im in written["train"]]).astype(np.float64)
    np.testing.assert_allclose(ds.info.mean, pixels.mean(axis=0), rtol=1e-5)
    views = next(iter(ds.ten_crop_test()))[0]
    assert views.shape == (5, 10, 16, 16, 3)
    # The evaluation pipeline is eval_preprocess, image by image.
    first = next(iter(ds.test))[0][0]
    np.testing.assert_allclose(first, recipes.eval_preprocess(written["val"][0][None], ds.info)[0], atol=1e-3)


def test_folder_grayscale_jpeg_and_directory_name(tmp_path):
    _make_folder(tmp_path, sizes=((16, 16),))
    gray = np.random.default_rng(7).integers(0, 256, (16, 16, 1), dtype=np.uint8)
    _write_image(tmp_path / "train" / "dog" / "gray.JPEG", gray)
    ds = data.load(str(tmp_path), batch_size=5, image_size=8, cache_dir=tmp_path / "c", cache_images=False)
    assert ds.info.train_examples == 25
    x, _ = next(iter(ds.train))
    assert x.shape == (5, 8, 8, 3)
    # Streamed from disk, the one decode pass (corrupt files, mean) is cached per split...
    assert len(list((tmp_path / "c").glob("scan-*.npz"))) == 2
    # ... and redone when a file changes.
    (tmp_path / "train" / "dog" / "gray.JPEG").write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(ValueError, match="gray.JPEG"):
        data.load(str(tmp_path), batch_size=5, image_size=8, cache_dir=tmp_path / "c", cache_images=False)


def test_folder_corrupt_file_is_named_or_skipped_and_counted(tmp_path):
    _make_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(ValueError, match="corrupt or unreadable") as e:
        data.load(f"folder:{tmp_path}", batch_size=4, cache_dir=tmp_path / "c")
    assert str(bad) in str(e.value) and "--skip_corrupt" in str(e.value) and "\n" not in str(e.value)
    ds = data.load(f"folder:{tmp_path}", batch_size=4, cache_dir=tmp_path / "c", skip_corrupt=True)
    assert ds.skipped == {"train": 1} and ds.info.train_examples == 24
    assert next(iter(ds.train))[0].shape[0] == 4


def test_options_the_recipe_does_not_apply_are_refused_not_ignored(tmp_path):
    _make_folder(tmp_path)  # the imagenet recipe
    for option, flag in (({"cutout": 8}, "--cutout"), ({"translate": 0}, "--translate")):
        with pytest.raises(ValueError, match=flag):
            data.load(str(tmp_path), batch_size=4, cache_dir=tmp_path / "c", **option)
    with pytest.raises(ValueError, match="--color_augmentation"):
        data.load("digits", batch_size=4, color_augmentation=True)
    # --flip=none is applied: every crop of a left-to-right ramp still rises to the right.
    ramp = np.broadcast_to(np.linspace(0, 255, 24, dtype=np.float32)[None, :, None], (24, 24, 3))
    for path in tmp_path.glob("*/*/*.png"):
        _write_image(path, ramp.astype(np.uint8))
    ds = data.load(str(tmp_path), batch_size=24, image_size=16, flip="none", cache_dir=tmp_path / "c2")
    x = next(iter(ds.train))[0].numpy()
    assert np.all(x[:, :, -1].mean(axis=(1, 2)) > x[:, :, 0].mean(axis=(1, 2)))


def test_damaged_cache_files_are_recomputed(tmp_path):
    _make_folder(tmp_path / "pets")
    load = dict(batch_size=4, cache_dir=tmp_path / "c", cache_images=False)
    mean = data.load(str(tmp_path / "pets"), **load).info.mean
    caches = sorted((tmp_path / "c").glob("*.npz"))
    assert caches
    for damage in (b"", b"PK\x03\x04 cut", None):  # emptied, cut, not our arrays
        for path in caches:
            if damage is None:
                np.savez(path, other=np.zeros(1))
            else:
                path.write_bytes(damage)
        np.testing.assert_allclose(data.load(str(tmp_path / "pets"), **load).info.mean, mean)


def _orientations(batches, images: np.ndarray, mean: np.ndarray) -> dict[int, bool]:
    """{image index: shown mirrored} for translate=0 batches of `images` (the views are exact).

    Images equal to another one or to their own mirror are left out (their view is ambiguous).
    """
    centred = images.astype(np.float32) - mean
    views: dict[bytes, list] = {}
    for k, image in enumerate(centred):
        for mirrored, view in ((False, image), (True, np.ascontiguousarray(image[:, ::-1]))):
            views.setdefault(view.tobytes(), []).append((k, mirrored))
    seen = {}
    for x, _ in batches:
        for view in x.numpy():
            found = views[view.tobytes()]  # KeyError: not a view of a training image
            if len(found) == 1:
                seen[found[0][0]] = found[0][1]
    return seen


def test_alternating_flips_continue_their_alternation_when_a_run_resumes():
    # 1438 digits, 2 steps of 719 per epoch: a run resumed at step 4 begins epoch 2. In order:
    # a parallel map may otherwise hand out a batch of the next epoch first.
    load = dict(batch_size=719, translate=0, flip="alternating", deterministic=True)
    ds = data.load("digits", **load)
    images = registry.resolve("digits").train.images
    batches = list(ds.train.take(6))
    epochs = [_orientations(batches[e * 2 : e * 2 + 2], images, ds.info.mean) for e in range(3)]
    assert len(epochs[2]) > 0.9 * len(images)
    assert all(epochs[1][k] != epochs[2][k] for k in epochs[2])
    resumed_batches = list(data.load("digits", start_step=4, **load).train.take(2))
    resumed = _orientations(resumed_batches, images, ds.info.mean)
    assert resumed == epochs[2]  # the same orientation per image...
    assert not np.array_equal(resumed_batches[0][1], batches[4][1])  # ... in a new order


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("empty_class", "Empty class folder"),
        ("mismatched", "Classes differ between"),
        ("no_val", "No evaluation split"),
        ("no_train", "No 'train' split"),
        ("loose_images", "must sit in a class folder"),
        ("missing_root", "does not exist"),
    ],
)
def test_folder_layout_errors(tmp_path, breakage, message):
    root = tmp_path / "data"
    _make_folder(root, per_class=(2, 1), sizes=((8, 8),))
    if breakage == "empty_class":
        (root / "train" / "emu").mkdir()
        (root / "val" / "emu").mkdir()
    elif breakage == "mismatched":
        _write_image(root / "train" / "emu" / "0.png", np.zeros((8, 8, 3), np.uint8))
    elif breakage == "no_val":
        for p in sorted((root / "val").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (root / "val").rmdir()
    elif breakage == "no_train":
        root = root / "val"  # a split folder passed as the root
    elif breakage == "loose_images":
        _write_image(root / "train" / "stray.png", np.zeros((8, 8, 3), np.uint8))
    elif breakage == "missing_root":
        root = tmp_path / "nowhere"
    with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
        data.load(f"folder:{root}", batch_size=2, cache_dir=tmp_path / "c")
    if breakage == "mismatched":
        assert "emu" in str(e.value)
    if breakage == "no_train":
        assert "pass its parent" in str(e.value)


def test_folder_sharding_per_worker_is_disjoint_and_complete(tmp_path):
    _make_folder(tmp_path, per_class=(4, 5), sizes=((8, 8),))
    kw = dict(batch_size=2, eval_batch_size=4, image_size=8, cache_dir=tmp_path / "c", num_workers=2)
    shards = [data.load(str(tmp_path), worker_index=i, **kw) for i in range(2)]
    seen = [np.concatenate([x.numpy() for x, _ in s.test]) for s in shards]
    assert len(seen[0]) + len(seen[1]) == 15 and abs(len(seen[0]) - len(seen[1])) <= 1
    full = np.concatenate([x.numpy() for x, _ in data.load(str(tmp_path), **{**kw, "num_workers": 1}).test])
    key = lambda a: sorted(map(bytes, np.round(a, 3)))  # noqa: E731
    assert key(np.concatenate(seen)) == key(full)
    assert shards[0].steps_per_epoch == 12 // 2  # steps count global batches of the full split


def test_each_worker_draws_its_own_augmentations():
    # Cutout zeroes a square (the mean colour, 0 after its subtraction), seen where the mean is
    # not 0 (digits' borders are 0 in every image): its place at each batch position, per worker.
    kw = dict(batch_size=64, translate=0, cutout=8, flip="none", num_workers=2)
    shards = [data.load("digits", worker_index=i, **kw) for i in (0, 1)]
    varies = (shards[0].info.mean != 0).any(-1)
    squares = [(next(iter(s.train))[0].numpy() == 0).all(-1) & varies for s in shards]
    assert all(s.any(axis=(1, 2)).mean() > 0.9 for s in squares)
    same_place = [np.array_equal(a, b) for a, b in zip(*squares, strict=True)]
    assert np.mean(same_place) < 0.5  # the same seeds on both workers: 63 of 64


def test_a_validation_split_that_would_hold_out_nothing_is_refused(tmp_path):
    _make_folder(tmp_path, per_class=(4, 2), sizes=((8, 8),))
    with pytest.raises(ValueError, match="--validation_split .* no image"):
        data.load(str(tmp_path), batch_size=2, validation_split=True, cache_dir=tmp_path / "c")


# ------------------------------------------------------------------------------------------------
# TFDS names


def test_unknown_name_and_missing_tfds_data_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset 'cifar11'.*cifar10"):
        data.load("cifar11")
    with pytest.raises(FileNotFoundError) as e:
        data.load("cifar100", data_dir=str(tmp_path), download=False)
    assert "cifar100" in str(e.value) and str(tmp_path) in str(e.value) and "--nodownload" in str(e.value)
    # A size CIFAR cannot have is refused before the data is looked for (or downloaded).
    with pytest.raises(ValueError, match="image_size=64.*original 32x32"):
        data.load("cifar100", data_dir=str(tmp_path), download=False, image_size=64)
    with pytest.raises(FileNotFoundError) as e:
        data.load("imagenet2012", data_dir=str(tmp_path))  # a manual download: never fetched
    assert "ILSVRC2012_img_train.tar" in str(e.value)
    assert str(tmp_path / "downloads" / "manual") in str(e.value)
    with pytest.raises(FileNotFoundError, match="imagenette") as e:
        data.load("imagenette", data_dir=str(tmp_path / "tensorflow_datasets"), download=False)
    assert str(tmp_path / "imagenette") in str(e.value) and "--nodownload" in str(e.value)


@pytest.fixture(scope="module")
def cifar_cache(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("cifar_cache")


@pytest.mark.slow
def test_real_cifar10_sizes_shapes_and_mean(tfds_dir, cifar_cache):
    import tensorflow_datasets as tfds

    ds = data.load("cifar10", data_dir=str(tfds_dir), batch_size=128, cache_dir=cifar_cache)
    assert ds.info.num_classes == len(ds.info.class_names) == 10
    assert ds.info.recipe == data_info.CIFAR_RECIPE
    assert ds.info.train_examples == 50_000 and ds.test_examples == 10_000 and ds.validation is None
    assert ds.steps_per_epoch == 50_000 // 128
    x, y = next(iter(ds.train))
    assert x.shape == (128, 32, 32, 3) and x.dtype == tf.float32 and y.shape == (128,) and y.dtype == tf.int32
    assert (
        ds.train.options().experimental_distribute.auto_shard_policy
        == tf.data.experimental.AutoShardPolicy.OFF
    )
    images, labels = tfds.as_numpy(
        tfds.load(
            "cifar10",
            split="train",
            data_dir=str(tfds_dir),
            batch_size=-1,
            as_supervised=True,
            download=False,
        )
    )
    np.testing.assert_allclose(ds.info.mean, images.astype(np.float64).mean(axis=0), atol=1e-3)
    test_labels = np.concatenate([y.numpy() for _, y in ds.test])
    assert len(test_labels) == 10_000 and set(test_labels) == set(range(10))
    # The 45k/5k split: disjoint, stratified, the mean from the 45k only, a separate cache entry.
    split = data.load(
        "cifar10", data_dir=str(tfds_dir), validation_split=True, eval_batch_size=1000, cache_dir=cifar_cache
    )
    assert split.info.train_examples == 45_000 and split.validation_examples == 5_000
    train_idx, val_idx = splits.held_out_split(labels.astype(np.int32))
    np.testing.assert_allclose(split.info.mean, images[train_idx].astype(np.float64).mean(axis=0), atol=1e-3)
    val_labels = np.concatenate([y.numpy() for _, y in split.validation])
    np.testing.assert_array_equal(val_labels, labels[val_idx])
    first_val = next(iter(split.validation))[0].numpy()
    np.testing.assert_allclose(first_val, images[val_idx[:1000]] - split.info.mean, atol=1e-3)
    assert len(list(cifar_cache.glob("mean-*.npz"))) == 2


def test_cifar_mean_is_read_from_the_cache_and_order_is_seeded(tfds_dir, cifar_cache):
    ds = data.load("cifar10", data_dir=str(tfds_dir), cache_dir=cifar_cache)
    # Overwrite the cached mean: a load that reads the cache (instead of recomputing) returns it.
    (path,) = [p for p in cifar_cache.glob("mean-*.npz") if np.allclose(np.load(p)["mean"], ds.info.mean)]
    np.savez(path, mean=np.full((32, 32, 3), 7.0, np.float32))
    again = data.load("cifar10", data_dir=str(tfds_dir), cache_dir=cifar_cache, seed=0, deterministic=True)
    np.testing.assert_array_equal(again.info.mean, 7.0)
    same = data.load("cifar10", data_dir=str(tfds_dir), cache_dir=cifar_cache, seed=0, deterministic=True)
    other = data.load("cifar10", data_dir=str(tfds_dir), cache_dir=cifar_cache, seed=1, deterministic=True)
    a, b, c = (next(iter(d.train.skip(3))) for d in (again, same, other))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_cifar_under_mirrored_strategy_splits_global_batches_without_warnings(
    tfds_dir, cifar_cache, caplog, mirrored_strategy
):
    strategy = mirrored_strategy
    assert strategy.num_replicas_in_sync == 2
    ds = data.load("cifar10", data_dir=str(tfds_dir), batch_size=64, cache_dir=cifar_cache)
    with caplog.at_level(logging.WARNING):
        dist = iter(strategy.experimental_distribute_dataset(ds.train))
        x, y = next(dist)
        test_batch = next(iter(strategy.experimental_distribute_dataset(ds.test)))
    shards = strategy.experimental_local_results(x)
    assert [s.shape[0] for s in shards] == [32, 32]
    assert [s.shape[0] for s in strategy.experimental_local_results(test_batch[0])] == [32, 32]
    assert not [r for r in caplog.records if "shard" in r.getMessage().lower()]


@pytest.mark.slow
def test_real_imagenette_from_the_shared_folder(imagenette_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(tfds_source.DATA_ENV, str(imagenette_dir.parent))
    ds = data.load("imagenette", batch_size=32, cache_dir=tmp_path, verbose=False)
    assert ds.info.train_examples == 9469 and ds.test_examples == 3925 and ds.info.num_classes == 10
    assert ds.info.class_names[0] == "tench" and ds.info.image_size == 128 and ds.info.resize_size == 146
    assert ds.info.mean.shape == (3,)
    x, y = next(iter(ds.train))
    assert x.shape == (32, 128, 128, 3) and y.shape == (32,)
    x, y = next(iter(ds.test))
    assert x.shape == (32, 128, 128, 3) and set(y.numpy()) == {0}  # val is listed class by class


def test_streamed_tfds_split_as_used_for_imagenet2012(tfds_dir, cifar_cache):
    # imagenet2012 is too big for memory: its splits stream from TFDS with JPEG decoding in the
    # pipeline. The same code runs here on real CIFAR-10 records, with the ImageNet recipe at 24.
    import tensorflow_datasets as tfds

    split = tfds_source.streamed("cifar10", str(tfds_dir), "test[:300]", download=False)
    assert split.num_examples == 300
    info = data_info.DataInfo(
        "cifar10",
        data_info.IMAGENET_RECIPE,
        10,
        tuple("abcdefghij"),
        24,
        27,
        np.array(data_info.IMAGENET_MEAN),
        300,
    )
    recipe = recipes.ImagenetRecipe(DataConfig(color_augmentation=True), 24, True, "cifar10")
    train = recipe.train(split, info, 64, 0, 0, 1, 0)
    x, y = next(iter(train))
    assert x.shape == (64, 24, 24, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
    test = list(pipeline._eval_dataset(split, info, 128, 1, 0))
    _, labels = tfds.as_numpy(
        tfds.load("cifar10", split="test[:300]", data_dir=str(tfds_dir), batch_size=-1, as_supervised=True)
    )
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in test]), labels)
    assert test[0][0].shape == (128, 24, 24, 3)
    with pytest.raises(ValueError, match="image_size=64.*original 32x32"):
        data.load("cifar10", data_dir=str(tfds_dir), image_size=64, cache_dir=cifar_cache)


def test_an_extreme_aspect_ratio_is_cut_before_the_evaluation_view_scales_it_up():
    # A 1 x 100,000 strip (373 bytes as a PNG): scaling its short side to 55 first would make
    # 55 x 5,500,000 pixels (1.5 GB of float32); cut to 1 x 2 first, it stays small.
    from keras_resnet.data import views

    strip = tf.random.stateless_uniform([1, 1, 100_000, 3], seed=(1, 2), maxval=255.0)
    cut = views.center_crop_aspect(strip, views.MAX_ASPECT)
    assert cut.shape[1:] == (1, views.MAX_ASPECT, 3)
    np.testing.assert_array_equal(cut[0, 0], strip[0, 0, 49_999:50_001])
    # The same view as without the cut, shown where the uncut path is affordable (1 x 1,000).
    zero = np.zeros(3, np.float32)
    for image in (strip[:, :, :1000], tf.transpose(strip[:, :, :1000], [0, 2, 1, 3])):  # wide and tall
        uncut = views.center_crop(views.resize_shorter_side(image, 55), 48)
        np.testing.assert_allclose(views.imagenet_eval_view(image, 48, 55, zero), uncut, atol=0.01)
    assert views.imagenet_eval_view(strip, 48, 55, zero).shape == (1, 48, 48, 3)
