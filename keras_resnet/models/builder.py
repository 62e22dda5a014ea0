"""`build_model`: a network of the paper built from its `specs` row, then given its weights.

As timm's builder: the network is constructed (`network`), then pretrained weights (`pretrained`)
load into it; weights that carry an input normalization put it right after the input. Every
refusal comes before any layer is built. `build_from_config` is the same for a run's `ModelConfig`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

import keras

from keras_resnet.models import network, pretrained, specs

if TYPE_CHECKING:
    from keras_resnet.config import ModelConfig


def build_model(
    name: str,
    *,
    shortcut: str | None = None,
    num_classes: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    include_top: bool = True,
    pooling: Literal["avg", "max"] | None = None,
    weight_decay: float = 1e-4,
    family: str | None = None,
    bottleneck_stride: Literal["1x1", "3x3"] = specs.BOTTLENECK_STRIDES[0],
    classifier_activation: str | None = "softmax",
    sync_bn: bool = False,
    fused_bn: bool = True,
    zero_init_residual: bool = False,
    padding: Literal["symmetric", "same"] = specs.PADDINGS[0],
    weights: str | os.PathLike | pretrained.Weights | None = None,
    bn_momentum: float = specs.BN_MOMENTUM,
    ghost_batch_size: int = 0,
) -> keras.Model:
    """Builds a residual or plain network of He et al. (2015).

    Args:
        name: `resnet<depth>` or `plain<depth>`; see `list_models()`. Depths 18/34/50/101/152 are
            the ImageNet nets of Table 1, any other 6n+2 depth a CIFAR net of section 4.2.
        shortcut: "A" (identity, zero-padded channels), "B" (projection where the shape changes)
            or "C" (projection everywhere); default A for CIFAR, B for ImageNet. Ignored by plain nets.
        num_classes: classifier width; default 10 (CIFAR) or 1000 (ImageNet).
        input_shape: (height, width, channels); default 32x32x3 or 224x224x3. Without the top,
            (None, None, 3) takes any size.
        include_top: end in the classifier (global average pool, fully connected, softmax); False
            ends in the last stage's feature map (`conv5_block3_out` for ResNet-50), or its
            pooled vector with `pooling`, as Keras Applications' backbones.
        pooling: without the top: "avg" (`avg_pool`) or "max" (`max_pool`) over the last feature
            map, or None for the map itself.
        weight_decay: SGD weight decay applied as an L2 penalty on kernels; 0 disables it.
        family: "cifar" or "imagenet" to override the family implied by the depth.
        bottleneck_stride: "1x1" puts a bottleneck's stride on its first 1x1 convolution as the
            paper does; "3x3" moves it to the 3x3 convolution ("ResNet v1.5" of other frameworks).
        classifier_activation: "softmax" (the paper) or None for logits.
        sync_bn: batch statistics over the global batch across replicas (TensorFlow only); by
            default each replica normalises its own share, as the paper's multi-GPU training did.
            Moving statistics are averaged across replicas either way.
        fused_bn: train batch norm with TensorFlow's fused kernel where it applies (see
            `keras_resnet.models.layers.BatchNormalization`); False keeps Keras' own computation.
        zero_init_residual: start the last BN scale of every residual block at 0, so that each
            block starts as its shortcut (not in the paper; plain nets are unaffected).
        padding: of the strided 3x3 and 7x7 convolutions and the stem's max pool: "symmetric"
            pads every side as the paper's nets do; "same" is TensorFlow's bottom-and-right
            padding (this package's before 0.3). Shapes and counts are the same.
        weights: None (random initialization); "imagenet" (Keras Applications' ResNet-50/101/152,
            fetched once into Keras' cache) or "cifar10" (the nets shipped here), both taking raw
            RGB pixels (0-255) with their input normalization inside; or the path of a
            `.weights.h5` file of a network built alike, loaded as it is. See `models.pretrained`.
        bn_momentum: of every batch norm's moving statistics, `moving <- m moving + (1 - m) batch`
            (Keras' convention; the default 0.9 is PyTorch's momentum 0.1, as Caffe-era nets used).
        ghost_batch_size: in training, every batch norm normalizes groups of this many examples of
            each replica's batch with their own statistics (ghost batch norm; it must divide the
            batch); 0: the whole share of the batch, as the paper. Inference is the same either way.

    Returns:
        A `keras.Model` named after the network.
    """
    spec = specs.get_spec(name, family)
    shortcut = specs.check_shortcut(shortcut or specs.DEFAULT_SHORTCUT[spec.family])
    num_classes = spec.default_num_classes if num_classes is None else num_classes
    options = network.Options.named(locals())
    network.check_arguments(options)
    # Before any layer is built: refusals and a missing download cost no graph.
    source = None
    if weights is not None:
        build = {"shortcut": shortcut, "bottleneck_stride": bottleneck_stride, "padding": padding}
        source = pretrained.resolve(weights, spec, build, include_top=include_top, num_classes=num_classes)
    model = network.build_network(spec, options, source.normalize if source is not None else None)
    if source is not None:
        source.load(model)
    return model


def from_keras_applications(model: keras.Model, **options) -> keras.Model:
    """This package's network computing what a Keras Applications ResNet computes, on raw pixels.

    The result is `build_model("resnet50" | "resnet101" | "resnet152", ...)` with `model`'s
    weights, its top (or none) and pooling, its input shape and classifier activation, and
    `keras.applications.resnet.preprocess_input` inside (an `InputNormalization` after the input):
    `converted.predict(images)` on RGB 0-255 images equals `model.predict(preprocess_input(images))`.
    How the weights convert: `pretrained.keras_applications_arguments`.

    Args:
        model: a `keras.applications` `ResNet50`, `ResNet101` or `ResNet152` (v1), any weights,
            with or without the top, any pooling.
        **options: `build_model`'s training arguments (`weight_decay`, `sync_bn`, `fused_bn`, ...);
            the architecture is `model`'s.

    Returns:
        The converted `keras.Model`.
    """
    return build_model(**pretrained.keras_applications_arguments(model), **options)


def build_from_config(
    config: ModelConfig,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    weight_decay: float,
    weights: str | os.PathLike | None = None,
) -> keras.Model:
    """The network of a run's `ModelConfig` (`--model`, `--shortcut`, ...), with `weights` as
    `build_model` takes them."""
    return build_model(
        config.name,
        shortcut=config.resolved_shortcut,
        num_classes=num_classes,
        input_shape=input_shape,
        weight_decay=weight_decay,
        family=config.family or None,
        bottleneck_stride=config.bottleneck_stride,
        sync_bn=config.sync_bn,
        fused_bn=config.fused_bn,
        zero_init_residual=config.zero_init_residual,
        padding=config.padding,
        weights=weights,
        bn_momentum=config.bn_momentum,
        ghost_batch_size=config.ghost_batch_size,
    )
