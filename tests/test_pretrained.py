"""Pretrained weights: Keras Applications' ResNets converted exactly, ImageNet weights fetched as
keras.applications fetches them (never from the network here), the shipped CIFAR-10 mechanism, weight
files, and the input normalization the networks carry inside."""

from __future__ import annotations

import functools
import hashlib
import json
import urllib.error

import keras
import numpy as np
import pytest
from keras.applications import resnet as applications

import keras_resnet as kr
from keras_resnet.models import pretrained
from keras_resnet.models.layers import InputNormalization

# keras.applications' published weights (keras/src/applications/resnet.py): where, and the md5 of
# ResNet-50's file with the top.
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
RESNET50_MD5 = "2cb95161c43110f7111970584f804107"
# The conversion does not depend on the image size: 64 px keeps ResNet-101 affordable on a CPU.
SIZE = 64
TOLERANCE = 1e-4  # absolute, on probabilities


def numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def images(seed: int, size: int = SIZE, n: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def keras_outputs(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """keras.applications' way: `preprocess_input` first (it writes into its argument)."""
    return numpy(model(applications.preprocess_input(x.copy()), training=False))


def one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message
    # No chained traceback: raised afresh, or `from None` inside an `except`.
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return message


def randomise(model: keras.Model, x: np.ndarray, seed: int, prepare=None) -> None:
    """Random conv biases, BN statistics, scales and offsets (else the fold is not tested), at a
    scale that keeps the activations finite and the probabilities far from one-hot. `prepare`
    makes `model`'s input of images `x`: keras.applications' `preprocess_input` by default."""
    rng = np.random.default_rng(seed)
    prepare = prepare or (lambda images: applications.preprocess_input(images.copy()))
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            layer.bias.assign(rng.normal(0, 0.5, layer.bias.shape).astype("float32"))
    # Moving statistics near the real ones (one training-mode pass, momentum 0), then perturbed.
    for layer in bns:
        layer.momentum = 0.0
    model(prepare(x), training=True)
    for layer in bns:
        n = layer.gamma.shape
        variance = numpy(layer.moving_variance)
        mean = numpy(layer.moving_mean) + rng.normal(0, 0.3, n) * np.sqrt(variance)
        layer.moving_mean.assign(mean.astype("float32"))
        layer.moving_variance.assign((variance * rng.uniform(0.5, 2.0, n)).astype("float32"))
        layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
        layer.beta.assign(rng.normal(0, 0.3, n).astype("float32"))
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if dense:  # logits with a standard deviation of about 3
        pool = keras.Model(model.input, model.get_layer("avg_pool").output)
        features = numpy(pool(prepare(x)))
        scale = 3 / (np.sqrt(features.shape[1]) * features.std())
        dense[0].kernel.assign(rng.normal(0, scale, dense[0].kernel.shape).astype("float32"))
        dense[0].bias.assign(rng.normal(0, 1, dense[0].bias.shape).astype("float32"))


@functools.cache
def converted(name: str, include_top: bool, pooling: str | None) -> tuple[keras.Model, keras.Model]:
    """(keras.applications' `name` with random weights and statistics, its conversion)."""
    theirs = getattr(keras.applications, name)(
        weights=None, include_top=include_top, pooling=pooling, input_shape=(SIZE, SIZE, 3)
    )
    randomise(theirs, images(0), seed=1)
    return theirs, kr.from_keras_applications(theirs)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- the layer


def test_input_normalization_reverses_subtracts_and_round_trips():
    x = images(2, size=4)
    caffe = InputNormalization(pretrained.CAFFE_MEAN_BGR, reverse_channels=True)
    np.testing.assert_allclose(numpy(caffe(x)), applications.preprocess_input(x.copy()), atol=1e-5)
    mean_image = np.random.default_rng(3).uniform(0, 255, (4, 4, 3))
    np.testing.assert_allclose(numpy(InputNormalization(mean_image)(x)), x - mean_image, atol=1e-4)
    config = caffe.get_config()
    assert config["mean"] == list(pretrained.CAFFE_MEAN_BGR) and config["reverse_channels"] is True
    again = InputNormalization.from_config(json.loads(json.dumps(config)))
    np.testing.assert_array_equal(numpy(again(x)), numpy(caffe(x)))
    with pytest.raises(ValueError, match="does not fit"):
        InputNormalization(mean_image)(images(2, size=8))


# ----------------------------------------------------------------------------- conversion


@pytest.mark.parametrize(
    ("name", "include_top", "pooling"),
    [
        pytest.param("ResNet50", True, None, id="resnet50-top"),
        pytest.param("ResNet50", False, None, id="resnet50-notop"),
        pytest.param("ResNet101", True, None, id="resnet101-top", marks=pytest.mark.slow),
        pytest.param("ResNet101", False, "avg", id="resnet101-notop-avg", marks=pytest.mark.slow),
    ],
)
def test_conversion_computes_what_keras_applications_computes(name, include_top, pooling):
    theirs, ours = converted(name, include_top, pooling)
    assert ours.name == name.lower() and ours.layers[1].name == "input_normalization"
    assert ours.output_shape == theirs.output_shape
    x = images(4)
    expected, got = keras_outputs(theirs, x), numpy(ours(x, training=False))
    if include_top:
        assert expected.max() > 0.1  # far from uniform (0.001) and from one-hot: a sharp comparison
        assert np.abs(got - expected).max() <= TOLERANCE
    else:
        # The features to float32 rounding, and the probabilities of one random classifier on them.
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
        pooled = (lambda f: f.mean(axis=(1, 2))) if pooling is None else (lambda f: f)
        head = np.random.default_rng(5).normal(0, 3 / np.abs(pooled(expected)).std() / 45, (2048, 1000))
        p_expected, p_got = softmax(pooled(expected) @ head), softmax(pooled(got) @ head)
        assert p_expected.max() > 0.1 and np.abs(p_got - p_expected).max() <= TOLERANCE


def test_backbone_shapes_at_224():
    assert kr.build_model("resnet50", include_top=False).output_shape == (None, 7, 7, 2048)
    assert kr.build_model("resnet50", include_top=False, pooling="avg").output_shape == (None, 2048)
    theirs = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg")
    assert kr.from_keras_applications(theirs).output_shape == (None, 2048)


def test_converted_model_saves_and_loads_with_safe_mode(tmp_path):
    theirs, ours = converted("ResNet50", True, None)
    ours.save(tmp_path / "resnet50.keras")
    loaded = keras.saving.load_model(tmp_path / "resnet50.keras", safe_mode=True)
    x = images(6)
    np.testing.assert_allclose(numpy(loaded(x)), keras_outputs(theirs, x), atol=TOLERANCE)
    assert isinstance(loaded.get_layer("input_normalization"), InputNormalization)


def test_conversion_refuses_other_networks():
    v2 = keras.applications.ResNet50V2(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    with pytest.raises(pretrained.WeightsMismatchError, match="not a Keras Applications ResNet"):
        kr.from_keras_applications(v2)


# ----------------------------------------------------------------------------- ImageNet weights


@pytest.fixture
def offline(monkeypatch, tmp_path) -> dict[str, list]:
    """Keras' cache in `tmp_path` and no network: the download inside `keras.utils.get_file` fails
    as it fails offline; the calls to both are recorded."""
    calls: dict[str, list] = {"get_file": [], "download": []}
    real_get_file = keras.utils.get_file

    def get_file(*args, **kwargs):
        calls["get_file"].append((args, kwargs))
        return real_get_file(*args, **kwargs)

    def urlretrieve(url, *args, **kwargs):
        calls["download"].append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", get_file)
    # get_file's own reference to urllib's urlretrieve: the network boundary.
    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", urlretrieve)
    return calls


def test_imagenet_offline_without_cached_file_says_where_to_put_it(offline, tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        kr.build_model("resnet50", weights="imagenet")
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, pretrained.WeightsNotFoundError)
    message = one_line(caught.value)
    fname = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    assert fname in message and f"{tmp_path / 'models'}/" in message
    assert "weights=None" in message and "--weights=" in message and "md5" not in message
    # keras.applications' own file, URL and hash.
    assert offline["download"] == [KERAS_WEIGHTS_URL + fname]
    ((args, kwargs),) = offline["get_file"]
    assert args[0] == fname and kwargs["file_hash"] == RESNET50_MD5


def test_imagenet_offline_with_a_stale_cached_file_says_so(offline, tmp_path):
    fname = "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / fname).write_bytes(b"an interrupted download")
    with pytest.raises(pretrained.WeightsNotFoundError) as caught:
        kr.build_model("resnet101", weights="imagenet", include_top=False)
    message = one_line(caught.value)
    assert fname in message and "md5" in message and "weights=None" in message
    assert offline["download"] == [KERAS_WEIGHTS_URL + fname]  # it tried again


@pytest.mark.slow
def test_imagenet_from_the_cache_without_download(offline, tmp_path, monkeypatch):
    # A stand-in for Keras' notop ResNet-50 file: random weights, in the cache under its name, and
    # its md5 as Keras' hash for it.
    theirs = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    randomise(theirs, images(0), seed=7)
    path = tmp_path / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    path.parent.mkdir()
    theirs.save(path)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    from keras.src.applications import resnet as keras_table  # where keras.applications keeps its hashes

    monkeypatch.setitem(keras_table.WEIGHTS_HASHES, "resnet50", (RESNET50_MD5, md5))
    ours = kr.build_model(
        "resnet50", weights="imagenet", include_top=False, pooling="avg", input_shape=(SIZE, SIZE, 3)
    )
    assert offline["download"] == [] and len(offline["get_file"]) == 1
    x = images(8)
    expected = keras_outputs(theirs, x).mean(axis=(1, 2))
    got = numpy(ours(x, training=False))
    assert ours.output_shape == (None, 2048)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "resnet50", "num_classes": 10}, "1000 classes, not num_classes=10"),
        ({"name": "resnet18"}, "not for resnet18"),
        ({"name": "resnet50", "shortcut": "C"}, "shortcut='B', not shortcut='C'"),
        ({"name": "resnet50", "padding": "same"}, "padding='symmetric', not padding='same'"),
    ],
)
def test_imagenet_refusals_are_one_line_and_download_nothing(offline, kwargs, match):
    with pytest.raises(ValueError, match=match) as caught:
        kr.build_model(weights="imagenet", **kwargs)
    one_line(caught.value)
    assert offline["get_file"] == []


# ----------------------------------------------------------------------------- CIFAR-10 and files


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> tuple[keras.Model, np.ndarray]:
    """A fake shipped net (ResNet-8, random weights and statistics) in a tmp weights folder."""
    reference = kr.build_model("resnet8")
    rng = np.random.default_rng(9)
    for variable in reference.weights:
        noise = rng.normal(0, 0.3, variable.shape)
        value = np.abs(noise) + 0.5 if "variance" in variable.path else noise
        variable.assign(value.astype("float32"))
    mean = rng.uniform(0, 255, (32, 32, 3)).astype("float32")
    reference.save_weights(tmp_path / "resnet8_cifar10.weights.h5")
    record = {"mean": mean.tolist(), "test_error": 0.5, "data_sha256": "0" * 64}
    (tmp_path / "resnet8_cifar10.json").write_text(json.dumps(record))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    return reference, mean


def test_cifar10_weights_take_raw_pixels_and_save(shipped, tmp_path):
    reference, mean = shipped
    assert pretrained.shipped_cifar10() == ["resnet8"]
    model = kr.build_model("resnet8", weights="cifar10")
    x = images(10, size=32)
    expected = numpy(reference(x - mean, training=False))
    np.testing.assert_allclose(numpy(model(x, training=False)), expected, atol=1e-5)
    model.save(tmp_path / "resnet8.keras")
    loaded = keras.saving.load_model(tmp_path / "resnet8.keras", safe_mode=True)
    np.testing.assert_allclose(numpy(loaded(x, training=False)), expected, atol=1e-5)
    backbone = kr.build_model("resnet8", weights="cifar10", include_top=False, pooling="avg")
    features = keras.Model(reference.input, reference.get_layer("avg_pool").output)
    np.testing.assert_allclose(numpy(backbone(x)), numpy(features(x - mean)), atol=1e-5)


def test_cifar10_refusals_name_the_shipped_nets(shipped, tmp_path, monkeypatch):
    with pytest.raises(pretrained.WeightsNotFoundError) as caught:
        kr.build_model("resnet20", weights="cifar10")
    assert "shipped: resnet8" in one_line(caught.value) and "weights=None" in str(caught.value)
    with pytest.raises(ValueError, match="shortcut='A', not shortcut='B'") as caught:
        kr.build_model("resnet8", weights="cifar10", shortcut="B")
    with pytest.raises(ValueError, match="10 classes, not num_classes=100"):
        kr.build_model("resnet8", weights="cifar10", num_classes=100)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="none is shipped yet"):
        kr.build_model("resnet8", weights="cifar10")


def test_weights_file_loads_as_saved(shipped, tmp_path):
    reference, _ = shipped
    path = tmp_path / "resnet8_cifar10.weights.h5"
    model = kr.build_model("resnet8", weights=str(path))
    assert not any(isinstance(layer, InputNormalization) for layer in model.layers)
    x = images(11, size=32) - 128
    np.testing.assert_allclose(numpy(model(x)), numpy(reference(x)), atol=1e-5)
    with pytest.raises(pretrained.WeightsMismatchError, match="does not load into resnet14") as caught:
        kr.build_model("resnet14", weights=path)
    one_line(caught.value)
    with pytest.raises(FileNotFoundError, match="No weights file"):
        kr.build_model("resnet8", weights=tmp_path / "missing.weights.h5")
    with pytest.raises(ValueError, match="expected None, 'imagenet', 'cifar10'"):
        kr.build_model("resnet8", weights="imagnet")
