"""Shared test set-up: quiet TensorFlow, two logical CPUs, and where the real data lives.

The real data (`../shared/data` beside the checkout, or `$KERAS_RESNET_DATA`) is read in place;
tests that need it skip cleanly where it is absent.
"""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_ROOT = pathlib.Path(os.environ.get("KERAS_RESNET_DATA", REPO.parent / "shared" / "data"))

# Logical devices must be configured before the first TensorFlow op: two CPU replicas let
# in-process tests take the MirroredStrategy path that a multi-GPU machine would.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
    return DATA_ROOT


@pytest.fixture(scope="session")
def tfds_dir() -> pathlib.Path:
    path = DATA_ROOT / "tensorflow_datasets"
    if not (path / "cifar10").is_dir():
        pytest.skip(f"real CIFAR-10 not found under {path} (set KERAS_RESNET_DATA)")
    return path


@pytest.fixture(scope="session")
def imagenette_dir() -> pathlib.Path:
    path = DATA_ROOT / "imagenette"
    if not (path / "train").is_dir():
        pytest.skip(f"imagenette not found under {path} (set KERAS_RESNET_DATA)")
    return path


@pytest.fixture(scope="session")
def mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """A two-replica strategy through the package's own factory (which keeps the collective keys
    of several strategies in one process apart), shared by the tests that only need one."""
    from keras_resnet import distribute

    return distribute.make_strategy("mirrored")
