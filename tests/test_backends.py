"""The models on every Keras backend: `build_model` (a CIFAR and an ImageNet net, with and without
the top, each pooling), weights from a file, the shipped CIFAR-10 mechanism and Keras Applications'
ImageNet weights (converted, from Keras' cache), and `count`, under KERAS_BACKEND=jax and torch,
give what they give on TensorFlow.

TensorFlow (this process) builds each net with random weights and statistics, saves them and its
outputs on the same images; a process on the other backend builds the same nets from those files and
writes its outputs and counts beside them (`on_backend`, this module's other entry point). A backend
that is not installed is skipped: jax is the `backends` extra (CI installs it), torch's CPU build the
`bench` extra. Training, data, export and serving stay TensorFlow's; `sync_bn=True` (tf.distribute's)
is refused elsewhere in one line naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from test_pretrained import images, randomise

TESTS = pathlib.Path(__file__).resolve().parent
SIZE = 64  # the ImageNet nets' input here: the computation does not depend on it, the time does
# Keras Applications' name for ResNet-50's notop file, and the md5 Keras knows it by (replaced).
IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
# Relative to the largest output: float32 convolutions summed in another order, 50 layers deep
# (measured here: 5.4e-6 at most on jax, 5.0e-6 on torch).
TOLERANCE = 1e-4
EXTRAS = {"jax": "backends", "torch": "bench"}  # pyproject.toml's extras that install them


@dataclasses.dataclass(frozen=True)
class Case:
    """One net: `build_model`'s arguments besides the weights, which weights, and its input."""

    name: str
    build: dict
    weights: str  # "file" (this case's .weights.h5), "cifar10" or "imagenet"
    size: int
    views: bool = False  # also test-time augmentation, and a training-mode pass (batch statistics)


CASES = (
    Case("resnet8_top", {"name": "resnet8"}, "file", 32, views=True),
    Case("resnet8_map", {"name": "resnet8", "include_top": False}, "file", 32),
    Case("plain8_avg", {"name": "plain8", "include_top": False, "pooling": "avg"}, "file", 32),
    Case("resnet18_max", {"name": "resnet18", "include_top": False, "pooling": "max"}, "file", SIZE),
    Case("resnet18_top", {"name": "resnet18", "num_classes": 10}, "file", SIZE),
    Case("resnet8_cifar10", {"name": "resnet8"}, "cifar10", 32),
    Case("resnet50_imagenet", {"name": "resnet50", "include_top": False, "pooling": "avg"}, "imagenet", SIZE),
)


def _build(case: Case, folder: pathlib.Path):
    import keras_resnet as kr

    weights = str(folder / f"{case.name}.weights.h5") if case.weights == "file" else case.weights
    input_shape = (case.size, case.size, 3)
    return kr.build_model(**case.build, input_shape=input_shape, weights=weights)


def _outputs(case: Case, model, x: np.ndarray) -> np.ndarray:
    """`model`'s outputs on `x`; with `case.views`, stacked with its test-time-augmented outputs and a
    training-mode pass (TensorFlow's fused batch norm there, Keras' own elsewhere), in that order."""
    import keras

    import keras_resnet as kr

    outputs = [model(x)]
    if case.views:
        outputs.append(kr.with_test_time_augmentation(model, "flip_translate")(x))
        outputs.append(model(x, training=True))  # last: it moves the statistics
    return np.stack([keras.ops.convert_to_numpy(y) for y in outputs])


def _counts(model) -> list:
    """`kr.count(model)` as JSON gives it back (shapes as lists, None as null)."""
    import keras_resnet as kr

    return json.loads(json.dumps([dataclasses.astuple(row) for row in kr.count(model).layers]))


def _use_stand_ins(folder: pathlib.Path, patch: pytest.MonkeyPatch) -> None:
    """Points the shipped CIFAR-10 weights and Keras' cache (its md5 of the ImageNet file too) at `folder`."""
    from keras.src.applications import resnet as keras_table  # where keras.applications keeps its hashes

    from keras_resnet.models import pretrained

    patch.setattr(pretrained, "WEIGHTS_DIR", folder / "shipped")
    patch.setenv("KERAS_HOME", str(folder / "keras"))
    md5 = hashlib.md5((folder / "keras" / "models" / IMAGENET_FILE).read_bytes()).hexdigest()
    patch.setitem(keras_table.WEIGHTS_HASHES, "resnet50", (keras_table.WEIGHTS_HASHES["resnet50"][0], md5))


def on_backend(folder: str) -> None:
    """The other process: each case built from `folder`'s weights, its outputs and counts written there."""
    import keras

    folder = pathlib.Path(folder)
    _use_stand_ins(folder, pytest.MonkeyPatch())
    report = {"backend": keras.backend.backend()}
    for case in CASES:
        model = _build(case, folder)
        x = np.load(folder / f"{case.name}.x.npy")
        np.save(folder / f"{case.name}.{report['backend']}.npy", _outputs(case, model, x))
        report[case.name] = _counts(model)
    report["tensorflow_imported"] = "tensorflow" in sys.modules
    try:
        _build(dataclasses.replace(CASES[0], build={"name": "resnet8", "sync_bn": True}), folder)
        report["sync_bn"] = "built"
    except ValueError as err:
        report["sync_bn"] = str(err)
    (folder / f"{report['backend']}.json").write_text(json.dumps(report))


def _digits(n: int) -> np.ndarray:
    """`n` real digits from the test split, 8x8 enlarged to 32x32 (each pixel 4x4)."""
    from keras_resnet.data.digits import digits_8x8

    images, _, test = digits_8x8()
    return np.repeat(np.repeat(images[test[:n]], 4, axis=1), 4, axis=2).astype("float32")


def _imagenet_stand_in(folder: pathlib.Path) -> None:
    """Keras Applications' ResNet-50 (notop) with random weights and realistic statistics, saved
    where Keras' cache keeps the ImageNet file (`KERAS_HOME=folder/keras`)."""
    import keras

    theirs = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    randomise(theirs, images(0), seed=7)
    path = folder / "keras" / "models" / IMAGENET_FILE
    path.parent.mkdir(parents=True)
    theirs.save(path)


def _save_random_weights(case: Case, folder: pathlib.Path, x: np.ndarray, seed: int) -> None:
    """`case`'s net with random weights and realistic statistics on `x`, saved where `case.weights`
    says (for "cifar10", with a random mean image, as the shipped nets are kept)."""
    import keras_resnet as kr

    reference = kr.build_model(**case.build, input_shape=(case.size, case.size, 3))
    if case.weights == "file":
        randomise(reference, x, seed, prepare=lambda v: v)
        reference.save_weights(folder / f"{case.name}.weights.h5")
        return
    mean = np.random.default_rng(seed).uniform(0, 255, (case.size, case.size, 3)).astype("float32")
    randomise(reference, x, seed, prepare=lambda v: v - mean)
    name = case.build["name"]
    reference.save_weights(folder / "shipped" / f"{name}_cifar10.weights.h5")
    record = {"mean": mean.tolist(), "test_error": 0.5, "data_sha256": "0" * 64}
    (folder / "shipped" / f"{name}_cifar10.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def on_tensorflow(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """(the folder of weights, inputs and TensorFlow's outputs; TensorFlow's counts by case)."""
    folder = tmp_path_factory.mktemp("backends")
    _imagenet_stand_in(folder)
    (folder / "shipped").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        _use_stand_ins(folder, patch)
        counts = {}
        for seed, case in enumerate(CASES):
            x = _digits(4) if case.size == 32 else images(seed, size=SIZE)
            np.save(folder / f"{case.name}.x.npy", x)
            if case.weights != "imagenet":
                _save_random_weights(case, folder, x, seed)
            model = _build(case, folder)
            np.save(folder / f"{case.name}.tensorflow.npy", _outputs(case, model, x))
            counts[case.name] = _counts(model)
    return folder, counts


def _installed(backend: str):
    """`backend` as a test parameter, skipped before TensorFlow's side is built where it is not installed."""
    absent = importlib.util.find_spec(backend) is None
    reason = f"{backend} is not installed: pip install -e '.[{EXTRAS[backend]}]'"
    return pytest.param(backend, marks=pytest.mark.skipif(absent, reason=reason))


@pytest.mark.slow
@pytest.mark.parametrize("backend", [_installed(backend) for backend in sorted(EXTRAS)])
def test_models_compute_the_same_on_every_backend(backend, on_tensorflow):
    folder, counts = on_tensorflow
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
    }
    code = f"import test_backends; test_backends.on_backend({str(folder)!r})"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((folder / f"{backend}.json").read_text())
    # Building and running the nets needs no TensorFlow (Keras itself may import it elsewhere).
    assert report["backend"] == backend and not report["tensorflow_imported"]
    for case in CASES:
        expected = np.load(folder / f"{case.name}.tensorflow.npy")
        got = np.load(folder / f"{case.name}.{backend}.npy")
        assert got.shape == expected.shape, case.name
        error = np.abs(got - expected).max() / np.abs(expected).max()
        assert error <= TOLERANCE, (case.name, error)
        if case.build.get("include_top", True):  # probabilities: the same classes
            np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1), err_msg=case.name)
        assert report[case.name] == counts[case.name], case.name
    assert "sync_bn" in report["sync_bn"]  # refused, naming the argument the user gave
