"""Where training time goes between plain Keras code and train.py's path: ResNet-20, batch 128.

    .venv/bin/python bench/ablate_train.py [--steps 30] [--rounds 3] [--precision float32]

Builds the path up one piece at a time, each row adding to the one above:
  plain keras, Keras BN   the same network, Keras' batch norm, SGD, fitted on in-memory arrays
  fused BN                TensorFlow's fused batch-norm kernel (keras_resnet's default)
  + pipeline              the real CIFAR-10 tf.data pipeline with the paper's augmentation
  + MirroredStrategy      built and fitted under the one-replica strategy train.py uses
  + top-1 error metric    train.py's compiled metric
  + lr schedule           train.py's compile: the iteration-milestone schedule (same SGD)
  + callbacks             train.py's callbacks except checkpoint writing
All variants are built first and then fitted round-robin in one process, so machine-load drift
hits every row alike; each rate is the median over rounds of the steps after the first five.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_resnet import runtime  # noqa: E402

runtime.start_command()  # first: TensorFlow starts with oneDNN on, and quietly

# isort: split

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.bench_train import BATCH, WARMUP_STEPS, StepTimer, cifar_arrays  # noqa: E402
from keras_resnet import config, data, models  # noqa: E402
from keras_resnet.models import compiled  # noqa: E402
from keras_resnet.training import callbacks as run_callbacks  # noqa: E402
from keras_resnet.training import distribution, optimization  # noqa: E402

ROWS = (
    "plain keras, Keras BN",
    "fused BN",
    "+ pipeline",
    "+ MirroredStrategy",
    "+ top-1 error metric",
    "+ lr schedule",
    "+ callbacks",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="training iterations per fit")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin passes over the rows")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default $KERAS_RESNET_DATA/...)")
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS + 1:
        parser.error(f"--steps must be > {WARMUP_STEPS + 1}")
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if args.precision == "bfloat16" else "float32")

    model_dir = tempfile.mkdtemp(prefix="ablate_train_")
    cfg = config.TrainConfig.of(
        model="resnet20",
        batch_size=BATCH,
        train_steps=10**6,
        data_dir=args.data_dir or "",
        model_dir=model_dir,
    )
    x, y = cifar_arrays(args.data_dir, BATCH * 40)
    arrays = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(BATCH, drop_remainder=True).prefetch(2)
    datasets = data.load("cifar10", data_dir=args.data_dir, batch_size=BATCH, seed=0, verbose=False)
    mirrored = distribution.make_strategy("mirrored")

    def variant(row: int):
        """(model, dataset, callbacks) with the first `row` + 1 pieces of ROWS."""
        scope = mirrored.scope() if row >= 3 else tf.distribute.get_strategy().scope()
        with scope:
            model = models.build_model("resnet20", fused_bn=row >= 1)
            rate = optimization.schedule(cfg.optim, 64_000)
            if row >= 5:
                optimization.compile_model(model, cfg.optim, 64_000, rate)
            else:
                metrics = [compiled.TopKError(1)] if row >= 4 else None
                model.compile(
                    keras.optimizers.SGD(0.1, momentum=0.9),
                    "sparse_categorical_crossentropy",
                    metrics=metrics,
                )
        callbacks = []
        if row >= 6:
            made = run_callbacks.make_callbacks(
                cfg,
                model,
                total_steps=10**6,
                rate=rate,
                evaluated=model,
                validation=None,
                test=None,
                verbose=False,
            )
            callbacks = [cb for cb in made.ordered() if cb is not made.checkpointer]
        return model, (datasets.train if row >= 2 else arrays), callbacks

    print(f"building {len(ROWS)} variants ({args.precision})...", flush=True)
    variants = [variant(i) for i in range(len(ROWS))]
    rates: list[list[float]] = [[] for _ in ROWS]
    for r in range(args.rounds):
        for i, (model, ds, callbacks) in enumerate(variants):
            timer = StepTimer()
            model.fit(ds, epochs=1, steps_per_epoch=args.steps, callbacks=[timer, *callbacks], verbose=0)
            # Step end to step end: the step, the input wait and every callback.
            steady = np.diff(timer.ends)[WARMUP_STEPS:]
            rates[i].append(BATCH * len(steady) / float(steady.sum()))
            print(f"round {r + 1}/{args.rounds} {ROWS[i]:<22} {rates[i][-1]:6.0f} img/s", flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nResNet-20, batch {BATCH}, {args.precision}; {os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"{'variant':<22} {'img/s':>6} {'ms/step':>7}  runs")
    for row, runs in zip(ROWS, rates, strict=True):
        median = statistics.median(runs)
        print(
            f"{row:<22} {median:>6.0f} {BATCH * 1000 / median:>7.1f}  {', '.join(f'{v:.0f}' for v in runs)}"
        )


if __name__ == "__main__":
    main()
