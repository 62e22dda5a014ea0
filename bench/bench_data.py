"""Input-pipeline throughput alone (no model): images/s delivered by `keras_resnet.data.load`.

    .venv/bin/python bench/bench_data.py [--json bench_data.json] [--data_dir ../shared/data]

Rows: the CIFAR-10 training pipeline (target: >= 5,000 img/s after the first epoch, 5x or more
what ResNet-20 training consumes on 2 CPU cores), its evaluation pipeline, and ImageNet-style pipelines
over imagenette (scale augmentation + 128 crops, images decoded once and held in memory, or
decoded every epoch). Each row times `--batches` batches after a warm-up of `--warmup` batches
(the first epoch's one-off costs: tracing, buffers, shuffling).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_resnet import runtime  # noqa: E402

runtime.start_command()  # first: TensorFlow starts with oneDNN on, and quietly

# isort: split

import tensorflow as tf  # noqa: E402

from keras_resnet import data, files  # noqa: E402
from keras_resnet.data import tfds as tfds_source  # noqa: E402

CIFAR_TARGET = 5_000  # img/s


def throughput(ds: tf.data.Dataset, batches: int, warmup: int) -> float:
    """Images per second over `batches` batches, after `warmup` batches."""
    it = iter(ds.repeat())
    for _ in range(warmup):
        next(it)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        images += int(tf.shape(next(it)[0])[0])
    return images / (time.perf_counter() - start)


def save_preview(ds: data.Datasets, path: pathlib.Path, rows: int = 4, cols: int = 8) -> None:
    """A grid of training views (mean added back) to eyeball the augmentation; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, labels = next(iter(ds.train))
    images = (images.numpy() + ds.info.mean).clip(0, 255).astype("uint8")
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows))
    for ax, image, label in zip(axes.flat, images, labels.numpy(), strict=False):
        ax.imshow(image)
        ax.set_title(ds.info.class_names[label], fontsize=7)
        ax.axis("off")
    fig.suptitle(
        f"{ds.info.name} training views ({ds.info.recipe} recipe, {ds.info.image_size}px)", fontsize=9
    )
    fig.tight_layout()
    files.save_figure(fig, path, dpi=100)
    print(f"  wrote {path}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data_dir",
        default=None,
        help=f"data root holding tensorflow_datasets/ and imagenette/ (default ${tfds_source.DATA_ENV})",
    )
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=200, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches (default: one CIFAR epoch)")
    parser.add_argument("--skip_imagenette", action="store_true")
    parser.add_argument("--json", default=None, help="write the rows here as JSON")
    parser.add_argument("--preview", default=None, help="write PNG grids of training views into this folder")
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.data_dir:
        os.environ[tfds_source.DATA_ENV] = args.data_dir
    root = tfds_source.default_tfds_dir().parent

    rows = []

    def run(name: str, make, batches: int, warmup: int, target: float | None = None) -> None:
        start = time.perf_counter()
        ds = make()
        load_s = time.perf_counter() - start
        rate = throughput(ds, batches, warmup)
        row = {"pipeline": name, "img_per_s": round(rate, 1), "load_s": round(load_s, 1), "batches": batches}
        if target:
            row["target"], row["ok"] = target, rate >= target
        rows.append(row)
        print(f"  {name}: {rate:,.0f} img/s (load {load_s:.1f} s)", flush=True)

    b = args.batch_size
    cifar_warmup = args.warmup if args.warmup is not None else 50_000 // b
    if (root / "tensorflow_datasets" / "cifar10").is_dir():
        print(f"CIFAR-10 from {root / 'tensorflow_datasets'}")
        run(
            "cifar10 train",
            lambda: data.load("cifar10", batch_size=b).train,
            args.batches,
            cifar_warmup,
            CIFAR_TARGET,
        )
        run(
            "cifar10 train, deterministic",
            lambda: data.load("cifar10", batch_size=b, deterministic=True).train,
            args.batches,
            cifar_warmup,
        )
        run("cifar10 test (eval view)", lambda: data.load("cifar10", batch_size=b).test, 10_000 // b, 5)
        if args.preview:
            save_preview(
                data.load("cifar10", batch_size=32), pathlib.Path(args.preview) / "cifar10_train.png"
            )
    else:
        print(f"CIFAR-10 not found under {root / 'tensorflow_datasets'}: skipped (set --data_dir)")

    if not args.skip_imagenette and (root / "imagenette" / "train").is_dir():
        print(f"imagenette from {root / 'imagenette'} (128 crops, shorter side in {data.scale_range(128)})")
        warm = args.warmup if args.warmup is not None else 20
        few = max(args.batches // 4, 10)
        run(
            "imagenette train, in memory",
            lambda: data.load("imagenette", batch_size=b).train,
            args.batches,
            warm,
        )
        run(
            "imagenette train, in memory, PCA lighting",
            lambda: data.load("imagenette", batch_size=b, color_augmentation=True).train,
            args.batches,
            warm,
        )
        run(
            "imagenette train, decoded every epoch",
            lambda: data.load("imagenette", batch_size=b, cache_images=False, verbose=False).train,
            few,
            5,
        )
        run("imagenette val (eval view)", lambda: data.load("imagenette", batch_size=b).test, 3925 // b, 3)
        if args.preview:
            preview = data.load("imagenette", batch_size=32, color_augmentation=True)
            save_preview(preview, pathlib.Path(args.preview) / "imagenette_train.png")
    elif not args.skip_imagenette:
        print(f"imagenette not found under {root}: skipped")

    _report(rows, b, args.json)


def _report(rows: list[dict], b: int, json_path: str | None) -> None:
    """The rows as a table, and as JSON in `json_path` with the machine's CPU and the command."""
    load = os.getloadavg()
    width = max(len(r["pipeline"]) for r in rows) if rows else 10
    print(f"\n{'pipeline':<{width}}  {'img/s':>9}  {'load s':>6}  target")
    for r in rows:
        verdict = f">= {r['target']:,}: {'ok' if r['ok'] else 'MISSED'}" if "target" in r else ""
        print(f"{r['pipeline']:<{width}}  {r['img_per_s']:>9,.0f}  {r['load_s']:>6.1f}  {verdict}")
    print(f"\nbatch {b}, {os.cpu_count()} CPU cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if json_path:
        out = {"batch_size": b, "cpu_count": os.cpu_count(), "loadavg": load, "rows": rows}
        out |= {"cpu": runtime.cpu_description(), "command": runtime.command_line()}
        path = pathlib.Path(json_path)
        files.write_json(path, out)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
