"""The inference graph: every batch norm folded into the convolution before it.

In inference a batch norm is an affine map per channel, `gamma * (x - mean) / sqrt(var + eps) +
beta`, so after a convolution it folds into that convolution's kernel and a bias (the standard
inference fold): the network computes the same function with one op where it had a convolution
and four to six elementwise passes over its output. TensorFlow's grappler then fuses each
convolution with its bias, the residual addition and the ReLU into one oneDNN primitive.

`fold_batch_norm(model)` returns that network as a new Keras model (the same layer names, the
folded convolutions with a bias, a `layers.FoldedBatchNorm` where each folded BN was), in float32 whatever the
model's training precision. Batch norms that do not follow a convolution stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from keras_resnet.models.layers import FoldedBatchNorm


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """`model` for inference with each convolution's batch norm folded into it (see the module)."""
    pairs = _conv_bn_pairs(model)
    folded_bns = {bn.name for bn in pairs.values()}

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in folded_bns:
            return FoldedBatchNorm(name=layer.name)
        config = {**layer.get_config(), "dtype": "float32"}
        if layer.name in pairs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone)
    for original, new in zip(model.layers, folded.layers, strict=True):
        if original.name in folded_bns or not original.weights:
            continue
        if original.name in pairs:
            new.set_weights(_fold(original, pairs[original.name]))
        else:
            new.set_weights([np.asarray(w, np.float32) for w in original.get_weights()])
    return folded


def _conv_bn_pairs(model: keras.Model) -> dict[str, keras.layers.BatchNormalization]:
    """Each convolution of `model` whose only reader is a batch norm, by the convolution's name."""
    by_name = {layer.name: layer for layer in model.layers}
    readers: dict[str, list[keras.layers.Layer]] = {}
    for entry in model.get_config().get("layers", []):  # the functional graph, as Keras saves it
        for parent in set(_inputs(entry.get("inbound_nodes", []))):
            readers.setdefault(parent, []).append(by_name[entry["name"]])
    pairs = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"fold_batch_norm takes a flat network; {model.name} holds the model {layer.name}: "
                "fold that one, then wrap it."
            )
        below = readers.get(layer.name, [])
        if (
            isinstance(layer, keras.layers.Conv2D)
            and len(below) == 1
            and isinstance(below[0], keras.layers.BatchNormalization)
            and _per_channel(below[0])
        ):
            pairs[layer.name] = below[0]
    return pairs


def _inputs(value: Any) -> Iterator[str]:
    """The names of the layers whose outputs a saved call's arguments refer to (`keras_history`)."""
    if isinstance(value, dict):
        history = value.get("keras_history")
        if history:
            yield history[0]
        for item in value.values():
            yield from _inputs(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _inputs(item)


def _per_channel(bn: keras.layers.BatchNormalization) -> bool:
    return bn.axis in (-1, 3) or list(bn.axis) in ([-1], [3])


def _fold(conv: keras.layers.Conv2D, bn: keras.layers.BatchNormalization) -> list[np.ndarray]:
    """The kernel and bias of `conv` followed by `bn` in inference, computed in float64."""
    kernel = np.asarray(conv.kernel, np.float64)
    bias = np.asarray(conv.bias, np.float64) if conv.use_bias else np.zeros(kernel.shape[-1])
    ones, zeros = np.ones(kernel.shape[-1]), np.zeros(kernel.shape[-1])
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else ones
    beta = np.asarray(bn.beta, np.float64) if bn.center else zeros
    mean = np.asarray(bn.moving_mean, np.float64)
    scale = gamma / np.sqrt(np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
    return [(kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]
