"""Shared test set-up: quiet TensorFlow, two logical CPUs, and where the real data lives.

Training, export and tuning tests run on the embedded digits (real handwritten digits shipped in
scikit-learn's wheel), so they run on any machine. Tests of CIFAR-10 and imagenette read them in
place from `$KERAS_RESNET_DATA` (`.ci/run` points it at the CI's copy) and skip cleanly without it.
"""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
_EXIT_STATUS = pytest.StashKey[int]()
DATA_ROOT = pathlib.Path(os.environ["KERAS_RESNET_DATA"]) if os.environ.get("KERAS_RESNET_DATA") else None

# Logical devices must be configured before the first TensorFlow op: two CPU replicas let
# in-process tests take the MirroredStrategy path that a multi-GPU machine would.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def _data(relative: str, marker: str, what: str) -> pathlib.Path:
    if DATA_ROOT is None:
        pytest.skip(f"{what}: set KERAS_RESNET_DATA to a folder holding {relative}/")
    path = DATA_ROOT / relative
    if not (path / marker).is_dir():
        pytest.skip(f"{what} not found under {path}")
    return path


@pytest.fixture(scope="session")
def tfds_dir() -> pathlib.Path:
    return _data("tensorflow_datasets", "cifar10", "real CIFAR-10")


@pytest.fixture(scope="session")
def imagenette_dir() -> pathlib.Path:
    return _data("imagenette", "train", "imagenette")


@pytest.fixture(scope="session")
def mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """A two-replica strategy through the package's own factory (which keeps the collective keys
    of several strategies in one process apart), shared by the tests that only need one."""
    from keras_resnet import distribute

    return distribute.make_strategy("mirrored")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """After the report: leave before pytest's final gc.collect() can block in a tf.data
    iterator's destructor (tensorflow#21277; see `workarounds.exit_before_finalization`)."""
    from keras_resnet import workarounds

    workarounds.exit_before_finalization(config.stash.get(_EXIT_STATUS, 1))
