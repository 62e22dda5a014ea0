"""Float32 or bfloat16: `--precision=auto` measured on this machine, and Keras' dtype policy for a block."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import keras
import tensorflow as tf

from keras_resnet import runtime

# bfloat16 must beat float32 by this much for `--precision=auto` to take it: float32 is the more
# accurate of the two, so a near tie goes to it.
BFLOAT16_MIN_SPEEDUP = 1.15


def resolve_precision(precision: str) -> str:
    """float32 or bfloat16; `auto` is bfloat16 where the hardware computes it natively and faster.

    That is a GPU of compute capability 8.0 or more, or a CPU whose flags claim bfloat16
    (AVX512_BF16 or AMX) and on which a convolution of ResNet-20's first stage, forward and
    backward, measures at least `BFLOAT16_MIN_SPEEDUP` (1.15x) faster in bfloat16 than in
    float32: the flag alone is no promise (a CPU with AVX512_BF16 but no AMX can train slower in
    bfloat16 than in float32: the Xeon's rows in results/README.md, "Training speed"). The measurement takes
    about half a second, once per process; each worker of a cluster decides
    for itself, which changes speed, not results' meaning (variables and gradients stay float32
    either way).
    """
    if precision != "auto":
        return precision
    for gpu in tf.config.list_physical_devices("GPU"):
        if tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)) >= (8, 0):
            return "bfloat16"
    if not runtime.cpu_claims_bfloat16():
        return "float32"
    return "bfloat16" if bfloat16_speedup() >= BFLOAT16_MIN_SPEEDUP else "float32"


@functools.cache
def bfloat16_speedup(batch: int = 64, repeats: int = 10) -> float:
    """float32 time over bfloat16 time of a 3x3 convolution, 16 channels at 32 px, forward and backward.

    Both run twice before the clock starts (tracing, oneDNN's kernel choice), then alternately;
    each keeps its fastest time.
    """

    def make_step(dtype: tf.DType) -> Callable[[], Any]:
        x = tf.cast(tf.random.stateless_normal([batch, 32, 32, 16], seed=(0, 1)), dtype)
        # A tensor, not a variable: callers may be inside a strategy's scope (the tuner), where a
        # variable would be a distributed one.
        w = tf.cast(tf.random.stateless_normal([3, 3, 16, 16], seed=(0, 2)), dtype)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                loss = tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME"))
            return tape.gradient(loss, [x, w])

        return step

    with tf.device("/cpu:0"):
        steps = [make_step(tf.float32), make_step(tf.bfloat16)]
        best = [float("inf")] * 2
        for i in range(2 + repeats):
            for k, step in enumerate(steps):
                begin = time.perf_counter()
                step()
                if i >= 2:
                    best[k] = min(best[k], time.perf_counter() - begin)
    return best[0] / best[1]


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[str]:
    """Sets Keras' global dtype policy for `precision` inside the block, then restores the caller's."""
    before = keras.mixed_precision.global_policy()
    resolved = resolve_precision(precision)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if resolved == "bfloat16" else "float32")
    try:
        yield resolved
    finally:
        keras.mixed_precision.set_global_policy(before)
