"""Steady-state training speed of train.py's own path: ResNet-20, batch 128, real CIFAR-10.

    .venv/bin/python bench/bench_train.py [--steps 100] [--json results/bench_train.json]

For float32 and bfloat16, runs `keras_resnet.training.run` (the tf.data pipeline with the paper's
augmentation, MirroredStrategy, every callback) for --steps iterations and reports the images/s
of the steps after the first five (graph tracing). `--baseline` also times plain Keras code on the
same machine: the same network and optimizer fitted on in-memory arrays with no augmentation.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_resnet import counting, models, training  # noqa: E402

WARMUP_STEPS = 5  # as training.Progress: the first steps trace the graph


def bench_train_py(precision: str, steps: int, data_dir: str | None) -> dict:
    with tempfile.TemporaryDirectory() as model_dir:
        cfg = training.TrainConfig(
            model="resnet20",
            batch_size=128,
            train_steps=steps,
            checkpoint_steps=steps,
            precision=precision,
            eval_test=False,
            data_dir=data_dir or "",
            model_dir=model_dir,
        )
        summary = training.run(cfg, verbose=0)
    return {"params": summary["params"], "images_per_sec": summary["images_per_sec"]}


def bench_plain_keras(precision: str, steps: int, data_dir: str | None) -> dict:
    """The reference: build, compile, fit on numpy arrays, no tf.distribute, no augmentation."""
    import tensorflow_datasets as tfds

    from keras_resnet import data

    tfds_dir = data_dir or str(data.default_data_root() / "tensorflow_datasets")
    n = 128 * 40
    x, y = tfds.as_numpy(
        tfds.load("cifar10", split=f"train[:{n}]", batch_size=-1, as_supervised=True, data_dir=tfds_dir)
    )
    x = (x.astype(np.float32) - 120.0) / 64.0
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        model = models.build_model("resnet20")
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
        times: list[float] = []

        class Timer(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                self.t0 = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                times.append(time.perf_counter() - self.t0)

        epochs = -(-steps // 40)
        model.fit(
            x,
            y,
            batch_size=128,
            epochs=epochs,
            steps_per_epoch=min(40, steps),
            callbacks=[Timer()],
            verbose=0,
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    steady = times[WARMUP_STEPS:]
    return {"params": counting.count(model).params, "images_per_sec": 128 * len(steady) / sum(steady)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training iterations per measurement")
    parser.add_argument("--precision", default="float32,bfloat16", help="comma list of float32, bfloat16")
    parser.add_argument("--baseline", action="store_true", help="also time plain Keras code (reference)")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default $KERAS_RESNET_DATA/...)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be > {WARMUP_STEPS}")

    rows = []
    for precision in args.precision.split(","):
        paths = [("train.py", bench_train_py)] + (
            [("plain keras", bench_plain_keras)] if args.baseline else []
        )
        for path, fn in paths:
            print(f"timing {path} {precision} ({args.steps} steps)...", flush=True)
            result = fn(precision, args.steps, args.data_dir)
            rows.append(
                {
                    "path": path,
                    "precision": precision,
                    "params": result["params"],
                    "images_per_sec": result["images_per_sec"],
                    "ms_per_step": 128_000 / result["images_per_sec"],
                }
            )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nResNet-20, batch 128, CIFAR-10; {os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"{'path':<12} {'precision':<10} {'params':>9} {'img/s':>8} {'ms/step':>8}")
    for r in rows:
        print(f"{r['path']:<12} {r['precision']:<10} {r['params']:>9,} ", end="")
        print(f"{r['images_per_sec']:>8.0f} {r['ms_per_step']:>8.1f}")
    if args.json:
        out = {
            "model": "resnet20",
            "batch_size": 128,
            "steps": args.steps,
            "cpus": os.cpu_count(),
            "load_average": load,
            "machine": platform.platform(),
            "keras": keras.__version__,
            "results": rows,
        }
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(path)


if __name__ == "__main__":
    main()
