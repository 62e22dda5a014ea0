"""Pretrained weights: where `build_model(weights=...)` gets them, and how they get into a network.

Below `builder`, which loads these into a network once `network` has built it (as timm does).

- "imagenet": Keras Applications' ResNet-50/101/152 ImageNet weights, fetched by Keras' own
  `keras.utils.get_file` with `keras.applications`' file names, URLs and md5 hashes (so into the
  same cache, ~/.keras/models, and only once), loaded into Keras' ResNet and converted as
  `builder.from_keras_applications` converts (`keras_applications_arguments`).
- "cifar10": the CIFAR-10 nets this package ships in `keras_resnet/models/weights/`:
  `<name>_cifar10.weights.h5` and `<name>_cifar10.json` (the mean image the net was trained
  with, its test error, the training data's `data_sha256`; see that folder's README).
- the path of a `.weights.h5` file (`model.save_weights`) of a network built with the same
  arguments, loaded as it is.

The first two take raw RGB pixels (0-255) and carry their input normalization inside, as an
`InputNormalization` layer right after the input. Every failure is one line: a
`WeightsNotFoundError` (a `FileNotFoundError` and a `ValueError`) when weights are missing or
cannot be fetched, a `WeightsMismatchError` (a `ValueError`) when they do not fit the network
asked for.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_resnet.models import specs
from keras_resnet.models.layers import InputNormalization

IMAGENET = "imagenet"
CIFAR10 = "cifar10"
# `keras.applications.resnet.preprocess_input` ("caffe"): RGB -> BGR, then the ImageNet mean in
# BGR order subtracted, no scaling.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
KERAS_APPLICATIONS = {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152"}
# How Keras Applications builds its ResNets, in `build_model`'s terms (checked layer by layer
# when converting): projections only where the shape changes, the stride on the first 1x1.
_IMAGENET_BUILD = {"shortcut": "B", "bottleneck_stride": "1x1", "padding": "symmetric"}
# How the shipped CIFAR-10 nets are built unless their record's "build" says otherwise.
CIFAR_BUILD = {"shortcut": "A", "padding": "symmetric"}
# CIFAR-10's labels in TFDS' order (`cifar10` dataset info), which the shipped nets' outputs follow.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The shipped weights. Module-level and read at every call, so that tests can point it elsewhere.
WEIGHTS_DIR = pathlib.Path(__file__).resolve().with_name("weights")
_CIFAR_WEIGHTS, _CIFAR_RECORD = "_cifar10.weights.h5", "_cifar10.json"
_WITHOUT = "weights=None (for train.py: a --weights= other than imagenet)"

# Keras Applications' layer names that differ from ours. Its classifier is a Dense named
# `predictions` with the softmax inside (keras-applications 1.0 called it `probs`); ours is the
# Dense `fc` followed by an Activation `predictions`.
_OUR_NAMES = {"pool1_pool": "pool1", "predictions": "fc", "probs": "fc"}


class WeightsNotFoundError(FileNotFoundError, ValueError):
    """Weights that are not there and cannot be fetched; the message says where they go."""


class WeightsMismatchError(ValueError):
    """Weights that do not fit the network asked for."""


@dataclasses.dataclass(frozen=True)
class Weights:
    """What `build_model(weights=...)` puts into a network: the weights and the input normalization.

    Attributes:
        load: puts them into a built network (raises a one-line error when they do not fit).
        mean: the `InputNormalization` mean the network carries after its input; None for none.
        reverse_channels: that normalization reverses RGB to BGR first.
    """

    load: Callable[[keras.Model], None]
    mean: np.ndarray | tuple[float, ...] | None = None
    reverse_channels: bool = False

    def normalize(self, inputs):
        """`inputs` through the input normalization these weights were trained with, if any."""
        if self.mean is None:
            return inputs
        return InputNormalization(self.mean, self.reverse_channels, name="input_normalization")(inputs)


def resolve(
    weights: str | os.PathLike | Weights,
    spec: specs.ModelSpec,
    build: dict[str, str],
    *,
    include_top: bool,
    num_classes: int,
) -> Weights:
    """The `Weights` that `build_model(weights=...)` loads into the network of `spec` built with
    `build` (its shortcut, bottleneck_stride and padding) and these arguments; refused in one line,
    before any layer is built, when they cannot go in."""
    if isinstance(weights, Weights):
        return weights
    if weights == IMAGENET:
        return _imagenet(spec, build, include_top, num_classes)
    if weights == CIFAR10:
        return _cifar10(spec, build, include_top, num_classes)
    if isinstance(weights, (str, os.PathLike)) and str(weights).endswith(".weights.h5"):
        path = pathlib.Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"No weights file {path}: give the path of one, or build without: {_WITHOUT}."
            )
        return Weights(functools.partial(_load_file, path))
    raise WeightsMismatchError(
        f"weights={weights!r}: expected None, '{IMAGENET}', '{CIFAR10}' or the path of a .weights.h5 "
        "file (model.save_weights)."
    )


# ----------------------------------------------------------------------------- ImageNet


def _imagenet(spec: specs.ModelSpec, build: dict, include_top: bool, num_classes: int) -> Weights:
    if spec.family != specs.IMAGENET or spec.name not in KERAS_APPLICATIONS:
        raise WeightsMismatchError(
            f"weights='imagenet' exist for {', '.join(KERAS_APPLICATIONS)} (Keras Applications' "
            f"ResNets), not for {spec.name}{'' if spec.family == specs.IMAGENET else ' on CIFAR'}."
        )
    _check_build("Keras Applications' ImageNet weights", _IMAGENET_BUILD, build)
    if include_top and num_classes != 1000:
        # As keras.applications refuses it: the top's weights are ImageNet's 1000 classes.
        raise WeightsMismatchError(
            f"weights='imagenet' with include_top=True has ImageNet's 1000 classes, not "
            f"num_classes={num_classes}: for another classifier, build with include_top=False and add it."
        )
    path = imagenet_file(spec.name, include_top)
    return Weights(
        functools.partial(_load_keras_applications, spec.name, include_top, path),
        CAFFE_MEAN_BGR,
        reverse_channels=True,
    )


def imagenet_file(name: str, include_top: bool = True) -> str:
    """The local path of Keras Applications' ImageNet weights of `name` ("resnet50", ...), fetched
    as `keras.applications` fetches them: same file, URL, md5 hash and cache; no download when the
    cache holds the file with the right hash. The one place this package downloads weights."""
    # Keras' own table, so that the file and its hash cannot drift from keras.applications'; not
    # in Keras' public API (keras.applications.resnet exports the models only).
    from keras.src.applications import resnet as applications

    fname = f"{name}_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
    file_hash = applications.WEIGHTS_HASHES[name][0 if include_top else 1]
    origin = applications.BASE_WEIGHTS_PATH + fname
    cache_dir = keras_cache_dir()
    target = _cache_target(cache_dir, fname)
    stale = target.exists()  # then get_file found it with another hash, or it would not fail
    try:
        return keras.utils.get_file(
            fname, origin, cache_subdir="models", file_hash=file_hash, cache_dir=cache_dir
        )
    except Exception as err:  # get_file raises a bare Exception when the fetch fails
        found = f"; the copy there failed its md5 check ({file_hash})" if stale else ""
        reason = " ".join(str(err).split()).replace(f" on {origin}", "")  # the URL comes next
        raise WeightsNotFoundError(
            f"Cannot fetch {fname} ({reason}){found}: put it in {target.parent}/ (from {origin}), "
            f"or build without it: {_WITHOUT}."
        ) from None


def keras_cache_dir() -> str:
    """Keras' cache, where `get_file` keeps `models/`: $KERAS_HOME, else ~/.keras (or /tmp/.keras
    when home is read-only). Read at every call, so that a KERAS_HOME set after Keras' import counts."""
    from keras.src.backend import config  # Keras' resolution of its home; not public either

    return os.environ.get("KERAS_HOME") or config.keras_home()


def _cache_target(cache_dir: str, fname: str) -> pathlib.Path:
    """Where `keras.utils.get_file(fname, cache_subdir="models", cache_dir=cache_dir)` keeps the file."""
    base = os.path.expanduser(cache_dir)
    if not os.access(base, os.W_OK):  # as get_file does: an unwritable cache moves to /tmp/.keras
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return pathlib.Path(base, "models", fname)


def _load_keras_applications(name: str, include_top: bool, path: str, target: keras.Model) -> None:
    source = getattr(keras.applications, KERAS_APPLICATIONS[name])(weights=path, include_top=include_top)
    _transfer(source, target)


# ----------------------------------------------------------------------------- conversion


def keras_applications_arguments(model: keras.Model) -> dict[str, Any]:
    """`build_model`'s arguments for the network computing what the Keras Applications ResNet
    `model` computes (`builder.from_keras_applications`), its weights included.

    Keras Applications keeps a bias in every convolution before its BN; it is folded into the BN
    (moving mean minus bias), and the moving variance absorbs the epsilons' difference (theirs
    1.001e-5, ours 1e-5), both in float64, so the two networks differ by float32 rounding only.
    """
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    last = model.layers[-1]
    pooling = None
    if not dense and isinstance(last, keras.layers.GlobalAveragePooling2D):
        pooling = "avg"
    elif not dense and isinstance(last, keras.layers.GlobalMaxPooling2D):
        pooling = "max"
    return {
        "name": _identify(model),
        "include_top": bool(dense),
        "pooling": pooling,
        "num_classes": dense[0].units if dense else None,
        "input_shape": tuple(model.input_shape[1:]),
        "classifier_activation": _activation(dense[0]) if dense else None,
        "weights": Weights(functools.partial(_transfer, model), CAFFE_MEAN_BGR, reverse_channels=True),
    }


def _identify(model: keras.Model) -> str:
    """`model`'s name here ("resnet50", ...), from its blocks per stage."""
    names = {layer.name for layer in model.layers}
    refusal = f"{model.name} is not a Keras Applications ResNet50/101/152 (v1, channels last)"
    if "conv1_bn" not in names or "post_bn" in names or model.input_shape[-1] != 3:
        raise WeightsMismatchError(refusal + ": from_keras_applications converts those only.")
    repeats = [sum(f"conv{s}_block{b}_out" in names for b in range(1, 100)) for s in range(2, 6)]
    for name in KERAS_APPLICATIONS:
        spec = specs.get_spec(name)
        if repeats == [r for _, _, r in spec.stages]:
            return name
    raise WeightsMismatchError(f"{refusal}: its stages have {repeats} blocks.")


def _activation(dense: keras.layers.Dense) -> str | Callable | None:
    if dense.activation is keras.activations.linear:
        return None
    name = keras.activations.serialize(dense.activation)
    return name if isinstance(name, str) else dense.activation


def _signature(layer: keras.layers.Layer) -> tuple:
    """What two layers must share to compute the same function of the same weights."""
    if isinstance(layer, keras.layers.Conv2D):
        # A 1x1 window pads nothing either way ("valid" there, "same" here).
        padding = layer.padding if max(layer.kernel_size) > 1 else None
        return (layer.filters, tuple(layer.kernel_size), tuple(layer.strides), padding, layer.groups)
    if isinstance(layer, keras.layers.ZeroPadding2D):
        return tuple(map(tuple, layer.padding))
    if isinstance(layer, keras.layers.MaxPooling2D):
        return (tuple(layer.pool_size), tuple(layer.strides), layer.padding)
    if isinstance(layer, keras.layers.Dense):
        return (layer.units,)
    return ()


def _transfer(source: keras.Model, target: keras.Model) -> None:
    """Copies a Keras Applications ResNet's weights into `target`, after checking that every one of
    its layers has a counterpart of the same kind and shape there."""
    ours = {layer.name: layer for layer in target.layers}
    filled = set()
    for theirs in source.layers:
        if isinstance(theirs, keras.layers.InputLayer):
            continue
        mine = ours.get(_OUR_NAMES.get(theirs.name, theirs.name))
        if mine is None or not isinstance(mine, type(theirs)) or _signature(mine) != _signature(theirs):
            raise WeightsMismatchError(
                f"{source.name}'s layer {theirs.name} ({type(theirs).__name__} {_signature(theirs)}) "
                f"has no counterpart in {target.name}: not a network build_model makes."
            )
        if isinstance(theirs, keras.layers.BatchNormalization):
            _fold(source.get_layer(theirs.name.removesuffix("_bn") + "_conv"), theirs, mine)
        elif isinstance(theirs, keras.layers.Conv2D):
            mine.kernel.assign(theirs.kernel)  # its bias goes into the BN
        elif isinstance(theirs, keras.layers.Dense):
            mine.kernel.assign(theirs.kernel)
            mine.bias.assign(theirs.bias)
        elif theirs.weights:
            raise WeightsMismatchError(
                f"{source.name}'s layer {theirs.name} has weights this conversion ignores."
            )
        filled.add(mine.name)
    missed = sorted(layer.name for layer in target.layers if layer.weights and layer.name not in filled)
    if missed:
        raise WeightsMismatchError(f"{source.name} has no weights for {target.name}'s {', '.join(missed)}.")


def _fold(conv: keras.layers.Conv2D, theirs, mine) -> None:
    """BN(conv(x) + b) with epsilon e' equals BN(conv(x)) with moving mean m - b and moving
    variance v + e' - e under epsilon e: the bias and the epsilons' difference go into the statistics."""
    value = keras.ops.convert_to_numpy
    mean = value(theirs.moving_mean).astype(np.float64)
    if conv.use_bias:
        mean -= value(conv.bias)
    variance = value(theirs.moving_variance).astype(np.float64) + theirs.epsilon - mine.epsilon
    if np.any(variance < 0):
        raise WeightsMismatchError(f"{theirs.name}: a moving variance below {mine.epsilon - theirs.epsilon}.")
    pairs = ((mine.gamma, value(theirs.gamma)), (mine.beta, value(theirs.beta)))
    for variable, new in (*pairs, (mine.moving_mean, mean), (mine.moving_variance, variance)):
        variable.assign(np.asarray(new, dtype=variable.dtype))


# ----------------------------------------------------------------------------- CIFAR-10 and files


def cifar10_files(
    name: str, weights_dir: str | os.PathLike | None = None
) -> tuple[pathlib.Path, pathlib.Path]:
    """(weights, record): where `name`'s shipped CIFAR-10 weights and their record are kept."""
    folder = pathlib.Path(weights_dir or WEIGHTS_DIR)
    return folder / (name + _CIFAR_WEIGHTS), folder / (name + _CIFAR_RECORD)


def shipped_cifar10(weights_dir: str | os.PathLike | None = None) -> list[str]:
    """The networks whose CIFAR-10 weights this package ships (`build_model(name, weights="cifar10")`)."""
    folder = pathlib.Path(weights_dir or WEIGHTS_DIR)
    found = folder.glob("*" + _CIFAR_WEIGHTS) if folder.is_dir() else ()
    names = (path.name.removesuffix(_CIFAR_WEIGHTS) for path in found)
    return sorted(name for name in names if cifar10_files(name, folder)[1].is_file())


@dataclasses.dataclass(frozen=True)
class Cifar10Record:
    """What is shipped beside a net's CIFAR-10 weights (`<name>_cifar10.json`; its folder's README).

    Errors are fractions of the 10,000 test images, measured when the net was shipped, from raw
    pixels through `build_model(name, weights="cifar10")`: `test_error` single-view, `tta_test_error`
    the mean over the image and its mirror. Records shipped before those fields hold the run's own
    test error and None.
    """

    name: str
    weights: pathlib.Path
    mean: np.ndarray  # the float32 mean image the net was trained with, subtracted from 0-255 pixels
    test_error: float
    data_sha256: str
    steps: int = 0
    build: dict[str, str] = dataclasses.field(default_factory=dict)  # non-default build_model arguments
    tta_test_error: float | None = None
    class_names: tuple[str, ...] = CIFAR10_CLASSES
    train_examples: int = 50_000
    recipe: str = ""  # the command that trained it: a config file and flags
    wall_time_s: float = 0.0  # the training run's
    cpu: str = ""  # the training run's
    precision: str = ""
    params: int = 0
    macs: int = 0

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["name"], d["weights"]  # the file names say them
        d["mean"] = np.asarray(self.mean, np.float32).round(4).tolist()
        d["class_names"] = list(self.class_names)
        return {k: v for k, v in d.items() if v not in (None, {}, "")}

    @classmethod
    def from_json(cls, name: str, weights: pathlib.Path, d: dict[str, Any]) -> Cifar10Record:
        fields = {f.name for f in dataclasses.fields(cls)} - {"name", "weights"}
        known = {k: v for k, v in d.items() if k in fields}
        known["mean"] = np.asarray(d["mean"], np.float32)
        known["class_names"] = tuple(d.get("class_names", CIFAR10_CLASSES))
        return cls(name=name, weights=weights, **known)


def cifar10_record(name: str, weights_dir: str | os.PathLike | None = None) -> Cifar10Record:
    """The record shipped beside `name`'s CIFAR-10 weights; one line when there is none."""
    shipped = shipped_cifar10(weights_dir)
    if name not in shipped:
        listed = f"shipped: {', '.join(shipped)}" if shipped else "none is shipped yet"
        raise WeightsNotFoundError(
            f"No CIFAR-10 weights are shipped for {name} ({listed}); to build it without: {_WITHOUT}."
        )
    weights, path = cifar10_files(name, weights_dir)
    try:
        return Cifar10Record.from_json(name, weights, json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as err:
        raise WeightsMismatchError(
            f"{path} is not a CIFAR-10 weights record ({type(err).__name__}: {str(err)[:80]})."
        ) from None


def _cifar10(spec: specs.ModelSpec, build: dict, include_top: bool, num_classes: int) -> Weights:
    if spec.family != specs.CIFAR:
        raise WeightsMismatchError(
            f"weights='cifar10' are for the CIFAR nets; {spec.name} is an ImageNet net."
        )
    record = cifar10_record(spec.name)
    expected = {**CIFAR_BUILD, **record.build}
    expected.pop("bottleneck_stride", None)  # the CIFAR nets have no bottleneck
    if not spec.residual:
        expected.pop("shortcut", None)  # plain nets have none
    _check_build(f"The shipped CIFAR-10 weights of {spec.name}", expected, build)
    if include_top and num_classes != len(CIFAR10_CLASSES):
        raise WeightsMismatchError(
            f"weights='cifar10' with include_top=True has CIFAR-10's 10 classes, not "
            f"num_classes={num_classes}: for another classifier, build with include_top=False and add it."
        )
    return Weights(functools.partial(_load_file, record.weights), record.mean)


def _load_file(path: pathlib.Path, model: keras.Model) -> None:
    # A file of another architecture makes Keras warn once per unmatched layer group before it
    # raises: held back, so that the refusal stays one line; shown when the load succeeds.
    with warnings.catch_warnings(record=True) as held:
        try:
            model.load_weights(path)
        except (ValueError, OSError) as err:  # Keras' mismatch report spans lines; h5py's unreadable file
            detail = " ".join(str(err).split())
            raise WeightsMismatchError(
                f"{path} does not load into {model.name} as built ({detail[:300]}): build it with "
                "the arguments of the network that saved it."
            ) from None
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _check_build(what: str, expected: dict, given: dict) -> None:
    wrong = {key: value for key, value in expected.items() if given.get(key) != value}
    if wrong:
        asked = ", ".join(f"{key}={given.get(key)!r}" for key in wrong)
        needed = ", ".join(f"{key}={value!r}" for key, value in wrong.items())
        raise WeightsMismatchError(f"{what} are for {needed}, not {asked}.")
