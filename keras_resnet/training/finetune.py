"""Starting a run from trained weights (`--weights`) and keeping stages fixed (`--freeze`).

`--weights` is `imagenet` (Keras Applications' ResNet-50/101/152, the paper's own MSRA models,
converted), `cifar10` (a net this package ships), a finished run's `--model_dir`, or a `.keras` /
`.weights.h5` file. Every layer of the new network takes the source's weights by name; the
classifier (`fc`) is new where the dataset's classes differ. A source that carries its input
normalization (`imagenet`, `cifar10`; a run: its training mean) keeps it inside the new network,
which then takes raw pixels (`raw_pixels`): the data pipeline subtracts nothing. A `.weights.h5`
file loads as it is into the same architecture.

`--freeze=conv1,conv2` keeps those stages (by the paper's names: `conv1` is the stem) as they
are: not trained, their batch norm in inference mode (the Keras fine-tuning convention). A run
resumed from its checkpoints does not load the source again.
"""

from __future__ import annotations

import functools
import logging
import pathlib

import keras
import numpy as np

from keras_resnet import models
from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.data.info import DataInfo
from keras_resnet.models import pretrained
from keras_resnet.rundir import RunDir

log = logging.getLogger(__name__)

NORMALIZATION = "input_normalization"  # the layer `pretrained.Weights.normalize` adds
CLASSIFIER = "fc"


def raw_pixels(cfg: TrainConfig) -> bool:
    """Whether the network of `cfg` carries its input normalization (the pipeline subtracts none)."""
    return _normalization(cfg, None) is not None


def weights_for(cfg: TrainConfig, info: DataInfo, resuming: bool) -> pretrained.Weights | str | None:
    """What `models.build_model(weights=...)` takes for --weights: None without, the file for a
    `.weights.h5`, else `Weights` that copy the source's layers by name (nothing when `resuming`:
    the checkpoint holds the weights) and carry its normalization."""
    flag = cfg.model.weights
    if not flag:
        return None
    if flag.endswith(".weights.h5"):
        return flag
    normalization = _normalization(cfg, info)
    mean, reverse = normalization if normalization else (None, False)
    load = _nothing if resuming else functools.partial(_copy_by_name, _source(cfg, info), flag)
    return pretrained.Weights(load, mean, reverse)


def _nothing(model: keras.Model) -> None:
    del model


def _normalization(cfg: TrainConfig, info: DataInfo | None) -> tuple[np.ndarray, bool] | None:
    """(mean, reverse_channels) of the source's input normalization, or None (a file without one)."""
    flag = cfg.model.weights
    if not flag or flag.endswith(".weights.h5"):
        return None
    if flag == pretrained.IMAGENET:
        return np.asarray(pretrained.CAFFE_MEAN_BGR, np.float32), True
    if flag == pretrained.CIFAR10:
        return pretrained.cifar10_record(cfg.model.name).mean, False
    run = RunDir(flag)
    if run.model.is_file():  # a run of this package: its training mean, which its pipeline subtracted
        mean = DataInfo.load(run.path).mean
        if info is not None and mean.shape not in ((3,), (info.image_size, info.image_size, 3)):
            mean = mean.reshape(-1, 3).mean(axis=0)  # a mean image of another size: its colour
        return np.asarray(mean, np.float32), False
    layer = _normalization_layer(keras.saving.load_model(flag, compile=False))
    return (np.asarray(layer.mean, np.float32), layer.reverse_channels) if layer else None


def _normalization_layer(model: keras.Model):
    found = [layer for layer in model.layers if layer.name == NORMALIZATION]
    return found[0] if found else None


def _source(cfg: TrainConfig, info: DataInfo) -> keras.Model:
    """The network the weights come from, as trained (its own classifier)."""
    flag, m = cfg.model.weights, cfg.model
    if flag in (pretrained.IMAGENET, pretrained.CIFAR10):
        return models.build_model(
            m.name,
            weights=flag,
            shortcut=m.resolved_shortcut,
            family=m.family or None,
            bottleneck_stride=m.bottleneck_stride,
            padding=m.padding,
            input_shape=(info.image_size, info.image_size, 3),
        )
    path = RunDir(flag).model if RunDir(flag).model.is_file() else pathlib.Path(flag)
    return keras.saving.load_model(path, compile=False)


def _copy_by_name(source: keras.Model, flag: str, target: keras.Model) -> None:
    """Every weighted layer of `target` from `source`'s layer of the same name and shapes; the
    classifier stays new where the class counts differ."""
    theirs = {layer.name: layer for layer in source.layers}
    new = []
    for layer in target.layers:
        if not layer.weights:
            continue
        src = theirs.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if src is not None and [tuple(w.shape) for w in src.weights] == shapes:
            layer.set_weights(src.get_weights())
        elif layer.name == CLASSIFIER:
            new.append(layer.name)
        else:
            raise ConfigError(
                f"--weights={flag}: its network has no layer {layer.name} of shapes {shapes} "
                f"({'none of that name' if src is None else [tuple(w.shape) for w in src.weights]}): "
                "give --model (and --shortcut, --family) of the network it holds."
            )
    classes = target.output_shape[-1]
    detail = f"; a new classifier for {classes} classes" if new else ""
    log.info(f"--weights={flag}: every layer copied from {source.name}{detail}")


def stage_names(spec) -> tuple[str, ...]:
    """The paper's names of a network's stages: conv1 (the stem), conv2, ... (Table 1)."""
    return tuple(f"conv{i + 1}" for i in range(len(spec.stages) + 1))


def freeze(model: keras.Model, stages: tuple[str, ...]) -> list[str]:
    """Marks the layers of `stages` not trainable (their BN then normalizes in inference mode);
    returns the names of the frozen layers with weights."""
    if not stages:
        return []
    frozen = []
    for layer in model.layers:
        stage = layer.name.split("_")[0]
        if stage in stages or (stage == "pool1" and "conv1" in stages):
            layer.trainable = False
            if layer.weights:
                frozen.append(layer.name)
    return frozen
