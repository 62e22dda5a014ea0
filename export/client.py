"""Classifies image files with a model served by TF Serving, over REST or gRPC.

    python export/client.py --model_name resnet20 cat.jpg dog.png
    python export/client.py --model_name resnet20 --protocol grpc --server host:8500 cat.jpg

Needs no Keras and no project code: REST uses only the standard library; gRPC needs
`tensorflow-serving-api` (which brings TensorFlow for the tensor protos). The images are sent
encoded to the `serving_default` signature, which decodes and preprocesses them in the graph.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request

from absl import app, flags

SIGNATURE = "serving_default"
INPUT = "images"
OUTPUTS = ("probabilities", "classes", "class_names")

flags.DEFINE_enum("protocol", "rest", ["rest", "grpc"], "REST (port 8501) or gRPC (port 8500).")
flags.DEFINE_string("server", None, "host:port of the model server; default localhost:8501 (REST) or :8500.")
flags.DEFINE_string("model_name", "resnet", "Model name the server serves (MODEL_NAME or models.config).")
flags.DEFINE_integer("version", None, "Model version to ask for; default: the server's latest.")
flags.DEFINE_float("timeout", 30.0, "Seconds to wait for the answer.")


def rest_body(images: list[bytes]) -> dict:
    """The JSON body of a REST predict call: row format, images base64-encoded as `{"b64": ...}`."""
    return {
        "signature_name": SIGNATURE,
        "instances": [{INPUT: {"b64": base64.b64encode(image).decode("ascii")}} for image in images],
    }


def predict_rest(server: str, model_name: str, images: list[bytes], *, version=None, timeout=30.0) -> list:
    """POSTs to `/v1/models/<name>[/versions/<v>]:predict`; returns one dict of outputs per image."""
    path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version else "") + ":predict"
    request = urllib.request.Request(
        f"http://{server}{path}",
        data=json.dumps(rest_body(images)).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)["predictions"]
    except urllib.error.HTTPError as err:
        # TF Serving explains bad requests (e.g. an undecodable image) in the JSON body.
        raise RuntimeError(f"{server} answered {err.code}: {err.read().decode(errors='replace')}") from None
    except urllib.error.URLError as err:
        raise RuntimeError(f"Cannot reach {server} ({err.reason}): is the model server running?") from None
    except TimeoutError:  # connected, but no answer in time (a read timeout is not a URLError)
        raise RuntimeError(f"{server} did not answer within {timeout:g} s: raise --timeout?") from None


def predict_request(images: list[bytes], model_name: str, *, version: int | None = None):
    """A gRPC `PredictRequest` for `serving_default` carrying the encoded images."""
    import tensorflow as tf  # Imported here so that the REST path runs without TensorFlow.
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = SIGNATURE
    if version:
        request.model_spec.version.value = version
    request.inputs[INPUT].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def predict_grpc(server: str, request, *, timeout=30.0) -> list:
    """Sends `request` over gRPC; returns one dict of outputs per image, like `predict_rest`."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    # Encoded photos are larger than gRPC's default 4 MB message limit allows for a batch.
    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    with grpc.insecure_channel(server, options=options) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=timeout
        )
    outputs = {name: tf.make_ndarray(response.outputs[name]).tolist() for name in OUTPUTS}
    names = [[n.decode() for n in row] for row in outputs["class_names"]]
    return [
        {"probabilities": p, "classes": c, "class_names": n}
        for p, c, n in zip(outputs["probabilities"], outputs["classes"], names, strict=True)
    ]


def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        raise app.UsageError("Pass one or more image files (JPEG or PNG).")
    try:
        images = [open(path, "rb").read() for path in paths]
    except OSError as err:
        sys.exit(f"client.py: error: cannot read image: {err}")
    FLAGS = flags.FLAGS
    try:
        if FLAGS.protocol == "rest":
            server = FLAGS.server or "localhost:8501"
            predictions = predict_rest(
                server, FLAGS.model_name, images, version=FLAGS.version, timeout=FLAGS.timeout
            )
        else:
            try:
                import grpc
                from tensorflow_serving.apis import predict_pb2  # noqa: F401  (checked here, used below)
            except ImportError as err:
                raise RuntimeError(
                    f"--protocol=grpc needs {err.name}: pip install tensorflow-serving-api (or use REST)"
                ) from None
            server = FLAGS.server or "localhost:8500"
            request = predict_request(images, FLAGS.model_name, version=FLAGS.version)
            try:
                predictions = predict_grpc(server, request, timeout=FLAGS.timeout)
            except grpc.RpcError as err:
                raise RuntimeError(f"{server} answered {err.code().name}: {err.details()}") from None
    except RuntimeError as err:
        sys.exit(f"client.py: error: {err}")
    for path, prediction in zip(paths, predictions, strict=True):
        top = ", ".join(
            f"{name} {prediction['probabilities'][c]:.3f}"
            for c, name in zip(prediction["classes"], prediction["class_names"], strict=True)
        )
        print(f"{path}: {top}")


if __name__ == "__main__":
    app.run(main)
