"""Registered custom layers (no `Lambda`), so saved models load with `safe_mode=True`."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_resnet.models import specs


@keras.saving.register_keras_serializable(package="keras_resnet")
class ZeroPadShortcut(keras.layers.Layer):
    """Option A shortcut: parameter-free identity where the shape changes.

    Subsamples spatially by `strides` (keeping the top-left pixel of every window, the same
    pixels a strided 1x1 convolution would see) and appends zero channels up to `filters`.

    Args:
        filters: output channels; must be >= the input channels.
        strides: spatial subsampling factor.
    """

    def __init__(self, filters: int, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        if height is not None:
            height = -(-height // self.strides)
        if width is not None:
            width = -(-width // self.strides)
        return (batch, height, width, self.filters)

    def build(self, input_shape):
        if input_shape[-1] > self.filters:
            raise ValueError(f"ZeroPadShortcut cannot shrink {input_shape[-1]} channels to {self.filters}.")

    def call(self, inputs, training=None):
        s = self.strides
        if s == 1:
            x = inputs
        elif training:
            # A 1x1 average pool with stride s is exactly inputs[:, ::s, ::s, :], for odd sizes too,
            # but runs as one oneDNN pooling op: TensorFlow's strided-slice gradient is a slow scatter
            # (the pooled shortcuts train faster; the commit that made them has the measurements).
            x = ops.average_pool(inputs, 1, strides=s)
        else:
            # Without a gradient the slice is the cheaper op: at batch 1 the pool's cost is mostly
            # dispatching to the thread pool.
            x = inputs[:, ::s, ::s, :]
        extra = self.filters - x.shape[-1]
        if extra:
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]])
        return x

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


@keras.saving.register_keras_serializable(package="keras_resnet")
class HorizontalFlip(keras.layers.Layer):
    """Mirrors NHWC images left to right (a test-time augmentation view)."""

    def call(self, inputs):
        return ops.flip(inputs, axis=2)


@keras.saving.register_keras_serializable(package="keras_resnet")
class Translate(keras.layers.Layer):
    """Shifts NHWC images by (`dy`, `dx`) pixels, filling with zeros (a test-time augmentation view).

    Positive values move the content down / right. On mean-subtracted inputs zero is the mean
    colour, as in the training's zero-padded random crops.
    """

    def __init__(self, dy: int, dx: int, **kwargs):
        super().__init__(**kwargs)
        self.dy, self.dx = int(dy), int(dx)

    def call(self, inputs):
        dy, dx = self.dy, self.dx
        padded = ops.pad(inputs, [[0, 0], [max(dy, 0), max(-dy, 0)], [max(dx, 0), max(-dx, 0)], [0, 0]])
        h, w = inputs.shape[1], inputs.shape[2]
        top, left = max(-dy, 0), max(-dx, 0)
        return padded[:, top : top + h, left : left + w, :]

    def get_config(self):
        return {**super().get_config(), "dy": self.dy, "dx": self.dx}


@keras.saving.register_keras_serializable(package="keras_resnet")
class BatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization with one set of moving statistics across replicas, and a fused kernel.

    Keras 3 creates the moving mean and variance with aggregation "none", so under a
    `tf.distribute` strategy each replica updates its own copy from its own share of the batch and
    the copies drift apart (saving then keeps replica 0's). Averaging the updates across replicas
    ("mean" aggregation, as tf.keras did) keeps one set of statistics. The batch statistics used
    for normalisation stay per replica unless `synchronized=True` (TensorFlow only), which
    computes them over the global batch.

    Args:
        fused: in training on the TensorFlow backend, normalize 4-D channels-last batches with
            TensorFlow's fused kernel (see `keras_resnet.models.tf_kernels`; same results, ResNet-20
            trains 1.4x (float32) to 1.65x (bfloat16) faster on CPU). Other backends,
            synchronized statistics and other layouts use Keras' own computation regardless.
        ghost_batch_size: in training, normalize each group of this many consecutive examples
            of the (per-replica) batch with the group's own statistics ("ghost" batch norm,
            Hoffer et al., 2017), which must divide the batch; the moving statistics follow the
            mean of the groups' statistics, and inference is unchanged. 0: the whole batch.
        **kwargs: as `keras.layers.BatchNormalization`.
    """

    def __init__(self, *, fused: bool = True, ghost_batch_size: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.fused = bool(fused)
        self.ghost_batch_size = int(ghost_batch_size)
        if self.ghost_batch_size < 0:
            raise ValueError(f"ghost_batch_size must be >= 0 (0: off), got {ghost_batch_size}.")
        if self.ghost_batch_size and (self.synchronized or self.renorm):
            raise ValueError("ghost_batch_size groups a replica's batch: not with synchronized or renorm.")

    def add_weight(self, *args, **kwargs):
        if not kwargs.get("trainable", True):
            kwargs["aggregation"] = "mean"
        return super().add_weight(*args, **kwargs)

    def _can_fuse(self, inputs, mask) -> bool:
        return (
            self.fused
            and keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.synchronized
            and not self.renorm
            and self.center
            and self.scale
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            # The kernel has no float64.
            and keras.backend.standardize_dtype(inputs.dtype) in ("float16", "bfloat16", "float32")
        )

    def call(self, inputs, training=None, mask=None):
        if training and self.trainable and self.ghost_batch_size and mask is None:
            return self._ghost_call(inputs)
        if not (training and self.trainable and self._can_fuse(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        from keras_resnet.models import tf_kernels  # TensorFlow-only; the other backends never get here

        outputs, mean, variance = tf_kernels.fused_batch_norm_train(
            inputs, ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32"), self.epsilon
        )
        # The same update as Keras' layer, so fused and unfused training agree step for step; in
        # float32 like the kernel's statistics (the variables may hold float16 or bfloat16).
        for variable, batch_value in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving = ops.cast(variable, "float32")
            variable.assign(moving * self.momentum + batch_value * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)

    def _ghost_call(self, inputs):
        """Training: each group of `ghost_batch_size` examples normalized with its own statistics."""
        n = self.ghost_batch_size
        if inputs.shape[0] is not None:  # each replica's batch: the strategy checked their split
            specs.check_ghost_batch(n, inputs.shape[0])
        # float32 statistics under mixed precision, as Keras' layer computes them.
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        shape = ops.shape(x)
        groups = ops.reshape(x, (-1, n, *shape[1:]))  # [G, n, ...]: group g is examples g*n .. g*n+n-1
        channel = self.axis % len(inputs.shape) + 1
        axes = [a for a in range(1, len(groups.shape)) if a != channel]
        mean, variance = ops.moments(groups, axes=axes, keepdims=True)
        stats_shape = [1] * len(groups.shape)
        stats_shape[channel] = inputs.shape[self.axis]
        gamma = ops.reshape(ops.cast(self.gamma, x.dtype), stats_shape) if self.scale else 1.0
        beta = ops.reshape(ops.cast(self.beta, x.dtype), stats_shape) if self.center else 0.0
        y = (groups - mean) * (gamma * ops.rsqrt(variance + self.epsilon)) + beta
        for variable, batch_value in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving = ops.cast(variable, x.dtype)
            update = ops.reshape(ops.mean(batch_value, axis=0), variable.shape)  # the groups' mean
            variable.assign(ops.cast(moving * self.momentum + update * (1.0 - self.momentum), variable.dtype))
        return ops.cast(ops.reshape(y, shape), self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "fused": self.fused, "ghost_batch_size": self.ghost_batch_size}


@keras.saving.register_keras_serializable(package="keras_resnet")
class FoldedBatchNorm(keras.layers.Layer):
    """Where a batch norm was before `models.folding` folded it into the convolution it follows:
    passes its input on (it takes the batch norm's call arguments, so the graph is cloned as is)."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="keras_resnet")
class InputNormalization(keras.layers.Layer):
    """Raw RGB pixels (0-255) in, the network's normalised input out: `x[..., ::-1]` if
    `reverse_channels`, minus `mean`.

    A model that starts with this layer takes the images as they are decoded and carries its
    input normalization inside (as Keras Applications' `include_preprocessing` models do), so
    `model.predict(images)` needs no separate preprocessing and a saved model cannot be fed
    differently normalised inputs by mistake.

    Args:
        mean: subtracted after the channel reversal, broadcast over the batch: a per-channel (C,)
            mean or a (H, W, C) mean image, in the units of the (reversed) input.
        reverse_channels: reverse the channel axis first (RGB -> BGR, Caffe's order).
        **kwargs: as `keras.layers.Layer`; `dtype` defaults to float32, so that under a mixed
            precision policy 0-255 pixels lose no precision before the mean is subtracted (the
            next layer casts).
    """

    def __init__(self, mean, reverse_channels: bool = False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        # float64 keeps the config's values as given (103.939, not 103.93900299...).
        self.mean = np.asarray(mean, dtype=np.float64)
        self.reverse_channels = bool(reverse_channels)
        if self.mean.ndim not in (1, 3) or not np.all(np.isfinite(self.mean)):
            raise ValueError(
                f"InputNormalization's mean must be finite, (C,) or (H, W, C); got shape {self.mean.shape}."
            )

    def build(self, input_shape):
        expected = tuple(input_shape[-self.mean.ndim :])
        if any(e is not None and e != m for e, m in zip(expected, self.mean.shape, strict=True)):
            raise ValueError(
                f"InputNormalization's mean of shape {self.mean.shape} does not fit inputs of shape "
                f"{tuple(input_shape)}."
            )

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs):
        x = ops.flip(inputs, axis=-1) if self.reverse_channels else inputs
        return x - ops.convert_to_tensor(self.mean, dtype=x.dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean.tolist(), "reverse_channels": self.reverse_channels}
