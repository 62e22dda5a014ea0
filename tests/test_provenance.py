"""Which data a run read: `data_sha256` in every summary and data info, and caches keyed by it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, image_folder, tiny

import keras_resnet as kr
from keras_resnet import data, serving, training
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
    it with its mean image inside, so raw pixels give the run's own probabilities; its record's test
    errors are what the shipped file scores; `kr.load` and the export answer the same; README's
    table row is the record's."""
    cfg = tiny(tmp_path / "run", dataset="cifar10", data_dir=str(tfds_dir), train_steps=4, eval_test=False)
    summary = training.run(cfg, verbose=0)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    ship = [sys.executable, REPO / "bench" / "ship_cifar10.py", cfg.run.model_dir, "--recipe", "train.py --x"]
    subprocess.run([*ship, "--weights_dir", tmp_path / "weights"], check=True, capture_output=True)
    assert pretrained.shipped_cifar10() == ["resnet8"]
    record = pretrained.cifar10_record("resnet8")
    assert (
        (record.data_sha256, record.steps, record.cpu) == (summary.data_sha256, 4, summary.cpu) != ("", 4, "")
    )
    assert (record.params, record.recipe, record.class_names[0]) == (
        summary.params,
        "train.py --x",
        "airplane",
    )
    shipped = kr.build_model("resnet8", weights="cifar10")
    ds = data.load("cifar10", data_dir=str(tfds_dir), eval_batch_size=64)
    examples = [ds.test_example(i) for i in range(ds.test_examples)]
    raw, labels = np.stack([x for x, _ in examples]), np.array([y for _, y in examples])
    probabilities = shipped.predict(raw, batch_size=500, verbose=0)
    assert record.test_error == round(float(np.mean(probabilities.argmax(-1) != labels)), 5)
    flipped = (probabilities + shipped.predict(raw[:, :, ::-1], batch_size=500, verbose=0)) / 2
    assert record.tta_test_error == round(float(np.mean(flipped.argmax(-1) != labels)), 5)
    trained = keras.saving.load_model(RunDir(cfg.run.model_dir).model, compile=False)
    views = next(iter(ds.test))[0]
    np.testing.assert_allclose(probabilities[:64], trained.predict(views, verbose=0), atol=1e-4)
    # kr.load of the shipped net and its TF Serving export: the same probabilities.
    classifier = kr.load("resnet8", weights="cifar10")
    assert classifier.class_names == record.class_names
    np.testing.assert_allclose(classifier.predict(raw[:64], verbose=0), probabilities[:64], atol=1e-4)
    path = serving.export_shipped("resnet8", tmp_path / "export")
    served = tf.saved_model.load(str(path)).signatures["predict_pixels_uint8"]
    out = served(pixels=tf.constant(raw[:64]))["probabilities"].numpy()
    np.testing.assert_allclose(out, probabilities[:64], atol=1e-4)
    # README's table, from the record.
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import models_table

    (line,) = [row for row in models_table.render().splitlines() if row.startswith("| `resnet8`")]
    assert f"| {100 * (1 - record.test_error):.2f}% | {100 * (1 - record.tta_test_error):.2f}% |" in line
    assert f"| {record.params:,} |" in line and record.data_sha256[:8] in line
