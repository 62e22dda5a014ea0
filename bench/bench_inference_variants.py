"""What each inference-graph choice of the export buys: the network alone, per variant and batch.

    .venv/bin/python bench/bench_inference_variants.py --model resnet20
    TF_NUM_INTRAOP_THREADS=1 .venv/bin/python bench/bench_inference_variants.py      # one intra-op thread
    TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD=1 .venv/bin/python bench/bench_inference_variants.py
    TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 .venv/bin/python bench/bench_inference_variants.py

Variants, each one `tf.function` of the same random-weight net on float32 views (no decoding, no
signature): "keras" (batch norm as Keras computes it in inference), "folded" (`models.folding`,
what the export serves), "folded_xla" (the same, `jit_compile=True`), "frozen" (folded, variables
turned into graph constants). Two rounds, interleaved; each row's p50 is its better round's.
TensorFlow reads the environment variables above when it starts: set them on the command line.
It prints its table; the figures measured so far: results/bench_inference_variants.json.
"""

from __future__ import annotations

from keras_resnet import runtime

runtime.start_command()  # first: TensorFlow starts with oneDNN on, and quietly

# isort: split

import argparse
import os
import time

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

import keras_resnet as kr
from keras_resnet.models.folding import fold_batch_norm

CALLS = {1: 300, 8: 100, 32: 20, 64: 30, 256: 10}


def variants(name: str, size: int) -> dict:
    model = kr.build_model(name)
    folded = fold_batch_norm(model)
    spec = tf.TensorSpec([None, size, size, 3], tf.float32)
    graph = tf.function(lambda v: folded(v, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(graph)
    return {
        "keras": tf.function(lambda v: model(v, training=False)),
        "folded": tf.function(lambda v: folded(v, training=False)),
        "folded_xla": tf.function(lambda v: folded(v, training=False), jit_compile=True),
        "frozen": lambda v: frozen(v)[0],
    }


def p50_ms(fn, x: tf.Tensor, calls: int) -> float:
    for _ in range(5):
        fn(x).numpy()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(x).numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batches", default="1,64,256")
    args = parser.parse_args()
    size = 32 if kr.get_spec(args.model).family == "cifar" else 224
    batches = [int(b) for b in args.batches.split(",")]
    fns = variants(args.model, size)
    rng = np.random.default_rng(0)
    x = {b: tf.constant(rng.uniform(0, 255, (b, size, size, 3)).astype(np.float32)) for b in batches}
    best: dict[tuple[str, int], float] = {}
    for _ in range(2):
        for variant, fn in fns.items():
            for b in batches:
                ms = p50_ms(fn, x[b], CALLS.get(b, 10))
                best[variant, b] = min(ms, best.get((variant, b), ms))
    env = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith(("TF_NUM", "TF_ONEDNN")))
    print(f"{args.model} at {size} px; {runtime.cpu()[0]}; {env or 'TensorFlow defaults'}")
    print(f"{'variant':11s} {'batch':>5s} {'p50 ms':>8s} {'img/s':>8s}")
    for (variant, b), ms in best.items():
        print(f"{variant:11s} {b:5d} {ms:8.2f} {b / ms * 1e3:8.0f}")


if __name__ == "__main__":
    main()
