"""Steady-state training speed of train.py's own path: ResNet-20, batch 128, real CIFAR-10.

    .venv/bin/python bench/bench_train.py [--steps 60] [--repeats 3] [--json results/bench_train.json]

Paths, each timed for float32 and bfloat16 (mixed precision):
  train.py             `keras_resnet.training.run`: the tf.data pipeline with the paper's
                       augmentation, MirroredStrategy, every callback, fused batch norm (the default)
  train.py Keras BN    the same with --nofused_bn: Keras' own batch-norm computation
  train.py one device  the same with --distribution=one_device instead of MirroredStrategy
  plain keras          the same network with Keras' batch norm, compiled and fitted on in-memory
                       arrays, no augmentation, no tf.distribute, no callbacks
  pytorch              with --torch_python=<a Python with PyTorch>: bench/torch_resnet20.py, the
                       same net in PyTorch (channels_last, in-memory batch), in its own process;
                       then the reference of the "x ref" column (else plain keras)
Each run trains --steps iterations; images/s counts the steps after the first five (tracing).
Run-to-run spread on the 2-core machine is about +-10%, more than some of the differences, so the
paths run interleaved (round-robin, --repeats rounds, one process) and the table shows medians.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_resnet import runtime  # noqa: E402

runtime.start_command()  # first: TensorFlow starts with oneDNN on, and quietly

# isort: split

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_resnet import config, files, models, training  # noqa: E402
from keras_resnet.data import tfds as tfds_source  # noqa: E402

WARMUP_STEPS = 5  # as training.Progress: the first steps trace the graph
BATCH = 128


def bench_train_py(precision: str, steps: int, data_dir: str | None, **flags) -> dict:
    """`training.run` with `flags` (TrainConfig fields) on top of the benchmark's own."""
    with tempfile.TemporaryDirectory() as model_dir:
        cfg = config.TrainConfig.of(
            model="resnet20",
            batch_size=BATCH,
            train_steps=steps,
            checkpoint_steps=steps,
            precision=precision,
            eval_test=False,
            data_dir=data_dir or "",
            model_dir=model_dir,
            **flags,
        )
        summary = training.run(cfg, verbose=0)
    return {"params": summary.params, "images_per_sec": summary.images_per_sec}


@functools.cache
def cifar_arrays(data_dir: str | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` CIFAR-10 training images, roughly standardized, and labels (read once)."""
    import tensorflow_datasets as tfds

    tfds_dir = data_dir or str(tfds_source.default_tfds_dir())
    x, y = tfds.as_numpy(
        tfds.load("cifar10", split=f"train[:{n}]", batch_size=-1, as_supervised=True, data_dir=tfds_dir)
    )
    return (x.astype(np.float32) - 120.0) / 64.0, y


class StepTimer(keras.callbacks.Callback):
    """perf_counter() at the beginning and end of every training step."""

    def __init__(self):
        super().__init__()
        self.begins: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append(time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def bench_plain_keras(precision: str, steps: int, data_dir: str | None) -> dict:
    """The reference: build, compile, fit on numpy arrays; Keras' own batch norm."""
    x, y = cifar_arrays(data_dir, BATCH * 40)
    with training.precision_policy(precision):
        model = models.build_model("resnet20", fused_bn=False)
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
        timer = StepTimer()
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=-(-steps // 40),
            steps_per_epoch=min(40, steps),
            callbacks=[timer],
            verbose=0,
        )
    # Inside the steps, as training.Progress counts them.
    steady = [end - begin for begin, end in zip(timer.begins, timer.ends, strict=True)][WARMUP_STEPS:steps]
    return {"params": models.count(model).params, "images_per_sec": BATCH * len(steady) / sum(steady)}


def bench_pytorch(precision: str, steps: int, torch_python: str) -> dict:
    """PyTorch on the same cores, in its own interpreter (`bench/torch_resnet20.py`)."""
    script = pathlib.Path(__file__).with_name("torch_resnet20.py")
    cmd = [torch_python, str(script), f"--steps={steps}", f"--batch={BATCH}", f"--precision={precision}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600).stdout
    return json.loads(out.strip().splitlines()[-1])


PATHS = {
    "train.py": bench_train_py,
    "train.py Keras BN": lambda p, s, d: bench_train_py(p, s, d, fused_bn=False),
    "train.py one device": lambda p, s, d: bench_train_py(p, s, d, distribution="one_device"),
    "plain keras": bench_plain_keras,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="training iterations per run")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size of every path")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over every path and precision")
    parser.add_argument("--precision", default="float32,bfloat16", help="comma list of float32, bfloat16")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma list of: {', '.join(PATHS)}")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default $KERAS_RESNET_DATA/...)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument(
        "--torch_python", default=None, help="a Python with PyTorch: adds the path `pytorch` (interleaved)"
    )
    return parser


def _rows(combos, runs: dict[tuple[str, str], list[float]], params: dict[str, int]) -> list[dict]:
    """One row per path and precision: the median rate, and its ratio to the reference's."""
    rows = []
    for path, precision in combos:
        rates = runs[(path, precision)]
        median = statistics.median(rates)
        reference = runs.get(("pytorch", precision)) or runs.get(("plain keras", precision))
        rows.append(
            {
                "path": path,
                "precision": precision,
                "params": params[path],
                "median_img_per_sec": median,
                "ms_per_step": BATCH * 1000 / median,
                "runs_img_per_sec": [round(v, 1) for v in rates],
                "vs_reference": median / statistics.median(reference) if reference else None,
            }
        )
    return rows


def main() -> None:
    global BATCH
    parser = _parser()
    args = parser.parse_args()
    BATCH = args.batch  # every path reads the module's batch size
    if args.torch_python:
        PATHS["pytorch"] = lambda p, s, d: bench_pytorch(p, s, args.torch_python)
        if "pytorch" not in args.paths:
            args.paths += ",pytorch"
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be > {WARMUP_STEPS}")
    paths = [p.strip() for p in args.paths.split(",")]
    if unknown := [p for p in paths if p not in PATHS]:
        parser.error(f"--paths: unknown {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    precisions = [p.strip() for p in args.precision.split(",")]
    if unknown := [p for p in precisions if p not in config.PRECISIONS]:
        valid = ", ".join(config.PRECISIONS)
        parser.error(f"--precision: unknown {', '.join(unknown)}; choose from {valid}")

    combos = [(path, precision) for precision in precisions for path in paths]
    runs: dict[tuple[str, str], list[float]] = {c: [] for c in combos}
    params = {}
    start, total = time.perf_counter(), args.repeats * len(combos)
    for r in range(args.repeats):
        for path, precision in combos:
            done = r * len(combos) + combos.index((path, precision))
            eta = (time.perf_counter() - start) / done * (total - done) if done else float("nan")
            print(
                f"[{done + 1}/{total}, ETA {eta:.0f} s] {path} {precision} ({args.steps} steps)...",
                flush=True,
            )
            result = PATHS[path](precision, args.steps, args.data_dir)
            runs[(path, precision)].append(result["images_per_sec"])
            params[path] = result["params"]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = _rows(combos, runs, params)
    print(f"\nResNet-20, batch {BATCH}, CIFAR-10; {os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"medians of {args.repeats} interleaved runs of {args.steps} steps")
    reference = "pytorch" if args.torch_python else "plain keras"
    print(f"x ref: speed relative to {reference} at the same precision")
    print(f"{'path':<18} {'precision':<9} {'params':>8} {'img/s':>6} {'ms/step':>7} {'x ref':>7}  runs")
    for r in rows:
        ratio = f"{r['vs_reference']:.2f}" if r["vs_reference"] else "-"
        print(
            f"{r['path']:<18} {r['precision']:<9} {r['params']:>8,} {r['median_img_per_sec']:>6.0f} "
            f"{r['ms_per_step']:>7.1f} {ratio:>7}  {', '.join(f'{v:.0f}' for v in r['runs_img_per_sec'])}"
        )
    if args.json:
        out = {
            "model": "resnet20",
            "batch_size": BATCH,
            "steps": args.steps,
            "repeats": args.repeats,
            "cpus": os.cpu_count(),
            "load_average_at_end": load,
            "machine": platform.platform(),
            "cpu": runtime.cpu_description(),
            "command": runtime.command_line(),
            "keras": keras.__version__,
            "reference": reference,
            "results": rows,
        }
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(path, out)


if __name__ == "__main__":
    main()
