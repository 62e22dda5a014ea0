"""Serving speed: the exported SavedModel alone, or against Keras and PyTorch, on the same real images.

    python bench/bench_serving.py --model resnet20 --against=keras,torch --json results/bench_serving.json
    python bench/bench_serving.py --model resnet50 --recipe imagenet --against=keras,torch --json ...

Exports a randomly initialised model (speed does not depend on the weights), loads the export as
TF Serving does (`tf.saved_model.load`, then `.signatures[name]`; its
`assets.extra/tf_serving_warmup_requests` replayed once, as the model server replays it on load)
and times, at each of --batches (1, 8, 64, 256):

  framework   path                   input
  tensorflow  predict_pixels_uint8   uint8 pixels at the view size (preprocessing in the graph)
  tensorflow  serving_default        the JPEGs (decoding and preprocessing in the graph)
  --against=keras:
  keras       model.predict          the float32 evaluation views (preprocessing not timed)
  keras       kr.load predict        `serving.Classifier(model, info).predict`, what
                                     `kr.load(run).predict` runs, on the uint8 pixels
  --against=torch (the `bench` extra: pip install -e '.[bench]'), the same net in PyTorch
  (bench/torch_resnet20.py, bench/torch_resnet50.py, their parameter counts checked equal to the
  Keras net's) on the views, under torch.inference_mode, channels_last:
  pytorch     eager                  the nn.Module
  pytorch     jit.trace+freeze       TorchScript, traced and frozen
  pytorch     torch.compile          inductor, one static graph per batch size

--against=none (the default) times the export's rows alone, as does --against=torch where torch
does not import (after one line saying so). Every call ends with the probabilities as NumPy. The
PyTorch and model.predict rows time the network alone on ready views; the export's include
decoding and preprocessing (which flatters the others).

- Interleaved: each of --rounds rounds times every path at every batch, the frameworks taking
  turns at each batch (A B A B), so a shared machine's drift falls on all of them; a row pools
  the calls of every round (p50, p99) and lists each round's images/s.
- Calls: --calls_batch1 (300) at batch 1 and --calls_batch64 (50) at 64, log-linear in the batch
  between and beyond (122 at 8, 28 at 256), split over the rounds (rounded up); before each
  path's calls at each batch, --warmup_calls untimed ones (the first compiles torch.compile's graph).
- Threads: PyTorch `torch.set_num_threads(os.cpu_count())`; TensorFlow at its defaults (intra-
  and inter-op pools of the machine's cores), as a process that loads the export runs it; or
  --threads=N intra-op threads for both (TF Serving's --tensorflow_intra_op_parallelism=N), and
  --inter_op_threads=M TensorFlow's inter-op pool (--tensorflow_inter_op_parallelism=M). Both
  live in this one process; the framework not timing waits idle.
- Memory: the peak RSS (VmHWM) of a fresh process holding only the loaded export after the warmup
  replay, and of one holding only the eager PyTorch net after one call.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

from keras_resnet import runtime

runtime.start_command()  # first: TensorFlow starts with oneDNN on, and quietly

# isort: split

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from tensorflow_serving.apis import prediction_log_pb2

from keras_resnet import build_model, files, models, serving
from keras_resnet.data.info import CIFAR_RECIPE, DataInfo
from keras_resnet.data.recipes import eval_preprocess
from keras_resnet.models import specs
from keras_resnet.serving import signatures, warmup

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # torch_serving.py and the PyTorch nets beside this script
from serving_timing import (  # noqa: E402
    Path,
    batches_of,
    own_peak_rss_mb,
    peak_rss_mb,
    print_table,
    rows,
    run_rounds,
)

AGAINST = ("none", "keras", "torch")
NO_TORCH = "torch not installed: pip install -e '.[bench]' to compare; timing the export alone"

flags.DEFINE_string("model", "resnet20", "Network to export (a build_model name).")
flags.DEFINE_enum(
    "recipe",
    "cifar",
    ["cifar", "imagenet"],
    "cifar: CIFAR-10 test images as JPEG; imagenet: Imagenette JPEGs.",
)
flags.DEFINE_integer("image_size", None, "Model input side; default 32 (cifar) or 224 (imagenet).")
flags.DEFINE_list(
    "against", ["none"], f"Comma list of {', '.join(AGAINST)}: what the export is timed against."
)
flags.DEFINE_list("batches", ["1", "8", "64", "256"], "Batch sizes, comma list.")
flags.DEFINE_integer("rounds", 2, "Rounds over every path and batch (interleaved); 2 or more to compare.")
flags.DEFINE_integer("calls_batch1", 300, "Timed calls at batch 1 (all rounds together).")
flags.DEFINE_integer("calls_batch64", 50, "Timed calls at batch 64; other batches log-linear in between.")
flags.DEFINE_integer("warmup_calls", 3, "Untimed calls before each path's calls at each batch.")
flags.DEFINE_string(
    "data", os.environ.get("KERAS_RESNET_DATA"), "Real data root (default: $KERAS_RESNET_DATA)."
)
flags.DEFINE_integer(
    "threads",
    0,
    "Intra-op threads of both frameworks (TensorFlow's pool, as TF Serving's "
    "--tensorflow_intra_op_parallelism; torch.set_num_threads); 0: every core for each.",
)
flags.DEFINE_integer(
    "inter_op_threads",
    0,
    "TensorFlow's inter-op threads (TF Serving's --tensorflow_inter_op_parallelism); 0: its default.",
)
flags.DEFINE_string("json", None, "Write the results here as JSON.")
FLAGS = flags.FLAGS

# A process holding only the export: TensorFlow and the serving protos, none of Keras or this
# package (which this script imports), so its peak RSS is the export's as a server loads it.
_HOLD_EXPORT = """
import sys
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
served = tf.saved_model.load(sys.argv[1])
for record in tf.data.TFRecordDataset(sys.argv[2]):
    request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
    inputs = {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}
    served.signatures[request.model_spec.signature_name](**inputs)
status = open("/proc/self/status").read().splitlines()
print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024)
"""


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
    paths = sorted(root.glob("*/*.JPEG"))
    paths = paths[:: max(1, len(paths) // n)][:n]  # spread over the classes
    if len(paths) < n:
        raise SystemExit(f"bench_serving.py: {root} has {len(paths)} images, fewer than the batch of {n}.")
    return [f.read_bytes() for f in paths], classes


def _data_info(recipe: str, class_names: list[str], size: int, pixels: list[np.ndarray]) -> DataInfo:
    """The recipe's evaluation settings with the images' own mean (what training would store)."""
    mean = np.mean([p.reshape(-1, 3).mean(0) for p in pixels], 0).astype(np.float32)
    return DataInfo(
        name=recipe,
        recipe=recipe,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        image_size=size,
        resize_size=size if recipe == CIFAR_RECIPE else round(size * 256 / 224),
        mean=np.broadcast_to(mean, (size, size, 3)).copy() if recipe == CIFAR_RECIPE else mean,
        train_examples=0,
    )


def replay_warmup(served, export_dir: pathlib.Path) -> int:
    """Calls the export's signatures with its TF Serving warmup requests, as the server does on load."""
    records = tf.data.TFRecordDataset(str(export_dir / "assets.extra" / warmup.WARMUP_FILE))
    count = 0
    for record in records:
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        inputs = {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}
        served.signatures[request.model_spec.signature_name](**inputs)
        count += 1
    return count


def export_paths(served, batches, encoded: list[bytes], same_size: np.ndarray) -> list[Path]:
    """The export's two client-facing signatures, called as TF Serving calls them."""
    pixels_fn = served.signatures[signatures.PIXELS_UINT8_SIGNATURE]
    images_fn = served.signatures[signatures.IMAGES_SIGNATURE]
    probabilities = signatures.PROBABILITIES
    return [
        Path(
            "tensorflow",
            signatures.PIXELS_UINT8_SIGNATURE,
            lambda x: pixels_fn(**{signatures.PIXELS: x})[probabilities].numpy(),
            {b: [tf.constant(x) for x in batches_of(same_size, b)] for b in batches},
        ),
        Path(
            "tensorflow",
            signatures.IMAGES_SIGNATURE,
            lambda x: images_fn(**{signatures.IMAGES: x})[probabilities].numpy(),
            {b: [tf.constant(x) for x in batches_of(encoded, b)] for b in batches},
        ),
    ]


def keras_paths(model: keras.Model, info: DataInfo, batches, views, same_size) -> list[Path]:
    """Keras' own predict on the views, and the package's Classifier (kr.load) on the pixels."""
    classifier = serving.Classifier(model, info)
    return [
        Path(
            "keras",
            "model.predict",
            lambda x: model.predict(x, batch_size=len(x), verbose=0),
            {b: batches_of(views, b) for b in batches},
        ),
        Path(
            "keras",
            "kr.load predict",
            lambda x: classifier.predict(x, batch_size=len(x)),
            {b: batches_of(same_size, b) for b in batches},
        ),
    ]


def torch_paths(ts, net, batches, views: np.ndarray) -> list[Path]:
    """PyTorch's three paths (`ts` is bench/torch_serving.py), checked to give the same probabilities."""
    inputs = {b: [ts.as_input(x) for x in batches_of(views, b)] for b in batches}
    example = inputs[min(batches)][0]
    calls = ts.paths(net, example)
    expected = calls[ts.EAGER](example)
    for name, call in calls.items():
        if not np.allclose(call(example), expected, atol=1e-5):
            raise SystemExit(f"bench_serving.py: PyTorch's {name} path disagrees with eager on one batch")
    return [Path("pytorch", name, call, inputs) for name, call in calls.items()]


def _import_torch_serving():
    """bench/torch_serving.py, or None where torch does not import (the export is timed without it)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    import torch_serving

    return torch_serving


def _twin(ts, model: keras.Model, num_classes: int):
    """The PyTorch net of `--model`, refused in one line unless its parameters match the Keras net's."""
    spec = specs.get_spec(FLAGS.model)
    blocks = {block for block, _, _ in spec.stages}
    if not spec.residual or (spec.family == specs.IMAGENET and blocks != {specs.BOTTLENECK}):
        raise SystemExit(
            f"bench_serving.py: --against=torch: no PyTorch twin of {FLAGS.model} "
            "(residual CIFAR nets and ImageNet bottleneck nets only)."
        )
    net = ts.twin(spec.family, tuple(n for _, _, n in spec.stages), num_classes)
    keras_params, torch_params = models.count(model).params, ts.count_params(net)
    if keras_params != torch_params:
        raise SystemExit(
            f"bench_serving.py: the PyTorch {FLAGS.model} has {torch_params:,} parameters, "
            f"the Keras one {keras_params:,}: not the same network."
        )
    return net, torch_params


def _check_flags() -> tuple[set[str], list[int]]:
    against = set(FLAGS.against)
    if unknown := against - set(AGAINST):
        raise app.UsageError(
            f"--against: unknown {', '.join(sorted(unknown))}; choose from {', '.join(AGAINST)}"
        )
    batches = [int(b) for b in FLAGS.batches]
    if min(batches) < 1 or FLAGS.rounds < 1 or min(FLAGS.calls_batch1, FLAGS.calls_batch64) < 1:
        raise app.UsageError("--batches, --rounds and --calls_* must be positive")
    if not FLAGS.data:
        raise SystemExit("bench_serving.py: no real data: pass --data=<root> or set KERAS_RESNET_DATA.")
    return against - {"none"}, batches


def _torch_or_none(against: set[str]):
    """bench/torch_serving.py when --against has torch and it imports; else one line says why not."""
    if "torch" not in against:
        return None
    ts = _import_torch_serving()
    if ts is None:
        against.discard("torch")
        print(NO_TORCH if not against else NO_TORCH.replace("the export alone", "the export and Keras"))
        return None
    ts.start(FLAGS.threads)
    return ts


def _inputs(
    recipe: str, size: int, batches: list[int]
) -> tuple[list[bytes], DataInfo, np.ndarray, np.ndarray]:
    """The real JPEGs, their DataInfo, float32 evaluation views and uint8 pixels at the view size."""
    encoded, class_names = _real_images(recipe, pathlib.Path(FLAGS.data), max(64, *batches))
    pixels = [tf.io.decode_image(b, channels=3, expand_animations=False).numpy() for b in encoded]
    info = _data_info(recipe, class_names, size, pixels)
    views = np.concatenate([eval_preprocess(p[None], info).numpy() for p in pixels])
    same_size = np.stack([tf.image.resize(p, (size, size)).numpy().astype(np.uint8) for p in pixels])
    return encoded, info, views, same_size


def _peak_memory(export_dir: pathlib.Path, ts, info: DataInfo) -> dict[str, float | None]:
    """Peak RSS of a process holding only the export, and of one holding only the eager PyTorch net."""
    warmup_file = export_dir / "assets.extra" / warmup.WARMUP_FILE
    memory = {
        "export_peak_rss_mb": peak_rss_mb(
            [sys.executable, "-c", _HOLD_EXPORT, str(export_dir), str(warmup_file)]
        ),
        "torch_peak_rss_mb": None,
    }
    if ts is not None:
        spec = specs.get_spec(FLAGS.model)
        repeats = ",".join(str(n) for _, _, n in spec.stages)
        holder = [sys.executable, str(BENCH / "torch_serving.py"), f"--family={spec.family}"]
        holder += [f"--repeats={repeats}", f"--classes={info.num_classes}", f"--size={info.image_size}"]
        memory["torch_peak_rss_mb"] = peak_rss_mb(holder)
    return memory


def _machine(ts) -> dict:
    """Where and with what the rows were measured."""
    torch = ts.torch if ts is not None else None
    return {
        "device": "cpu" if not tf.config.list_physical_devices("GPU") else "gpu",
        "cpu": runtime.cpu()[0],
        "cpu_features": runtime.cpu_description(),
        "command": runtime.command_line(),
        "cpus": os.cpu_count(),
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "torch": torch.__version__ if torch else None,
        },
        "threads": {
            "torch": torch.get_num_threads() if torch else None,
            # As TensorFlow holds them (0: its default, a pool of every core).
            "tensorflow": f"intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, "
            f"inter-op {tf.config.threading.get_inter_op_parallelism_threads() or 'default'}",
        },
    }


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # absl's INFO default would print TensorFlow's save chatter
    against, batches = _check_flags()
    if FLAGS.threads:  # before TensorFlow's first op: its pools are made then
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    ts = _torch_or_none(against)
    recipe = FLAGS.recipe
    size = FLAGS.image_size or (32 if recipe == CIFAR_RECIPE else 224)
    encoded, info, views, same_size = _inputs(recipe, size, batches)
    model = build_model(FLAGS.model, num_classes=info.num_classes, input_shape=(size, size, 3))
    params = {"keras": models.count(model).params}
    if ts is not None:  # before the export: a net without a twin is refused at once
        net, params["pytorch"] = _twin(ts, model, info.num_classes)
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"Exporting {FLAGS.model} ({recipe}, {size}x{size}) ...", flush=True)
        export_dir = serving.export(model, info, tmp)
        served = tf.saved_model.load(str(export_dir))
        print(f"Replayed {replay_warmup(served, export_dir)} TF Serving warmup requests", flush=True)
        paths = export_paths(served, batches, encoded, same_size)
        if "keras" in against:
            paths += keras_paths(model, info, batches, views, same_size)
        if ts is not None:
            paths += torch_paths(ts, net, batches, views)
        memory = _peak_memory(export_dir, ts, info)
        times = run_rounds(
            paths, batches, FLAGS.rounds, (FLAGS.calls_batch1, FLAGS.calls_batch64), FLAGS.warmup_calls
        )
    result = {
        "model": FLAGS.model,
        "recipe": recipe,
        "image_size": size,
        "against": sorted(against) or ["none"],
        **_machine(ts),
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg()[0],
        "rounds": FLAGS.rounds,
        "warmup_calls": FLAGS.warmup_calls,
        "params": params,
        **memory,
        "bench_peak_rss_mb": own_peak_rss_mb(),
        "rows": rows(times),
    }
    print_table(result)
    if FLAGS.json:
        path = pathlib.Path(FLAGS.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(path, result, indent=2)
        print(f"Wrote {path}")


if __name__ == "__main__":
    app.run(main)
