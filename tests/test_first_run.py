"""A new user's first run: where data lives, downloads (never over the network here), the embedded
digits, and the README's quickstart end to end, offline."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from conftest import REPO
from tensorflow_datasets.core.download import downloader

from keras_resnet import data, training
from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.data import digits as digits_source
from keras_resnet.data import tfds as tfds_source
from keras_resnet.rundir import RunDir


def test_data_lives_where_tfds_expects_it_unless_told_otherwise(monkeypatch, tmp_path):
    monkeypatch.delenv(tfds_source.DATA_ENV, raising=False)
    monkeypatch.delenv(tfds_source.TFDS_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tfds_source.default_tfds_dir() == tmp_path / "home" / "tensorflow_datasets"  # TFDS's own default
    monkeypatch.setenv(tfds_source.TFDS_ENV, str(tmp_path / "tfds"))
    assert tfds_source.default_tfds_dir() == tmp_path / "tfds"
    monkeypatch.setenv(tfds_source.DATA_ENV, str(tmp_path / "shared"))  # this project's override
    assert tfds_source.default_tfds_dir() == tmp_path / "shared" / "tensorflow_datasets"
    # Nothing in the package points beside the repository (where only this project's CI keeps data).
    for path in (REPO / "keras_resnet").rglob("*.py"):
        text = path.read_text()
        # (parents[1] of a module is the checkout itself; parents[2] is beside it.)
        assert '"shared"' not in text and "../shared" not in text and "parents[2]" not in text, path


def _offline_run(tmp_path, **changes) -> TrainConfig:
    return TrainConfig.of(
        **{"dataset": "cifar100", "data_dir": str(tmp_path / "tfds"), "model_dir": str(tmp_path / "run")},
        train_steps=1,
        **changes,
    )


def test_download_reaches_tfds_and_a_failed_download_is_one_line(monkeypatch, tmp_path):
    """The download step is TFDS's own (its downloader opens the dataset's URL); here its network
    call is replaced by a connection failure, which must end the run in one line."""
    opened = []

    def no_network(url, **kwargs):
        opened.append(url)
        raise requests.exceptions.ConnectionError(f"Failed to resolve host of {url} (no network here)")

    monkeypatch.setattr(downloader, "_open_url", no_network)
    monkeypatch.setattr(tfds_source, "_reachable", lambda host, timeout=5.0: True)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        training.run(_offline_run(tmp_path))
    message = str(err.value)
    assert opened and all("cifar-100" in url for url in opened)  # TFDS tried to fetch CIFAR-100
    assert "\n" not in message and message.startswith("--dataset=cifar100: ")
    assert "failed" in message and str(tmp_path / "tfds") in message and "ConnectionError" in message
    assert time.perf_counter() - start < 60  # not TFDS's minutes of retries
    assert not (tmp_path / "run").exists()  # nothing half-made

    # --nodownload never reaches the downloader, and says which flag to drop.
    opened.clear()
    with pytest.raises(ConfigError, match=r"--nodownload forbids.*drop --nodownload") as err:
        training.run(_offline_run(tmp_path, download=False))
    assert not opened and "\n" not in str(err.value)


def test_unreachable_download_host_is_refused_before_tfds_retries(monkeypatch, tmp_path):
    def must_not_download(url, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(downloader, "_open_url", must_not_download)
    monkeypatch.setattr(tfds_source, "_reachable", lambda host, timeout=5.0: False)
    with pytest.raises(
        ConfigError, match=r"cifar100.*www\.cs\.toronto\.edu is unreachable.*--dataset=digits"
    ):
        training.run(_offline_run(tmp_path))
    # The probe itself: a closed port on the loopback answers at once.
    start = time.perf_counter()
    assert not tfds_source._reachable("127.0.0.1", timeout=2.0)
    assert time.perf_counter() - start < 5


@pytest.mark.slow
def test_nodownload_exits_1_with_one_line_in_seconds(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--dataset=cifar100", f"--data_dir={tmp_path / 'tfds'}"]
        + ["--nodownload", "--train_steps=10", f"--model_dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: --dataset=cifar100: "), proc.stderr
    assert str(tmp_path / "tfds") in lines[0] and "--nodownload" in lines[0]
    assert not run_dir.exists()


def test_digits_are_embedded_split_and_resized():
    ds = data.load("digits", batch_size=64)
    info = ds.info
    assert (info.name, info.num_classes, info.class_names) == ("digits", 10, tuple("0123456789"))
    assert (info.train_examples, ds.test_examples, info.image_size) == (1438, 359, 32)
    # A fixed, stratified 20% test split: every digit appears in both, in proportion.
    images, labels, test_idx = digits_source.digits_8x8()
    assert len(images) == 1797 and images.shape[1:] == (8, 8, 3) and images.max() == 255
    per_class = np.bincount(labels[test_idx], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(per_class - 0.2) < 0.01)
    image, label = ds.test_example(0)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and label == labels[test_idx[0]]
    x, y = next(iter(ds.train))
    assert x.shape == (64, 32, 32, 3) and y.shape == (64,)
    assert data.load("digits", batch_size=64, image_size=16).info.image_size == 16


@pytest.mark.slow
def test_quickstart_trains_exports_and_serves_offline(tmp_path):
    """The README's first command, on digits: exit 0, quiet, a served prediction, above chance; then
    the README's commands that use the run, as written, from the folder the first command ran in."""
    run_dir = tmp_path / "runs" / "quickstart"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"--flagfile={REPO / 'configs' / 'quickstart.cfg'}"]
        + [f"--model_dir={run_dir}", f"--export_dir={run_dir / 'export'}"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        # A new user's shell: TensorFlow's C++ log level is train.py's to set (conftest sets it here).
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert out[0].startswith("Training resnet20 (269,722 parameters"), out[0]
    assert "on digits (1,438 train / 359 test images, 10 classes, 16 px)" in out[0]
    assert any(line.startswith("the exported model predicts") for line in out)
    assert out[-1].startswith("done: test error")
    # Quiet: no CUDA probe, no library logs or warnings, nothing on stderr at all.
    assert proc.stderr.strip() == "", proc.stderr[-3000:]
    summary = RunDir(run_dir).read_summary()
    assert summary.test_error < 0.3  # chance is 0.9
    assert (run_dir / "export" / "1" / "saved_model.pb").is_file()

    readme = (REPO / "README.md").read_text()
    assert '"$PWD/runs/quickstart/export:/models/quickstart"' in readme  # the folder the first command wrote
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    commands = [
        line.split("  # ")[0]
        for line in readme.splitlines()
        if line.startswith(("python -c ", "python -m keras_resnet.predict --model_dir=runs/quickstart"))
    ]
    assert len(commands) == 3  # the samples, a file, a folder
    for command in commands:
        argv = [sys.executable, *shlex.split(command)[1:]]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    answers = [json.loads(line) for line in done.stdout.splitlines()]  # the folder's, --json
    assert [a["file"] for a in answers] == [f"samples/{i}.png" for i in range(5)]
    assert all(len(a["classes"]) == 5 for a in answers)
