"""TensorFlow fast paths for the model's layers; imported only on the TensorFlow backend.

Keras 3 normalizes a batch with `tf.nn.moments` and `tf.nn.batch_normalization`: about a dozen
elementwise and reduction kernels forward and more backward, each a pass over the activations,
in float32 even under mixed bfloat16. TensorFlow's fused kernel (`FusedBatchNormV3`, oneDNN on
x86 CPUs) does each direction in one pass and reads bfloat16 directly: training is faster in
both precisions (the `fused BN` row of results/README.md, "Where the step time goes").
"""

from __future__ import annotations

import tensorflow as tf


def fused_batch_norm_train(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float):
    """Normalizes NHWC `x` with its own batch statistics in one fused kernel (and one for the gradient).

    Args:
        x: float32, float16 or bfloat16 activations, channels last.
        gamma, beta: float32 per-channel scale and offset.
        epsilon: added to the variance.

    Returns:
        (outputs in x's dtype, batch mean, batch variance), the statistics in float32. The variance
        is the biased one that normalised the batch (the kernel reports the unbiased one), so the
        moving statistics match Keras' unfused layer.
    """
    none = tf.zeros([0], tf.float32)  # no running statistics: the layer keeps its own
    y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x,
        scale=gamma,
        offset=beta,
        mean=none,
        variance=none,
        # cuDNN refuses epsilon < 1e-5 (the paper's value, once rounded to float32); TensorFlow's
        # own wrapper raises it the same way, a 0.01% change of the smallest epsilon.
        epsilon=max(epsilon, 1.001e-5),
        data_format="NHWC",
        is_training=True,
    )
    n = tf.cast(tf.size(x, out_type=tf.int64) // tf.shape(x, out_type=tf.int64)[-1], tf.float32)
    return y, mean, variance * ((n - 1.0) / n)
