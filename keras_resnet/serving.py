"""SavedModel export for TensorFlow Serving (TensorFlow-specific).

The export is self-contained: decoding, the evaluation view and the training mean are ops and
constants in the graph, so `tensorflow/serving` (or `tf.saved_model.load` without Keras) serves it.

Layout: `<export_base>/<version>/{saved_model.pb, variables/, assets/, assets.extra/}`, where
`assets.extra/` holds `tf_serving_warmup_requests` (replayed by the model server on load) and a
copy of the run's `data_info.json`. Each version is built in a hidden temporary directory beside
it and renamed into place, so a polling model server never sees half a version.

Signatures (names are stable; see export/README.md):
- `serving_default`: `images` tf.string [batch] of encoded JPEG or PNG, any size.
- `predict_pixels`: `pixels` tf.float32 [batch, height, width, 3], RGB in 0..255.
- `predict_pixels_uint8`: `pixels` tf.uint8 [batch, height, width, 3].
Each returns `probabilities` float32 [batch, num_classes], `classes` int32 [batch, k] (top-k label
indices, best first) and `class_names` tf.string [batch, k].
"""

from __future__ import annotations

import json
import pathlib

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

import keras_resnet  # noqa: F401  (registers the layers and objects that model.keras refers to)
from keras_resnet import files, models, workarounds
from keras_resnet.preprocessing import DataInfo, eval_preprocess

IMAGES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "predict_pixels"
PIXELS_UINT8_SIGNATURE = "predict_pixels_uint8"
SIGNATURES = (IMAGES_SIGNATURE, PIXELS_SIGNATURE, PIXELS_UINT8_SIGNATURE)
IMAGES = "images"
PIXELS = "pixels"
PROBABILITIES = "probabilities"
CLASSES = "classes"
CLASS_NAMES = "class_names"
WARMUP_FILE = "tf_serving_warmup_requests"

# A decoded image costs 3 bytes per pixel as uint8 and 12 as float32 before the resize: 4096^2
# pixels is ~200 MB per in-flight image, enough for phone photos and far from a server's memory.
DEFAULT_MAX_PIXELS = 4096 * 4096

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC


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
    max_pixels: int = DEFAULT_MAX_PIXELS,
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
        ValueError: bad `version`, `top_k` or `max_pixels`, or a model that does not fit `info`.
    """
    _check_model(model, info)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}.")
    base = files.check_writable(export_base, "--export_base")
    # One exporter at a time per base: two would race for the same version number.
    with files.DirLock(base, purpose="export"):
        files.remove_stale_temporaries(base)  # versions half-written by killed exports
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
    # Decided on the model itself: the averaged model ends in an Average layer either way.
    softmax_inside = getattr(model.layers[-1], "activation", None) is keras.activations.softmax
    served = models.with_test_time_augmentation(model, tta)
    # Built in a hidden, non-numeric folder beside the target (TF Serving's poller ignores it; the
    # rename stays on one filesystem and is atomic), readable by a server running as another user.
    with files.staging_dir(target) as tmp:
        archive = _archive(served, info, min(top_k, info.num_classes), max_pixels, softmax_inside)
        archive.write_out(str(tmp), verbose=False)
        (tmp / "assets").mkdir(exist_ok=True)  # TF Serving's documented layout has it, even empty.
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        _write_warmup(extra / WARMUP_FILE, info)
        info.save(extra)
    return target


def example_prediction(export_path: str | pathlib.Path, image: np.ndarray, true_name: str = "") -> str:
    """One line: what the SavedModel at `export_path` predicts for `image` (uint8 [H, W, 3]), sent as
    PNG bytes to `serving_default` exactly as a TF Serving client would send it."""
    served = tf.saved_model.load(str(export_path))
    png = tf.io.encode_png(tf.constant(image, tf.uint8)).numpy()
    out = served.signatures[IMAGES_SIGNATURE](**{IMAGES: tf.constant([png])})
    name = out[CLASS_NAMES].numpy()[0][0].decode()
    p = float(tf.reduce_max(out[PROBABILITIES][0]))
    truth = f" (true class {true_name!r})" if true_name else ""
    return (
        f"the exported model predicts {name!r} with p={p:.3f} for held-out test image 0{truth}, "
        f"a {image.shape[1]}x{image.shape[0]} PNG sent to {IMAGES_SIGNATURE}"
    )


def export_run(
    model_dir: str | pathlib.Path,
    export_base: str | pathlib.Path,
    *,
    version: int | None = None,
    top_k: int = 5,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    tta: str | None = None,
) -> pathlib.Path:
    """Exports a training run: `<model_dir>/model.keras` with its `<model_dir>/data_info.json`.

    `tta` None serves the run's own test-time augmentation (its `config.json`), which is what the
    run's test error was measured with. See `export` for the other arguments.
    """
    model_dir = pathlib.Path(model_dir)
    missing = [n for n in ("model.keras", "data_info.json") if not (model_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{model_dir} has no {' or '.join(missing)}: pass the directory of a training run "
            f"(train.py --model_dir) as --model_dir."
        )
    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True, compile=False)
    info = DataInfo.load(model_dir)
    config = model_dir / "config.json"  # absent: a model put there by hand, served as it is
    if tta is None and config.is_file():
        try:
            tta = json.loads(config.read_text()).get("tta", "none")
        except (OSError, ValueError, AttributeError) as err:
            raise ValueError(
                f"{config} cannot be read ({type(err).__name__}) to find the run's test-time "
                "augmentation: pass --tta."
            ) from None
    tta = tta or "none"
    return export(model, info, export_base, version=version, top_k=top_k, max_pixels=max_pixels, tta=tta)


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


def _decode_images(images: tf.Tensor, info: DataInfo, max_pixels: int) -> tf.Tensor:
    """Encoded JPEG/PNG strings [B] -> evaluation views float32 [B, S, S, 3], mean-subtracted."""

    def one(indexed: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        index, image = indexed  # the index makes errors name the offending image of the request
        is_jpeg = tf.equal(tf.strings.substr(image, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
        # A PNG's IHDR chunk stores width and height big-endian at bytes 16..24.
        is_png = tf.logical_and(
            tf.equal(tf.strings.substr(image, 0, len(_PNG_MAGIC)), _PNG_MAGIC),
            tf.strings.length(image) >= 24,
        )
        known = tf.debugging.Assert(
            tf.logical_or(is_jpeg, is_png),
            ["Image", index, "of the request is neither JPEG nor PNG (bad or empty image bytes)."],
        )
        # A cut-off file would fail inside the decoder with no word of which image it was.
        length = tf.strings.length(image)

        def ends_with(marker: bytes) -> tf.Tensor:
            start = tf.maximum(length - len(marker), 0)
            return tf.equal(tf.strings.substr(image, start, len(marker)), marker)

        def has_jpeg_end() -> tf.Tensor:
            # FF D9 anywhere after the scan starts, not only as the last bytes: phones append data
            # (motion photos' video, vendor trailers), which decoders skip. The header's segments
            # are stepped over by their lengths, as an EXIF thumbnail in them ends in FF D9 of its
            # own; inside the scan the coder escapes FF bytes, so FF D9 there is the end marker.
            data = tf.cast(tf.io.decode_raw(image, tf.uint8), tf.int32)
            n = tf.size(data)

            def in_header(pos):
                safe = tf.minimum(pos, tf.maximum(n - 2, 0))
                return tf.logical_and(
                    pos + 3 < n,
                    tf.logical_and(tf.equal(data[safe], 0xFF), tf.not_equal(data[safe + 1], 0xDA)),
                )

            def next_segment(pos):
                safe = tf.minimum(pos, tf.maximum(n - 4, 0))
                return pos + 2 + data[safe + 2] * 256 + data[safe + 3]  # the length counts itself

            scan = tf.while_loop(in_header, next_segment, [tf.constant(2)])[0]
            end = tf.logical_and(tf.equal(data[:-1], 0xFF), tf.equal(data[1:], 0xD9))
            return tf.reduce_any(tf.logical_and(end, tf.range(tf.maximum(n - 1, 0)) >= scan))

        with tf.control_dependencies([known]):
            complete = tf.cond(is_jpeg, has_jpeg_end, lambda: ends_with(_PNG_END))
        whole = tf.debugging.Assert(
            complete,
            [
                "Image",
                index,
                "of the request is truncated: a JPEG must hold its end-of-image marker (FF D9), a PNG "
                "end with its IEND chunk.",
            ],
        )
        # After the completeness check, which must speak first: a JPEG cut inside its header fails
        # in the header reader too, without the image's index.
        with tf.control_dependencies([whole]):
            # Read the size from the header so that an oversized image is refused before decoding.
            height_width = tf.cond(
                is_jpeg,
                lambda: tf.cast(tf.io.extract_jpeg_shape(image)[:2], tf.int64),
                lambda: tf.cast(
                    tf.io.decode_raw(tf.strings.substr(image, 16, 8), tf.int32, little_endian=False)[::-1],
                    tf.int64,
                ),
            )
        small = tf.debugging.Assert(
            height_width[0] * height_width[1] <= max_pixels,
            [
                "Image",
                index,
                "of the request is too large: its height and width",
                height_width,
                f"exceed the {max_pixels} pixels this export accepts (export.py --max_pixels).",
            ],
        )
        with tf.control_dependencies([whole, small]):
            pixels = tf.io.decode_image(image, channels=3, dtype=tf.uint8, expand_animations=False)
        return eval_preprocess(pixels[tf.newaxis], info)[0]

    view = tf.TensorSpec([info.image_size, info.image_size, 3], tf.float32)
    return tf.map_fn(one, (tf.range(tf.size(images)), images), fn_output_signature=view)


def _archive(
    model: keras.Model, info: DataInfo, k: int, max_pixels: int, softmax_inside: bool
) -> keras.export.ExportArchive:
    names = tf.constant(list(info.class_names), tf.string)

    def classify(views: tf.Tensor) -> dict[str, tf.Tensor]:
        out = tf.cast(model(views, training=False), tf.float32)
        probabilities = out if softmax_inside else tf.nn.softmax(out)
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
        return predict(_decode_images(images, info, max_pixels))

    def serve_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return predict(eval_preprocess(pixels, info))

    archive = keras.export.ExportArchive()
    archive.track(model)
    workarounds.export_each_variable_once(archive)
    archive.add_endpoint(
        IMAGES_SIGNATURE, serve_images, input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES)]
    )
    for name, dtype in ((PIXELS_SIGNATURE, tf.float32), (PIXELS_UINT8_SIGNATURE, tf.uint8)):
        archive.add_endpoint(
            name, serve_pixels, input_signature=[tf.TensorSpec([None, None, None, 3], dtype, name=PIXELS)]
        )
    return archive


def _warmup_images(info: DataInfo) -> list[np.ndarray]:
    """Smooth synthetic RGB images: one at the view size, one larger and not square."""
    s = info.image_size
    images = []
    for h, w in ((s, s), (2 * s + 7, 3 * s + 1)):
        y, x = np.mgrid[0:h, 0:w]
        images.append(np.stack([255 * y / h, 255 * x / w, 128 + 0 * x], -1).astype(np.uint8))
    return images


def _write_warmup(path: pathlib.Path, info: DataInfo) -> None:
    """A few `PredictionLog`s for each signature, the requests a client would send."""
    images = _warmup_images(info)
    encoded = [tf.io.encode_jpeg(images[0]).numpy(), tf.io.encode_png(images[1]).numpy()]
    requests = [
        (IMAGES_SIGNATURE, IMAGES, tf.make_tensor_proto(encoded[:1])),
        (IMAGES_SIGNATURE, IMAGES, tf.make_tensor_proto(encoded)),
        (PIXELS_SIGNATURE, PIXELS, tf.make_tensor_proto(images[0][None].astype(np.float32))),
        (PIXELS_UINT8_SIGNATURE, PIXELS, tf.make_tensor_proto(images[0][None])),
    ]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, input_name, tensor in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            request.inputs[input_name].CopyFrom(tensor)
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
