"""What a SavedModel carries besides its graph: TF Serving's warmup requests, and a line that shows
what an export predicts for one real image."""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from keras_resnet.data.info import DataInfo
from keras_resnet.serving.signatures import (
    CLASS_NAMES,
    IMAGES,
    IMAGES_SIGNATURE,
    PIXELS,
    PIXELS_SIGNATURE,
    PIXELS_UINT8_SIGNATURE,
    PROBABILITIES,
)

WARMUP_FILE = "tf_serving_warmup_requests"


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


def warmup_images(info: DataInfo) -> list[np.ndarray]:
    """Smooth synthetic RGB images: one at the view size, one larger and not square."""
    s = info.image_size
    images = []
    for h, w in ((s, s), (2 * s + 7, 3 * s + 1)):
        y, x = np.mgrid[0:h, 0:w]
        images.append(np.stack([255 * y / h, 255 * x / w, 128 + 0 * x], -1).astype(np.uint8))
    return images


def write_requests(path: pathlib.Path, info: DataInfo) -> None:
    """A few `PredictionLog`s for each signature, the requests a client would send."""
    images = warmup_images(info)
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
