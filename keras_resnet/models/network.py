"""The layers of every network of the paper, residual or plain, from its `specs` row.

Layer names follow Keras Applications and the paper's Table 1: `conv1` is the stem, stages are
`conv2` .. `conv5` (CIFAR: `conv2` .. `conv4`), e.g. `conv4_block6_2_bn` is the second BN of the
sixth block of the third stage; `_0_` marks the shortcut branch. `builder.build_model` checks its
arguments, builds here and then loads the weights (`pretrained`) into the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import keras

from keras_resnet import workarounds
from keras_resnet.models import specs
from keras_resnet.models.layers import BatchNormalization, ZeroPadShortcut

BN_EPSILON = 1e-5
POOLINGS = (None, "avg", "max")


@dataclasses.dataclass(frozen=True)
class Options:
    """How `build_network` builds a row of `specs` (`builder.build_model`'s arguments, checked)."""

    shortcut: str
    num_classes: int
    input_shape: tuple[int, int, int] | None
    include_top: bool
    pooling: str | None
    weight_decay: float
    bottleneck_stride: str
    classifier_activation: str | None
    sync_bn: bool
    fused_bn: bool
    zero_init_residual: bool
    padding: str
    bn_momentum: float
    ghost_batch_size: int

    @classmethod
    def named(cls, arguments: Mapping[str, Any]) -> Options:
        """The options among `arguments` (`build_model`'s, by name): the fields name them once."""
        return cls(**{field.name: arguments[field.name] for field in dataclasses.fields(cls)})


def check_arguments(o: Options) -> None:
    """Raises a ValueError naming the first argument `build_model` cannot build with."""
    if o.sync_bn and keras.backend.backend() != "tensorflow":
        # Keras' synchronized batch norm is tf.distribute's; its own refusal names `synchronized`.
        raise ValueError(
            f"sync_bn=True is TensorFlow's (tf.distribute); on the {keras.backend.backend()} backend "
            "build with sync_bn=False, or train with KERAS_BACKEND=tensorflow."
        )
    if o.num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {o.num_classes}.")
    specs.check_choice("bottleneck_stride", o.bottleneck_stride, specs.BOTTLENECK_STRIDES)
    specs.check_choice("padding", o.padding, specs.PADDINGS)
    specs.check_bn_momentum(o.bn_momentum)
    if o.weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {o.weight_decay}.")
    specs.check_choice("pooling", o.pooling, POOLINGS)
    if o.include_top and o.pooling:
        raise ValueError(f"pooling={o.pooling!r} is for include_top=False; the top pools by averaging.")


def build_network(spec: specs.ModelSpec, o: Options, normalize: Callable | None = None) -> keras.Model:
    """The network of `spec` built with `o`; `normalize` (the weights' input normalization) goes
    right after the input."""
    f = _Factory(o)
    blocks = sum(repeats for _, _, repeats in spec.stages)
    # ResNet-1202 is about 2,000 nodes deep: more than Keras' recursive graph walk allows by default.
    with workarounds.recursion_limit(1000 + 12 * blocks):
        inputs = keras.Input(shape=tuple(o.input_shape or spec.default_input_shape), name="image")
        x = normalize(inputs) if normalize is not None else inputs
        x = _body(f, spec, x, o.shortcut, o.bottleneck_stride)
        x = _top(f, x, o.include_top, o.pooling, o.num_classes, o.classifier_activation)
        # A CIFAR net whose depth is also in Table 1 (50, 152) must not share the ImageNet net's name.
        clash = spec.family == specs.CIFAR and spec.depth in specs.IMAGENET_SPECS
        return keras.Model(inputs, x, name=f"cifar_{spec.name}" if clash else spec.name)


class _Factory:
    """The layer choices shared by every block: He init, no conv bias before BN, L2 on kernels."""

    def __init__(self, o: Options):
        self.sync_bn, self.fused_bn, self.zero_init_residual = o.sync_bn, o.fused_bn, o.zero_init_residual
        self.padding, self.bn_momentum, self.ghost_batch_size = o.padding, o.bn_momentum, o.ghost_batch_size
        # SGD's weight decay `wd` is the gradient of (wd / 2) * ||w||^2, and Keras' L2(l) adds
        # l * ||w||^2, hence the half.
        self.regularizer = keras.regularizers.L2(o.weight_decay / 2) if o.weight_decay else None
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
