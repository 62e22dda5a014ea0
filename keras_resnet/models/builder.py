"""Functional-API builder for every network of the paper, residual or plain.

Layer names follow Keras Applications and the paper's Table 1: `conv1` is the stem, stages are
`conv2` .. `conv5` (CIFAR: `conv2` .. `conv4`), e.g. `conv4_block6_2_bn` is the second BN of the
sixth block of the third stage; `_0_` marks the shortcut branch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

import keras

from keras_resnet import workarounds
from keras_resnet.models import specs
from keras_resnet.models.layers import BatchNormalization, ZeroPadShortcut

if TYPE_CHECKING:
    from keras_resnet.config import ModelConfig
    from keras_resnet.models.pretrained import Weights

BN_MOMENTUM = 0.9  # PyTorch's 0.1 in Keras' convention; Caffe-era implementations use the same.
BN_EPSILON = 1e-5


class _Factory:
    """The layer choices shared by every block: He init, no conv bias before BN, L2 on kernels."""

    def __init__(
        self,
        weight_decay: float,
        sync_bn: bool,
        fused_bn: bool,
        zero_init_residual: bool = False,
        padding: str = "symmetric",
        bn_momentum: float = BN_MOMENTUM,
        ghost_batch_size: int = 0,
    ):
        self.sync_bn, self.fused_bn, self.zero_init_residual = sync_bn, fused_bn, zero_init_residual
        self.padding, self.bn_momentum, self.ghost_batch_size = padding, bn_momentum, ghost_batch_size
        # SGD's weight decay `wd` is the gradient of (wd / 2) * ||w||^2, and Keras' L2(l) adds
        # l * ||w||^2, hence the half.
        self.regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
        # He et al. 2015 ("Delving deep into rectifiers"): zero-mean Gaussian, std sqrt(2/fan_in).
        self.initializer = keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")

    def pad(self, x, kernel: int, strides: int, name: str):
        """`x` padded for a strided `kernel` window, and the window's own padding argument.

        TensorFlow's "same" pads an even input of a stride-2 window at the bottom and right only,
        so a 3x3 window centres on pixel (2i+1, 2j+1) while the shortcut reads (2i, 2j). The
        paper's nets (Caffe, Torch) pad (k - 1) / 2 on every side: both read (2i, 2j). The output
        shapes are the same either way.
        """
        if self.padding == "same" or strides == 1 or kernel == 1:
            return x, "same"
        return keras.layers.ZeroPadding2D((kernel - 1) // 2, name=name)(x), "valid"

    def conv(self, x, filters: int, kernel: int, strides: int, name: str):
        x, padding = self.pad(x, kernel, strides, name.removesuffix("_conv") + "_pad")
        return keras.layers.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding=padding,
            use_bias=False,
            kernel_initializer=self.initializer,
            kernel_regularizer=self.regularizer,
            name=name,
        )(x)

    def conv_bn(
        self,
        x,
        filters: int,
        kernel: int,
        strides: int,
        name: str,
        relu: bool = True,
        zero_gamma: bool = False,
    ):
        x = self.conv(x, filters, kernel, strides, name + "_conv")
        x = BatchNormalization(
            momentum=self.bn_momentum,
            epsilon=BN_EPSILON,
            synchronized=self.sync_bn,
            fused=self.fused_bn,
            ghost_batch_size=self.ghost_batch_size,
            gamma_initializer="zeros" if zero_gamma else "ones",
            name=name + "_bn",
        )(x)
        return keras.layers.Activation("relu", name=name + "_relu")(x) if relu else x

    def shortcut(self, x, filters: int, strides: int, option: str, name: str):
        """Options A/B/C of section 3.3 for a block whose output has `filters` channels."""
        same_shape = strides == 1 and x.shape[-1] == filters
        if option == "C" or (option == "B" and not same_shape):
            return self.conv_bn(x, filters, 1, strides, name + "_0", relu=False)
        if same_shape:
            return x
        return ZeroPadShortcut(filters, strides, name=name + "_0_pad")(x)

    def block(
        self,
        x,
        block: str,
        filters: int,
        strides: int,
        residual: bool,
        shortcut: str,
        bottleneck_stride: str,
        name: str,
    ):
        """One residual (or plain) block: basic (two 3x3) or bottleneck (1x1, 3x3, 1x1)."""
        # Zero-initialising the last BN scale (Goyal et al., 2017) makes a residual block start as
        # its shortcut; a plain block would start as zero, so plain nets never get it.
        zero = self.zero_init_residual and residual
        if block == specs.BASIC:
            out_filters = filters
            y = self.conv_bn(x, filters, 3, strides, name + "_1")
            y = self.conv_bn(y, filters, 3, 1, name + "_2", relu=False, zero_gamma=zero)
        else:
            out_filters = filters * specs.BOTTLENECK_EXPANSION
            s1, s3 = (strides, 1) if bottleneck_stride == "1x1" else (1, strides)
            y = self.conv_bn(x, filters, 1, s1, name + "_1")
            y = self.conv_bn(y, filters, 3, s3, name + "_2")
            y = self.conv_bn(y, out_filters, 1, 1, name + "_3", relu=False, zero_gamma=zero)
        if residual:
            y = keras.layers.Add(name=name + "_add")(
                [self.shortcut(x, out_filters, strides, shortcut, name), y]
            )
        return keras.layers.Activation("relu", name=name + "_out")(y)


POOLINGS = (None, "avg", "max")


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
    bottleneck_stride: Literal["1x1", "3x3"] = "1x1",
    classifier_activation: str | None = "softmax",
    sync_bn: bool = False,
    fused_bn: bool = True,
    zero_init_residual: bool = False,
    padding: Literal["symmetric", "same"] = "symmetric",
    weights: str | os.PathLike | Weights | None = None,
    bn_momentum: float = BN_MOMENTUM,
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
        sync_bn: compute batch statistics over the global batch across replicas (TensorFlow
            only); by default each replica normalises with its own share of the batch, as the
            paper's multi-GPU training did. Moving statistics are averaged across replicas either way.
        fused_bn: train batch norm with TensorFlow's fused kernel where it applies (see
            `keras_resnet.models.layers.BatchNormalization`); False keeps Keras' own computation.
        zero_init_residual: start the last BN scale of every residual block at 0, so that each
            block starts as its shortcut (not in the paper; plain nets are unaffected).
        padding: of the strided 3x3 and 7x7 convolutions and the stem's max pool: "symmetric"
            pads every side as the paper's nets (and Keras Applications' stem) do; "same" is
            TensorFlow's bottom-and-right padding, which this package used before 0.3 (a run's
            config.json without `padding` was made with it). Shapes and counts are the same.
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
    option = specs.check_shortcut(shortcut or specs.DEFAULT_SHORTCUT[spec.family])
    _check_arguments(bottleneck_stride, padding, weight_decay, include_top, pooling)
    if not 0 < bn_momentum < 1:
        raise ValueError(f"bn_momentum must be in (0, 1), got {bn_momentum}.")
    num_classes = spec.default_num_classes if num_classes is None else num_classes
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    # Before any layer is built: refusals and a missing download cost no graph.
    source = _weights(weights, spec, option, bottleneck_stride, padding, include_top, num_classes)
    f = _Factory(weight_decay, sync_bn, fused_bn, zero_init_residual, padding, bn_momentum, ghost_batch_size)
    blocks = sum(repeats for _, _, repeats in spec.stages)
    # ResNet-1202 is about 2,000 nodes deep: more than Keras' recursive graph walk allows by default.
    with workarounds.recursion_limit(1000 + 12 * blocks):
        inputs = keras.Input(shape=tuple(input_shape or spec.default_input_shape), name="image")
        x = source.normalize(inputs) if source is not None else inputs
        x = _body(f, spec, x, option, bottleneck_stride)
        x = _top(f, x, include_top, pooling, num_classes, classifier_activation)
        # A CIFAR net whose depth is also in Table 1 (50, 152) must not share the ImageNet net's name.
        clash = spec.family == specs.CIFAR and spec.depth in specs.IMAGENET_SPECS
        model = keras.Model(inputs, x, name=f"cifar_{spec.name}" if clash else spec.name)
    if source is not None:
        source.load(model)
    return model


def _weights(weights, spec: specs.ModelSpec, option, bottleneck_stride, padding, include_top, num_classes):
    """`build_model`'s `weights` resolved (`pretrained.Weights`), or None for random initialization."""
    if weights is None:
        return None
    from keras_resnet.models import pretrained  # here: `pretrained` builds its networks with this module

    return pretrained.resolve(
        weights,
        spec,
        shortcut=option,
        bottleneck_stride=bottleneck_stride,
        padding=padding,
        include_top=include_top,
        num_classes=num_classes,
    )


def _top(f: _Factory, x, include_top: bool, pooling: str | None, num_classes: int, activation: str | None):
    """The classifier (global average pool, fully connected, `activation`), or the backbone's pooling."""
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(num_classes, kernel_regularizer=f.regularizer, name="fc")(x)
        if activation:
            # float32 so that mixed-precision training computes the loss on float32 probabilities.
            x = keras.layers.Activation(activation, dtype="float32", name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


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


def _check_arguments(bottleneck_stride, padding, weight_decay, include_top, pooling) -> None:
    if bottleneck_stride not in ("1x1", "3x3"):
        raise ValueError(f"bottleneck_stride must be '1x1' or '3x3', got {bottleneck_stride!r}.")
    if padding not in ("symmetric", "same"):
        raise ValueError(f"padding must be 'symmetric' or 'same', got {padding!r}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}.")
    if include_top and pooling:
        raise ValueError(f"pooling={pooling!r} is for include_top=False; the top pools by averaging.")


def _body(f: _Factory, spec: specs.ModelSpec, inputs, option: str, bottleneck_stride: str):
    """The stem and every stage of `spec`: the last feature map."""
    if spec.family == specs.CIFAR:
        x = f.conv_bn(inputs, specs.CIFAR_FILTERS[0], 3, 1, "conv1")
    else:
        x = f.conv_bn(inputs, 64, 7, 2, "conv1")
        # Zeros pad the pool as well as -inf would: its input comes out of a ReLU.
        x, pool_padding = f.pad(x, 3, 2, "pool1_pad")
        x = keras.layers.MaxPooling2D(3, strides=2, padding=pool_padding, name="pool1")(x)
    for stage, (block, filters, repeats) in enumerate(spec.stages):
        for b in range(repeats):
            # The first stage keeps the resolution (the ImageNet stem already pooled).
            strides = 2 if (b == 0 and stage > 0) else 1
            name = f"conv{stage + 2}_block{b + 1}"
            x = f.block(x, block, filters, strides, spec.residual, option, bottleneck_stride, name)
    return x
