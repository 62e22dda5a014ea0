"""Speed of the exported SavedModel against Keras, on the same real images.

    python bench/bench_serving.py --model resnet20 --json bench_serving.json

Exports a randomly initialised model (speed does not depend on the weights), loads the export
with `tf.saved_model.load` as TF Serving would (without its REST/gRPC layer), and times:
- `serving_default` on encoded images: one image per call (latency p50/p99), then batches of 64
  (throughput), decoding and preprocessing included;
- `predict_pixels_uint8` on decoded pixels, batch 64: the same without the JPEG decoding;
- `model.predict` on the already-preprocessed views (their preprocessing is not timed, which
  flatters Keras).
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time

from keras_resnet import runtime

runtime.start_command()  # first: TensorFlow starts with oneDNN on, and quietly

# isort: split

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from keras_resnet import build_model, files, serving
from keras_resnet.data.info import CIFAR_RECIPE, DataInfo
from keras_resnet.data.recipes import eval_preprocess
from keras_resnet.serving import signatures

flags.DEFINE_string("model", "resnet20", "Network to export (a build_model name).")
flags.DEFINE_enum(
    "recipe",
    "cifar",
    ["cifar", "imagenet"],
    "cifar: CIFAR-10 test images as JPEG; imagenet: Imagenette JPEGs.",
)
flags.DEFINE_integer("image_size", None, "Model input side; default 32 (cifar) or 224 (imagenet).")
flags.DEFINE_integer("batch", 64, "Batch size of the throughput rows.")
flags.DEFINE_integer("latency_calls", 200, "Calls with one image for the latency percentiles.")
flags.DEFINE_integer("batch_calls", 20, "Calls with a full batch for the throughput rows.")
flags.DEFINE_string(
    "data", os.environ.get("KERAS_RESNET_DATA"), "Real data root (default: $KERAS_RESNET_DATA)."
)
flags.DEFINE_string("json", None, "Write the results here as JSON.")
FLAGS = flags.FLAGS


def _real_images(recipe: str, data: pathlib.Path, n: int) -> tuple[list[bytes], list[str]]:
    """`n` encoded real images and the dataset's class names."""
    if recipe == CIFAR_RECIPE:
        import tensorflow_datasets as tfds

        root = data / "tensorflow_datasets"
        if not (root / "cifar10").is_dir():
            raise SystemExit(
                f"bench_serving.py: CIFAR-10 not found under {root}: pass --data or set KERAS_RESNET_DATA."
            )
        ds, info = tfds.load(
            "cifar10", split=f"test[:{n}]", data_dir=str(root), download=False, with_info=True
        )
        # Clients send JPEG; quality 95 keeps CIFAR's 32x32 images recognisable.
        images = [tf.io.encode_jpeg(ex["image"], quality=95).numpy() for ex in ds]
        return images, list(info.features["label"].names)
    root = data / "imagenette" / "val"
    if not root.is_dir():
        raise SystemExit(
            f"bench_serving.py: Imagenette not found under {root}: pass --data or set KERAS_RESNET_DATA."
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = sorted(root.glob("*/*.JPEG"))
    files = files[:: max(1, len(files) // n)][:n]  # spread over the classes
    return [f.read_bytes() for f in files], classes


def _time_calls(fn, inputs: list, label: str) -> np.ndarray:
    """Seconds per call of `fn(x)` for each x, after two untimed warm-up calls."""
    fn(inputs[0])
    fn(inputs[-1])
    times = []
    for i, x in enumerate(inputs):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
        if (i + 1) % max(1, len(inputs) // 4) == 0:
            print(f"  {label}: {i + 1}/{len(inputs)} calls, {np.sum(times):.1f}s", flush=True)
    return np.array(times)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # absl's INFO default would print TensorFlow's save chatter
    recipe, batch = FLAGS.recipe, FLAGS.batch
    size = FLAGS.image_size or (32 if recipe == CIFAR_RECIPE else 224)
    if not FLAGS.data:
        raise SystemExit("bench_serving.py: no real data: pass --data=<root> or set KERAS_RESNET_DATA.")
    encoded, class_names = _real_images(recipe, pathlib.Path(FLAGS.data), max(batch, 64))
    pixels = [tf.io.decode_image(b, channels=3, expand_animations=False).numpy() for b in encoded]
    mean = np.mean([p.reshape(-1, 3).mean(0) for p in pixels], 0).astype(np.float32)
    info = DataInfo(
        name=recipe,
        recipe=recipe,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        image_size=size,
        resize_size=size if recipe == CIFAR_RECIPE else round(size * 256 / 224),
        mean=np.broadcast_to(mean, (size, size, 3)).copy() if recipe == CIFAR_RECIPE else mean,
        train_examples=0,
    )
    model = build_model(FLAGS.model, num_classes=info.num_classes, input_shape=(size, size, 3))
    views = np.concatenate([eval_preprocess(p[None], info).numpy() for p in pixels])
    same_size = np.stack([tf.image.resize(p, (size, size)).numpy().astype(np.uint8) for p in pixels])

    with tempfile.TemporaryDirectory() as tmp:
        print(f"Exporting {FLAGS.model} ({recipe}, {size}x{size}) ...", flush=True)
        served = tf.saved_model.load(str(serving.export(model, info, tmp)))
        images_fn = served.signatures[signatures.IMAGES_SIGNATURE]
        pixels_fn = served.signatures[signatures.PIXELS_UINT8_SIGNATURE]
        n1, nb = FLAGS.latency_calls, FLAGS.batch_calls
        one = [encoded[i % len(encoded)] for i in range(n1)]
        runs = {
            ("serving_default (encoded)", 1): _time_calls(
                lambda b: images_fn(images=tf.constant([b])), one, "serving_default x1"
            ),
            ("serving_default (encoded)", batch): _time_calls(
                lambda _: images_fn(images=tf.constant(encoded[:batch])),
                range(nb),
                f"serving_default x{batch}",
            ),
            ("predict_pixels_uint8", batch): _time_calls(
                lambda _: pixels_fn(pixels=tf.constant(same_size[:batch])),
                range(nb),
                f"predict_pixels_uint8 x{batch}",
            ),
            ("keras model.predict (views)", 1): _time_calls(
                lambda i: model.predict(views[i % len(views)][None], verbose=0), range(n1), "model.predict x1"
            ),
            ("keras model.predict (views)", batch): _time_calls(
                lambda _: model.predict(views[:batch], batch_size=batch, verbose=0),
                range(nb),
                f"model.predict x{batch}",
            ),
        }

    load = os.getloadavg()
    rows = [
        {
            "path": path,
            "batch": b,
            "p50_ms": float(np.percentile(t, 50) * 1e3),
            "p99_ms": float(np.percentile(t, 99) * 1e3),
            "images_per_s": float(b * len(t) / t.sum()),
            "calls": len(t),
        }
        for (path, b), t in runs.items()
    ]
    print(
        f"\n{FLAGS.model}, {recipe} recipe, {size}x{size}, load average {load[0]:.2f}, {os.cpu_count()} CPUs"
    )
    print(f"{'path':30} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'images/s':>9}")
    for r in rows:
        print(
            f"{r['path']:30} {r['batch']:5d} {r['p50_ms']:9.2f} {r['p99_ms']:9.2f} {r['images_per_s']:9.1f}"
        )
    if FLAGS.json:
        result = {
            "model": FLAGS.model,
            "recipe": recipe,
            "image_size": size,
            "device": "cpu" if not tf.config.list_physical_devices("GPU") else "gpu",
            "cpus": os.cpu_count(),
            "load_average": load,
            "rows": rows,
        }
        path = pathlib.Path(FLAGS.json)
        files.write_json(path, result, indent=2)
        print(f"Wrote {path}")


if __name__ == "__main__":
    app.run(main)
