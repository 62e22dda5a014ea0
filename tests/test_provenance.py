"""Which data a run read: `data_sha256` in every summary and data info, and caches keyed by it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import REPO, image_folder, tiny

import keras_resnet as kr
from keras_resnet import data, training
from keras_resnet.data import digits, splits
from keras_resnet.data.info import DataInfo
from keras_resnet.models import pretrained
from keras_resnet.rundir import RunDir


def test_every_run_records_the_fingerprint_of_its_training_data(tiny_run):
    cfg, summary = tiny_run
    # The embedded digits are arrays, not files: their bytes are hashed.
    assert summary.data_sha256 == splits.array_fingerprint(*digits._digits_images(8))
    run = RunDir(cfg.run.model_dir)
    assert json.loads(run.summary.read_text())["data_sha256"] == summary.data_sha256
    assert DataInfo.load(run.path).data_sha256 == summary.data_sha256  # exported with the model


def test_cifar10_fingerprint_is_its_train_files_sha256_and_keys_the_mean_cache(tfds_dir, tmp_path):
    ds = data.load("cifar10", data_dir=str(tfds_dir), cache_dir=tmp_path / "cache")
    (train_file,) = (tfds_dir / "cifar10" / "3.0.2").glob("cifar10-train.tfrecord*")
    assert ds.info.data_sha256 == hashlib.sha256(train_file.read_bytes()).hexdigest()[:16]
    (key,) = (tmp_path / "cache").glob("mean-*.json")
    assert json.loads(key.read_text())["data_sha256"] == ds.info.data_sha256


def test_a_changed_folder_at_the_same_path_never_meets_its_stale_cache(tmp_path):
    root, cache = tmp_path / "images", tmp_path / "cache"
    image_folder(root, value=10)
    first = data.load(f"folder:{root}", batch_size=2, image_size=8, cache_dir=cache, cache_images=False)
    image_folder(root, value=200, size=16)  # the same files, other pixels and sizes
    second = data.load(f"folder:{root}", batch_size=2, image_size=8, cache_dir=cache, cache_images=False)
    assert first.info.data_sha256 != second.info.data_sha256
    np.testing.assert_allclose(first.info.mean, 11.5)  # (10 + 11 + 12 + 13) / 4, per channel
    np.testing.assert_allclose(second.info.mean, 201.5)
    # Listed by names and sizes: the fingerprint of the same folder read again does not move.
    again = data.load(f"folder:{root}", batch_size=2, image_size=8, cache_dir=cache, cache_images=False)
    assert again.info.data_sha256 == second.info.data_sha256


@pytest.mark.slow
def test_a_shipped_cifar10_net_takes_raw_pixels_and_answers_as_the_run_did(tfds_dir, tmp_path, monkeypatch):
    """A short real CIFAR-10 run shipped with `bench/ship_cifar10.py`: `weights="cifar10"` builds
    it with its mean image inside, so raw pixels give the run's own probabilities."""
    cfg = tiny(tmp_path / "run", dataset="cifar10", data_dir=str(tfds_dir), train_steps=4, eval_test=False)
    summary = training.run(cfg, verbose=0)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    ship = [sys.executable, REPO / "bench" / "ship_cifar10.py", cfg.run.model_dir]
    subprocess.run([*ship, "--weights_dir", tmp_path / "weights"], check=True, capture_output=True)
    assert pretrained.shipped_cifar10() == ["resnet8"]
    record = pretrained.cifar10_record("resnet8")
    assert record["data_sha256"] == summary.data_sha256 and record["steps"] == 4
    shipped = kr.build_model("resnet8", weights="cifar10")
    ds = data.load("cifar10", data_dir=str(tfds_dir), eval_batch_size=64)
    raw = np.stack([ds.test_example(i)[0] for i in range(64)])
    trained = keras.saving.load_model(RunDir(cfg.run.model_dir).model, compile=False)
    views = next(iter(ds.test))[0]
    np.testing.assert_allclose(shipped.predict(raw, verbose=0), trained.predict(views, verbose=0), atol=1e-4)
