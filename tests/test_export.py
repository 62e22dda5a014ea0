"""TF Serving export: the SavedModel serves the Keras model's answers without Keras.

Tiny nets (resnet8) with BatchNorm statistics calibrated on the real images, so that the
probabilities are far from one-hot and a preprocessing mismatch would show.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import textwrap
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from keras_resnet import build_model, files, models, serving
from keras_resnet.config import TrainConfig
from keras_resnet.data.info import DataInfo
from keras_resnet.data.recipes import eval_preprocess
from keras_resnet.models.folding import fold_batch_norm
from keras_resnet.serving import signatures, warmup

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
ATOL = 1e-5


def _calibrated(model: keras.Model, views: np.ndarray) -> keras.Model:
    """Moves BatchNorm's moving statistics to these inputs' (He init + unit moving variance would
    saturate the softmax on 0-255 inputs)."""
    for _ in range(40):
        model(views, training=True)
    return model


def _keras_probabilities(model: keras.Model, images: list[np.ndarray], info: DataInfo) -> np.ndarray:
    """The reference: the Keras model on the evaluation view of each decoded image."""
    return np.concatenate([model(eval_preprocess(im[None], info), training=False).numpy() for im in images])


def _decode(data: bytes) -> np.ndarray:
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


@pytest.fixture(scope="module")
def imagenette(imagenette_dir, tmp_path_factory):
    """An imagenet-recipe run (model.keras + data_info.json) exported with `export_run`.

    Real JPEGs, plus variants a client may send: a non-square PNG crop, an upscaled image and a
    one-channel (grayscale) JPEG.
    """
    class_dirs = sorted(p for p in (imagenette_dir / "val").iterdir() if p.is_dir())
    jpegs = [sorted(d.glob("*.JPEG"))[0].read_bytes() for d in class_dirs[:5]]
    first = _decode(jpegs[0])
    variants = [
        tf.io.encode_png(first[13:110, 5:150]).numpy(),
        tf.io.encode_jpeg(tf.cast(tf.image.resize(first, (301, 257)), tf.uint8)).numpy(),
        tf.io.encode_jpeg(tf.cast(tf.image.rgb_to_grayscale(_decode(jpegs[1])), tf.uint8)).numpy(),
    ]
    encoded = jpegs + variants
    pixels = [_decode(b) for b in encoded]
    info = DataInfo(
        name="imagenette",
        recipe="imagenet",
        num_classes=len(class_dirs),
        class_names=tuple(d.name for d in class_dirs),
        image_size=48,
        resize_size=55,  # the paper's 224/256 ratio
        mean=np.mean([p.reshape(-1, 3).mean(0) for p in pixels], 0).astype(np.float32),
        train_examples=9469,
    )
    model = build_model("resnet8", num_classes=info.num_classes, input_shape=(48, 48, 3))
    views = np.concatenate([eval_preprocess(p[None], info).numpy() for p in pixels])
    _calibrated(model, views)
    run = tmp_path_factory.mktemp("run")
    model.save(run / "model.keras")
    info.save(run)
    base = tmp_path_factory.mktemp("exports") / "resnet8"
    path = serving.export_run(run, base, top_k=3)
    return types.SimpleNamespace(
        model=model, info=info, run=run, base=base, path=path, encoded=encoded, pixels=pixels, k=3
    )


@pytest.fixture(scope="module")
def cifar(tfds_dir, tmp_path_factory):
    """A cifar-recipe model exported with `export`: real CIFAR-10 test images, sent as PNG."""
    import tensorflow_datasets as tfds

    ds, ds_info = tfds.load(
        "cifar10", split="test[:8]", data_dir=str(tfds_dir), download=False, with_info=True
    )
    pixels = np.stack([ex["image"].numpy() for ex in ds])
    info = DataInfo(
        name="cifar10",
        recipe="cifar",
        num_classes=10,
        class_names=tuple(ds_info.features["label"].names),
        image_size=32,
        resize_size=32,
        mean=pixels.astype(np.float32).mean(0),  # a mean image, as the cifar recipe uses
        train_examples=50000,
    )
    model = _calibrated(build_model("resnet8"), eval_preprocess(pixels, info).numpy())
    base = tmp_path_factory.mktemp("exports") / "cifar"
    path = serving.export(model, info, base)
    encoded = [tf.io.encode_png(p).numpy() for p in pixels]
    return types.SimpleNamespace(
        model=model, info=info, base=base, path=path, encoded=encoded, pixels=pixels, k=5
    )


# Runs in a fresh interpreter where Keras and keras_resnet are as good as uninstalled (TensorFlow
# imports Keras by itself when it can find it, so hiding it must come before `import tensorflow`).
_SERVE_WITHOUT_KERAS = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, json, sys

    HIDDEN = ("keras", "keras_resnet", "tf_keras")

    class NotInstalled(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                return importlib.machinery.ModuleSpec(name, self)  # no origin: "not found" to find_spec

        def create_module(self, spec):
            raise ImportError(f"{spec.name} is not installed where the model is served")

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, NotInstalled())
    import numpy as np
    import tensorflow as tf

    for job in json.loads(sys.argv[1]):
        served = tf.saved_model.load(job["path"])
        images = [open(f, "rb").read() for f in job["files"]]
        pixels = list(np.load(job["pixels"], allow_pickle=True))
        results = {"serving_default": served.signatures["serving_default"](images=tf.constant(images))}
        for name, dtype in (("predict_pixels", tf.float32), ("predict_pixels_uint8", tf.uint8)):
            # One request per image: the signature takes a batch of same-size images.
            outs = [served.signatures[name](pixels=tf.constant(p[None], dtype)) for p in pixels]
            results[name] = {k: tf.concat([o[k] for o in outs], 0) for k in outs[0]}
        np.savez(job["out"], **{f"{s}/{k}": v.numpy() for s, r in results.items() for k, v in r.items()})
    leaked = {m.split(".")[0] for m in sys.modules} & set(HIDDEN)
    assert not leaked, leaked
    """
)


@pytest.mark.slow
def test_fresh_process_without_keras_matches_keras_model(imagenette, cifar, tmp_path):
    jobs = []
    for name, ex in (("imagenette", imagenette), ("cifar", cifar)):
        files = []
        for i, data in enumerate(ex.encoded):
            files.append(str(tmp_path / f"{name}{i}"))
            pathlib.Path(files[-1]).write_bytes(data)
        pixels = np.empty(len(ex.pixels), dtype=object)
        pixels[:] = list(ex.pixels)
        np.save(tmp_path / f"{name}.npy", pixels, allow_pickle=True)
        jobs.append(
            {
                "path": str(ex.path),
                "files": files,
                "pixels": str(tmp_path / f"{name}.npy"),
                "out": str(tmp_path / name),
            }
        )
    proc = subprocess.run(
        [sys.executable, "-c", _SERVE_WITHOUT_KERAS, json.dumps(jobs)],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    for (name, ex), job in zip((("imagenette", imagenette), ("cifar", cifar)), jobs, strict=True):
        want = _keras_probabilities(ex.model, ex.pixels, ex.info)
        # The comparison means something only if the model does not answer one-hot everywhere.
        assert want.max(1).min() < 0.99, (name, want.max(1))
        out = np.load(job["out"] + ".npz", allow_pickle=True)  # class_names are byte strings
        for signature in serving.SIGNATURES:
            probabilities = out[f"{signature}/probabilities"]
            classes = out[f"{signature}/classes"]
            names = out[f"{signature}/class_names"]
            np.testing.assert_allclose(probabilities, want, atol=ATOL, err_msg=f"{name} {signature}")
            assert classes.shape == (len(ex.pixels), ex.k)
            np.testing.assert_array_equal(classes[:, 0], probabilities.argmax(1))
            # The k best, best first.
            ranked = np.take_along_axis(probabilities, classes, 1)
            np.testing.assert_array_equal(ranked, -np.sort(-probabilities, 1)[:, : ex.k])
            np.testing.assert_array_equal(names.astype(str), np.array(ex.info.class_names)[classes])


@pytest.mark.slow
def test_saved_model_cli_lists_documented_signatures(imagenette):
    proc = subprocess.run(
        [
            str(pathlib.Path(sys.executable).with_name("saved_model_cli")),
            "show",
            "--dir",
            str(imagenette.path),
            "--all",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    blocks = dict(re.findall(r"signature_def\['(\w+)'\]:\n(.*?)Method name is", proc.stdout, re.S))
    n, k = imagenette.info.num_classes, imagenette.k
    want_inputs = {
        "serving_default": ("images", "DT_STRING", "(-1)"),
        "predict_pixels": ("pixels", "DT_FLOAT", "(-1, -1, -1, 3)"),
        "predict_pixels_uint8": ("pixels", "DT_UINT8", "(-1, -1, -1, 3)"),
    }
    assert set(want_inputs) <= set(blocks), blocks.keys()
    for signature, (name, dtype, shape) in want_inputs.items():
        tensors = re.findall(
            r"(inputs|outputs)\['(\w+)'\] tensor_info:\n\s+dtype: (\w+)\n\s+shape: (.*)\n", blocks[signature]
        )
        assert tensors == [
            ("inputs", name, dtype, shape),
            ("outputs", "class_names", "DT_STRING", f"(-1, {k})"),
            ("outputs", "classes", "DT_INT32", f"(-1, {k})"),
            ("outputs", "probabilities", "DT_FLOAT", f"(-1, {n})"),
        ], signature


def test_layout_and_warmup_requests_fit_their_signatures(cifar, tmp_path):
    path = cifar.path
    assert path.name == "1"
    for required in ("saved_model.pb", "variables/variables.index", "assets", "assets.extra"):
        assert (path / required).exists(), required
    # Readable by a model server running as another user: the mode of any directory made here.
    (tmp_path / "plain").mkdir()
    assert path.stat().st_mode == (tmp_path / "plain").stat().st_mode
    assert DataInfo.load(path / "assets.extra").class_names == cifar.info.class_names
    served = tf.saved_model.load(str(path))
    logs = [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(str(path / "assets.extra" / warmup.WARMUP_FILE))
    ]
    assert {log.predict_log.request.model_spec.signature_name for log in logs} == set(serving.SIGNATURES)
    for log in logs:
        request = log.predict_log.request
        inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
        out = served.signatures[request.model_spec.signature_name](**inputs)
        batch = len(next(iter(inputs.values())))
        assert out["probabilities"].shape == (batch, cifar.info.num_classes)
        np.testing.assert_allclose(out["probabilities"].numpy().sum(1), 1.0, atol=1e-5)


@functools.cache  # once per process: the module defines absl flags
def _load_client():
    spec = importlib.util.spec_from_file_location("serving_client", REPO / "export" / "client.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    return client


def test_grpc_and_rest_requests_from_the_client_give_the_keras_answer(imagenette):
    client = _load_client()
    served = tf.saved_model.load(str(imagenette.path))
    want = _keras_probabilities(imagenette.model, imagenette.pixels, imagenette.info)

    # gRPC: the request crosses the wire serialized; the server converts each input tensor proto.
    request = type(client.predict_request([], "m")).FromString(
        client.predict_request(imagenette.encoded, "resnet8", version=1).SerializeToString()
    )
    assert (request.model_spec.name, request.model_spec.version.value) == ("resnet8", 1)
    inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
    out = served.signatures[request.model_spec.signature_name](**inputs)
    np.testing.assert_allclose(out["probabilities"].numpy(), want, atol=ATOL)

    # REST: row format, one {"b64": ...} per instance under the signature's input name.
    body = json.loads(json.dumps(client.rest_body(imagenette.encoded)))
    images = [base64.b64decode(row[signatures.IMAGES]["b64"]) for row in body["instances"]]
    out = served.signatures[body["signature_name"]](images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy(), want, atol=ATOL)


def test_client_errors_are_one_line_for_a_server_that_never_answers_or_is_not_there():
    client = _load_client()
    with socket.socket() as silent:  # accepts the connection (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(RuntimeError, match=r"did not answer within 0.5 s: raise --timeout"):
            client.predict_rest(server, "m", [b"x"], timeout=0.5)
    with pytest.raises(RuntimeError, match="Cannot reach .* is the model server running"):
        client.predict_rest(server, "m", [b"x"], timeout=0.5)  # closed now: refused


@pytest.mark.slow
def test_versions_count_up_and_are_never_overwritten(imagenette):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "export" / "export.py"),
            f"--model_dir={imagenette.run}",
            f"--export_base={imagenette.base}",
            "--top_k=3",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = imagenette.base / "2"
    assert f"Exported {second}" in proc.stdout
    # No temporary left over; `.lock` is the export base's lock file (TF Serving ignores both).
    assert sorted(p.name for p in imagenette.base.iterdir() if p.name != ".lock") == ["1", "2"]

    before = (second / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="never overwritten"):
        serving.export(imagenette.model, imagenette.info, imagenette.base, version=2)
    assert (second / "saved_model.pb").stat().st_mtime_ns == before
    for bad in (0, -1, "3"):
        with pytest.raises(ValueError, match="positive integer"):
            serving.export(imagenette.model, imagenette.info, imagenette.base, version=bad)
    assert sorted(p.name for p in imagenette.base.iterdir() if p.name != ".lock") == ["1", "2"]


def test_failed_export_leaves_no_partial_version(cifar, tmp_path, monkeypatch):
    base = tmp_path / "exports"
    seen = []

    def failing_warmup(path, info):
        seen.append(sorted(p.name for p in path.parents[1].iterdir()))
        assert (path.parents[1] / "saved_model.pb").exists()  # the SavedModel is half-way written
        raise OSError("disk full")

    monkeypatch.setattr(warmup, "write_requests", failing_warmup)
    with pytest.raises(OSError, match="disk full"):
        serving.export(cifar.model, cifar.info, base)
    assert seen, "the export failed before writing anything, which this test does not exercise"
    assert [p.name for p in base.iterdir()] == [".lock"]  # only the export base's lock file
    monkeypatch.undo()
    assert serving.export(cifar.model, cifar.info, base).name == "1"


def test_non_finite_pixels_are_refused(cifar):
    served = tf.saved_model.load(str(cifar.path)).signatures["predict_pixels"]
    pixels = cifar.pixels[:2].astype(np.float32)
    assert served(pixels=tf.constant(pixels))["probabilities"].shape == (2, 10)
    for bad in (np.nan, np.inf, -np.inf):
        damaged = pixels.copy()
        damaged[1, 3, 4, 0] = bad
        with pytest.raises(tf.errors.InvalidArgumentError, match="pixels must be finite RGB values"):
            served(pixels=tf.constant(damaged))


def test_bad_images_give_invalid_argument(cifar):
    served = tf.saved_model.load(str(cifar.path)).signatures["serving_default"]
    good = cifar.encoded[0]
    jpeg = tf.io.encode_jpeg(cifar.pixels[0]).numpy()
    # A camera JPEG: an APP1 (EXIF) segment after the start marker holds a thumbnail, itself a
    # JPEG ending in FF D9; cut off inside the scan, the photo must still count as truncated.
    thumbnail = b"Exif\x00\x00" + tf.io.encode_jpeg(cifar.pixels[1][::4, ::4]).numpy()
    camera = jpeg[:2] + b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail + jpeg[2:]
    # A PNG header declaring 100000 x 100000 pixels: refused from the header, before any decoding.
    huge_png = good[:16] + np.array([100_000, 100_000], ">u4").tobytes() + good[24:]
    cases = {
        b"not an image": r"\[Image\] \[1\] \[of the request is neither JPEG nor PNG",
        b"": "neither JPEG nor PNG",
        b"GIF89a" + good[6:]: "neither JPEG nor PNG",
        jpeg[: len(jpeg) // 2]: r"\[Image\] \[1\] \[of the request is truncated",
        camera[: len(camera) - len(jpeg) // 2]: r"\[Image\] \[1\] \[of the request is truncated",
        good[:40]: r"\[Image\] \[1\] \[of the request is truncated",
        huge_png: r"\[Image\] \[1\] \[of the request is too large",
    }
    for data, message in cases.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            served(images=tf.constant([good, data]))
    # The guard did not break the good path: the same request without the bad image is served,
    # and a JPEG with data after its end marker (a phone's motion photo) answers as the JPEG.
    motion = camera + b"\x00\x00\x00\x18ftypmp42" + bytes(500)
    answers = served(images=tf.constant([good, jpeg, motion, camera]))
    assert answers["classes"].shape == (4, cifar.k)
    for same in (2, 3):
        np.testing.assert_allclose(answers["probabilities"][same], answers["probabilities"][1], atol=ATOL)
    # An empty request gets an empty answer, not a shape error from inside the network.
    empty = served(images=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 10) and empty["class_names"].shape == (0, cifar.k)


@pytest.mark.slow
def test_export_stores_each_variable_once_and_serves_from_saved_model_cli(tmp_path):
    """keras-team/keras#23553: Keras' export wrote every weight twice (2.03x); TF Serving loaded both."""
    model = build_model("resnet8")
    info = DataInfo("x", "cifar", 10, tuple("0123456789"), 32, 32, np.zeros((32, 32, 3), np.float32), 10)
    path = serving.export(model, info, tmp_path / "exports")
    weights = sum(int(np.prod(w.shape)) * 4 for w in fold_batch_norm(model).weights)  # what is served
    stored = sum(f.stat().st_size for f in (path / "variables").iterdir())
    assert weights < stored < 1.05 * weights
    np.save(tmp_path / "x.npy", np.full((2, 32, 32, 3), 128, np.float32))
    proc = subprocess.run(
        [str(pathlib.Path(sys.executable).with_name("saved_model_cli")), "run", "--dir", str(path)]
        + [
            "--tag_set",
            "serve",
            "--signature_def",
            "predict_pixels",
            "--inputs",
            f"pixels={tmp_path / 'x.npy'}",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Result for output key probabilities" in proc.stdout and "class_names" in proc.stdout


def _op_types(function) -> list[str]:
    graph = function.graph.as_graph_def()
    return [n.op for n in graph.node] + [n.op for f in graph.library.function for n in f.node_def]


def test_served_graph_has_batch_norm_folded_into_its_convolutions(cifar):
    """The inference fold: each convolution carries its batch norm as a bias; no BN op is served."""
    served = tf.saved_model.load(str(cifar.path))
    convs = sum(isinstance(la, keras.layers.Conv2D) for la in cifar.model.layers)
    for name in signatures.SIGNATURES:
        ops = _op_types(served.signatures[name])
        assert not [op for op in ops if "BatchNorm" in op or op in ("Rsqrt", "Sqrt")], name
        assert ops.count("Conv2D") == convs and ops.count("BiasAdd") == convs + 1, name  # + the classifier


def test_logits_model_serves_probabilities_and_mismatches_are_refused(cifar, tmp_path):
    logits = build_model("resnet8", classifier_activation=None)
    logits.set_weights(cifar.model.get_weights())
    path = serving.export(logits, cifar.info, tmp_path / "logits", top_k=20)
    out = tf.saved_model.load(str(path)).signatures["predict_pixels_uint8"](pixels=tf.constant(cifar.pixels))
    want = cifar.model(eval_preprocess(cifar.pixels, cifar.info), training=False).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), want, atol=ATOL)
    assert out["classes"].shape == (len(cifar.pixels), 10)  # top_k capped at the class count

    for change, message in (({"num_classes": 100}, "100 classes"), ({"image_size": 64}, "evaluation view")):
        with pytest.raises(ValueError, match=message):
            serving.export(cifar.model, dataclasses.replace(cifar.info, **change), tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="--model_dir"):
        serving.export_run(tmp_path / "no_run", tmp_path / "bad")
    damaged = tmp_path / "damaged_run"  # a run whose data_info.json was cut off
    damaged.mkdir()
    cifar.model.save(damaged / "model.keras")
    (damaged / "data_info.json").write_text('{"name": "cifar10", "rec')
    with pytest.raises(ValueError, match=r"damaged_run/data_info.json is not a data description"):
        serving.export_run(damaged, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_tta_export_serves_the_mean_over_views_and_a_run_exports_with_its_own_tta(cifar, tmp_path):
    views = eval_preprocess(cifar.pixels, cifar.info)
    plain = cifar.model(views, training=False).numpy()
    want = models.with_test_time_augmentation(cifar.model, "flip")(views, training=False).numpy()
    assert np.abs(want - plain).max() > 1e-3  # the flipped view answers differently
    run = tmp_path / "run"  # a finished run trained with --tta=flip, as train.py leaves it
    run.mkdir()
    cifar.model.save(run / "model.keras")
    cifar.info.save(run)
    files.write_json(run / "config.json", TrainConfig.of(tta="flip").to_json())
    exports = [
        (serving.export(cifar.model, cifar.info, tmp_path / "direct", tta="flip"), want),
        (serving.export_run(run, tmp_path / "run_export"), want),  # the run's own TTA
        (serving.export_run(run, tmp_path / "run_export", tta="none"), plain),  # export.py --tta=none
    ]
    for path, expected in exports:
        served = tf.saved_model.load(str(path)).signatures["predict_pixels_uint8"]
        out = served(pixels=tf.constant(cifar.pixels))
        np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=ATOL)


def test_a_photo_many_times_the_view_size_is_shrunk_without_aliasing(cifar):
    # A one-pixel checkerboard 7x the view's side: its honest 32x32 view is flat grey; sampling
    # every 7th pixel without a filter would give back a full-contrast pattern.
    board = (np.indices((224, 224)).sum(0) % 2 * 255).astype(np.uint8)
    photo = np.repeat(board[None, ..., None], 3, axis=-1)
    info = dataclasses.replace(cifar.info, mean=np.zeros((32, 32, 3), np.float32))
    view = eval_preprocess(photo, info).numpy()
    assert abs(view.mean() - 127.5) < 2 and view.std() < 5


def test_example_models_config_parses():
    config = text_format.Parse(
        (REPO / "export" / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    for model in config.model_config_list.config:
        assert model.base_path == f"/models/{model.name}"  # the mount point export/README.md uses
        assert model.model_platform == "tensorflow"


def test_model_built_under_mirrored_strategy_exports(cifar, tmp_path, mirrored_strategy):
    # train.py builds its model in a MirroredStrategy scope (two CPU replicas here) and exports from it.
    strategy = mirrored_strategy
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = build_model("resnet8")
        model.set_weights(cifar.model.get_weights())
        path = serving.export(model, cifar.info, tmp_path)
    out = tf.saved_model.load(str(path)).signatures["predict_pixels_uint8"](pixels=tf.constant(cifar.pixels))
    want = cifar.model(eval_preprocess(cifar.pixels, cifar.info), training=False).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), want, atol=ATOL)


@pytest.mark.slow
def test_export_py_takes_a_run_or_a_shipped_net_and_refuses_a_net_not_shipped(tmp_path):
    def export(*flags: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(REPO / "export" / "export.py"), f"--export_base={tmp_path / 'e'}"]
        return subprocess.run([*command, *flags], env=ENV, capture_output=True, text=True, timeout=300)

    both = export(f"--model_dir={tmp_path}", "--model=resnet8", "--weights=cifar10")
    neither = export()
    not_shipped = export("--model=resnet8", "--weights=cifar10")
    assert both.returncode == neither.returncode == 1 and "--model_dir=RUN" in neither.stderr
    assert not_shipped.returncode == 1 and "Traceback" not in not_shipped.stderr
    assert "No CIFAR-10 weights are shipped for resnet8" in not_shipped.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())
