"""Shared test set-up: quiet TensorFlow with oneDNN on (as the commands start it), two logical CPUs,
where the real data lives, and the tiny run most tests share.

Training, export and tuning tests run on the embedded digits (real handwritten digits shipped in
scikit-learn's wheel), so they run on any machine. Tests of CIFAR-10 and imagenette read them in
place from `$KERAS_RESNET_DATA` (`.ci/run` points it at the CI's copy) and skip cleanly without it.
`pytest -m "not slow"` leaves out every test that starts a process or trains more than a few steps.
"""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # what `runtime.start_command` does for a command
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_resnet.config import TrainConfig  # noqa: E402
from keras_resnet.runtime import show_logs  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# The tiny run: ResNet-8 on the digits, 32 per batch, a checkpoint (and evaluation) every 10 steps.
TINY = dict(model="resnet8", dataset="digits", batch_size=32, eval_batch_size=1000, checkpoint_steps=10)
_EXIT_STATUS = pytest.StashKey[int]()
DATA_ROOT = pathlib.Path(os.environ["KERAS_RESNET_DATA"]) if os.environ.get("KERAS_RESNET_DATA") else None

# Logical devices must be configured before the first TensorFlow op: two CPU replicas let
# in-process tests take the MirroredStrategy path that a multi-GPU machine would.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
show_logs()  # the package's lines on stdout, as a command shows them (`runtime.start_command`)


def image_folder(root: pathlib.Path, value: int = 0, size: int = 12) -> None:
    """A two-class folder dataset of flat PNGs: ROOT/{train,val}/{a,b}/<i>.png, 4 and 2 per class,
    image i of each class filled with `value + i`."""
    import numpy as np

    for split, count in (("train", 4), ("val", 2)):
        for c in ("a", "b"):
            for i in range(count):
                path = root / split / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tf.io.encode_png(np.full((size, size, 3), value + i, np.uint8)).numpy())


def tiny(model_dir: str | os.PathLike, **changes) -> TrainConfig:
    """The tiny run's config in `model_dir`, with `changes` (flag names) on top."""
    return TrainConfig.of(**{**TINY, "model_dir": str(model_dir), **changes})


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
    from keras_resnet.training import distribution

    return distribution.make_strategy("mirrored")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(config, summary) of a finished 30-step tiny run, on 2 replicas, shared by the session.

    Tests that change its folder work on a copy (`shutil.copytree(cfg.run.model_dir, ...)`).
    """
    from keras_resnet import training

    cfg = tiny(tmp_path_factory.mktemp("tiny") / "run", train_steps=30)
    return cfg, training.run(cfg, verbose=0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """After the report: leave before pytest's final gc.collect() can block in a tf.data
    iterator's destructor (tensorflow#21277; see `workarounds.exit_before_finalization`)."""
    from keras_resnet import workarounds

    workarounds.exit_before_finalization(config.stash.get(_EXIT_STATUS, 1))
