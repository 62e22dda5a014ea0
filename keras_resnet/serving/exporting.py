"""SavedModel export for TensorFlow Serving (TensorFlow-specific).

The export is self-contained: decoding, the evaluation view and the training mean are ops and
constants in the graph, so `tensorflow/serving` (or `tf.saved_model.load` without Keras) serves it.
The network inside is `serving.inference`'s: batch norms folded into the convolutions, float32.

Layout: `<export_base>/<version>/{saved_model.pb, variables/, assets/, assets.extra/}`, where
`assets.extra/` holds `tf_serving_warmup_requests` (replayed by the model server on load) and a
copy of the run's `data_info.json`. Each version is built in a hidden temporary directory beside
it and renamed into place, so a polling model server never sees half a version.

Signatures: `signatures` (names are stable; see export/README.md). `train.py --export_dir`, a
search's winner and `export/export.py` all export through `export_run`, from the run's saved
`model.keras`: one path, and each variable stored once.
"""

from __future__ import annotations

import pathlib

import keras
import tensorflow as tf

from keras_resnet import files, workarounds
from keras_resnet.config import MAX_PIXELS
from keras_resnet.data.info import DataInfo
from keras_resnet.data.recipes import eval_preprocess
from keras_resnet.rundir import RunDir, among_run_files, refuse_foreign_export
from keras_resnet.serving import warmup
from keras_resnet.serving.decode import decode_images
from keras_resnet.serving.inference import Inference
from keras_resnet.serving.shipped import shipped_net
from keras_resnet.serving.signatures import (
    CLASS_NAMES,
    CLASSES,
    IMAGES,
    IMAGES_SIGNATURE,
    PIXELS,
    PIXELS_SIGNATURE,
    PIXELS_UINT8_SIGNATURE,
    PROBABILITIES,
    SIGNATURES,  # noqa: F401  (re-exported)
)

# A version's size, measured on the digits: ResNet-8 0.62 MB for 0.30 MB of weights, ResNet-20
# 1.56 MB for 1.08 MB (the folded weights once in variables/, keras-team/keras#23553 worked
# around, and a graph of about half a megabyte). Asked for before writing: a quarter more than
# the weights and a megabyte, so that a disk without it is refused rather than filled mid-write.
ROOM_PER_WEIGHT_BYTE, ROOM_FOR_GRAPH = 1.25, 1 << 20


def room_needed(model: keras.Model) -> int:
    """Bytes asked free before a version of `model` is written (`ROOM_PER_WEIGHT_BYTE`)."""
    return int(ROOM_PER_WEIGHT_BYTE * sum(int(w.numpy().nbytes) for w in model.weights)) + ROOM_FOR_GRAPH


def next_version(export_base: str | pathlib.Path) -> int:
    """The next free version under `export_base`: one above the highest existing, or 1."""
    base = pathlib.Path(export_base)
    versions = [int(p.name) for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
    return max(versions, default=0) + 1


def export(
    model: keras.Model,
    info: DataInfo,
    export_base: str | pathlib.Path,
    *,
    version: int | None = None,
    top_k: int = 5,
    max_pixels: int = MAX_PIXELS,
    tta: str = "none",
) -> pathlib.Path:
    """Writes `model` as version `version` (default: the next free one) of a servable.

    Args:
        model: a classifier taking [batch, S, S, 3] evaluation views (`eval_preprocess` output);
            its output may be softmax probabilities or logits (softmax is then added).
        info: the `DataInfo` the model was trained with (view size, mean, class names).
        export_base: the model's base path for TF Serving; created if missing.
        version: positive integer; an existing version is never overwritten.
        top_k: how many labels `classes` / `class_names` return (capped at the class count).
        max_pixels: encoded images whose header declares more pixels are refused before decoding.
        tta: test-time augmentation inside the graph: the mean over the views of
            `models.TTA_VIEWS[tta]` ("none", "flip", "flip_translate").

    Returns:
        The version directory, e.g. `<export_base>/3`.

    Raises:
        FileExistsError: the version already exists.
        files.ForeignFiles: `export_base` holds files that are not versions (the user's: untouched).
        files.NoRoom: too little free space for the version (estimated from the weights).
        ValueError: bad `version`, `top_k` or `max_pixels`, or a model that does not fit `info`.
    """
    _check_model(model, info)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}.")
    refuse_foreign_export(export_base, "--export_base")  # the user's files: before anything is written
    base = files.check_writable(export_base, "--export_base")
    # One exporter at a time per base: two would race for the same version number.
    with files.DirLock(base, purpose="export"):
        files.remove_stale_temporaries(base)  # versions half-written by killed exports
        files.check_room(base, room_needed(model), "--export_base", "this export")
        return _export_version(model, info, base, version, top_k, max_pixels, tta)


def _export_version(model, info, base: pathlib.Path, version, top_k, max_pixels, tta) -> pathlib.Path:
    if version is None:
        version = next_version(base)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer (TF Serving's convention), got {version!r}.")
    target = base / str(version)
    if target.exists():
        raise FileExistsError(
            f"{target} already exists: versions are never overwritten. Pass another version, or "
            f"none to take the next free one ({next_version(base)})."
        )
    served = Inference(model, tta)
    # Built in a hidden, non-numeric folder beside the target (TF Serving's poller ignores it; the
    # rename stays on one filesystem and is atomic), readable by a server running as another user.
    with files.staging_dir(target) as tmp:
        archive = _archive(served, info, min(top_k, info.num_classes), max_pixels)
        archive.write_out(str(tmp), verbose=False)
        (tmp / "assets").mkdir(exist_ok=True)  # TF Serving's documented layout has it, even empty.
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        warmup.write_requests(extra / warmup.WARMUP_FILE, info)
        info.save(extra)
    return target


def export_run(
    model_dir: str | pathlib.Path,
    export_base: str | pathlib.Path,
    *,
    version: int | None = None,
    top_k: int = 5,
    max_pixels: int = MAX_PIXELS,
    tta: str | None = None,
) -> pathlib.Path:
    """Exports a training run: `<model_dir>/model.keras` with its `<model_dir>/data_info.json`.

    `tta` None serves the run's own test-time augmentation (its `config.json`), which is what the
    run's test error was measured with. See `export` for the other arguments.
    """
    run = RunDir(model_dir)
    missing = [p.name for p in (run.model, run.data_info) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run.path} has no {' or '.join(missing)}: pass the directory of a training run "
            f"(train.py --model_dir) as --model_dir."
        )
    if among_run_files(export_base, run.path):  # versions among a run's files: no longer its folder
        raise ValueError(
            f"--export_base={export_base} is the run's folder or one of its files: export beside it, "
            f"e.g. --export_base={run.path / 'export'}."
        )
    model = run.load_model(compile=False)  # a damaged model.keras: `DamagedFile`, with the way out
    info = DataInfo.load(run.path)
    if tta is None and run.config.is_file():  # absent: a model put there by hand, served as it is
        try:
            tta = run.read_config().run.tta
        except ValueError as err:
            raise ValueError(f"{err} Or pass --tta.") from None
    tta = tta or "none"
    return export(model, info, export_base, version=version, top_k=top_k, max_pixels=max_pixels, tta=tta)


def export_shipped(
    name: str,
    export_base: str | pathlib.Path,
    *,
    weights: str = "cifar10",
    version: int | None = None,
    top_k: int = 5,
    max_pixels: int = MAX_PIXELS,
    tta: str | None = None,
) -> pathlib.Path:
    """Exports a net this package ships (`shipped.shipped_net`) as a trained run's export: the same
    signatures, the mean image and class names of the run that trained it; single-view unless `tta`."""
    model, info = shipped_net(name, weights)
    return export(
        model,
        info,
        export_base,
        version=version,
        top_k=top_k,
        max_pixels=max_pixels,
        tta=tta or "none",
    )


def _check_model(model: keras.Model, info: DataInfo) -> None:
    want = (info.image_size, info.image_size, 3)
    if tuple(model.input_shape[1:]) != want:
        raise ValueError(
            f"Model {model.name} takes inputs of shape {model.input_shape[1:]}, but data_info.json "
            f"says the evaluation view is {want}: the model and the data info come from different runs."
        )
    if model.output_shape[-1] != info.num_classes:
        raise ValueError(
            f"Model {model.name} has {model.output_shape[-1]} outputs, but data_info.json lists "
            f"{info.num_classes} classes: the model and the data info come from different runs."
        )


def _archive(served: Inference, info: DataInfo, k: int, max_pixels: int) -> keras.export.ExportArchive:
    names = tf.constant(list(info.class_names), tf.string)

    def classify(views: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = served(views)
        top = tf.math.top_k(probabilities, k=k).indices
        return {PROBABILITIES: probabilities, CLASSES: top, CLASS_NAMES: tf.gather(names, top)}

    def nothing() -> dict[str, tf.Tensor]:
        return {
            PROBABILITIES: tf.zeros([0, info.num_classes], tf.float32),
            CLASSES: tf.zeros([0, k], tf.int32),
            CLASS_NAMES: tf.zeros([0, k], tf.string),
        }

    def predict(views: tf.Tensor) -> dict[str, tf.Tensor]:
        # An empty request gets an empty answer (batch norm would fail on a batch of 0 images).
        return tf.cond(tf.shape(views)[0] > 0, lambda: classify(views), nothing)

    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return predict(decode_images(images, info, max_pixels))

    def serve_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        if pixels.dtype.is_floating:  # NaN in, NaN probabilities and arbitrary classes out: refused
            pixels = tf.debugging.assert_all_finite(pixels, "pixels must be finite RGB values in 0..255")
        return predict(eval_preprocess(pixels, info))

    archive = keras.export.ExportArchive()
    archive.track(served.network)
    workarounds.export_each_variable_once(archive)
    archive.add_endpoint(
        IMAGES_SIGNATURE, serve_images, input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES)]
    )
    for name, dtype in ((PIXELS_SIGNATURE, tf.float32), (PIXELS_UINT8_SIGNATURE, tf.uint8)):
        archive.add_endpoint(
            name, serve_pixels, input_signature=[tf.TensorSpec([None, None, None, 3], dtype, name=PIXELS)]
        )
    return archive
