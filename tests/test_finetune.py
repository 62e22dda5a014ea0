"""Fine-tuning: `--weights` (a converted Keras Applications net, a run, a file) and `--freeze`, on
small real images; what is frozen stays as it was, the rest trains, the run resumes and serves."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, tiny

import keras_resnet as kr
from keras_resnet import training
from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.data.info import DataInfo
from keras_resnet.rundir import RunDir
from keras_resnet.serving import exporting, loading


def _values(model: keras.Model, name: str) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_layer(name).get_weights()]


def _mini_imagenette(imagenette_dir, root, per_class=(8, 4)):
    for split, n in zip(("train", "val"), per_class, strict=True):
        for wnid in sorted(p.name for p in (imagenette_dir / split).iterdir())[:3]:
            (root / split / wnid).mkdir(parents=True)
            for image in sorted((imagenette_dir / split / wnid).glob("*.JPEG"))[:n]:
                shutil.copy(image, root / split / wnid / image.name)
    return root


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"freeze": ("conv9",)}, "--freeze"),
        ({"weights": "/nowhere/model.keras"}, "--weights"),
        ({"weights": "imagenet", "model": "resnet20"}, "--weights"),
    ],
)
def test_fine_tuning_flags_are_checked_before_any_work(changes, flag, tmp_path):
    cfg = tiny(tmp_path / "run", train_steps=2, **changes)
    with pytest.raises(ConfigError, match=flag) as err:
        cfg.check()
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_fine_tuning_a_converted_resnet50_trains_only_what_is_not_frozen(imagenette_dir, tmp_path):
    """ResNet-50 converted from Keras Applications (random weights: no download), 3 imagenette
    classes at 32 px, conv1 and conv2 frozen: they and their BN statistics stay the source's."""
    source = kr.from_keras_applications(keras.applications.ResNet50(weights=None))
    source.save(tmp_path / "source.keras")
    root = _mini_imagenette(imagenette_dir, tmp_path / "mini")
    cfg = TrainConfig.of(
        model="resnet50",
        dataset=f"folder:{root}",
        image_size=32,
        batch_size=8,
        train_steps=4,
        checkpoint_steps=2,
        learning_rate=0.01,
        eval_test=False,
        weights=str(tmp_path / "source.keras"),
        freeze=("conv1", "conv2"),
        model_dir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "export"),
    )
    summary = training.run(cfg, verbose=0)
    tuned = keras.saving.load_model(RunDir(cfg.run.model_dir).model, safe_mode=True)
    for name in ("conv1_conv", "conv1_bn", "conv2_block1_1_conv", "conv2_block3_3_bn"):
        for before, after in zip(_values(source, name), _values(tuned, name), strict=True):
            np.testing.assert_array_equal(before, after, err_msg=name)
    trained = zip(_values(source, "conv3_block1_1_conv"), _values(tuned, "conv3_block1_1_conv"), strict=True)
    assert all(not np.array_equal(before, after) for before, after in trained)
    # Frozen parameters are not trainable: fewer than the 3-class ResNet-50's 23,514,179.
    assert tuned.output_shape[-1] == 3 and summary.params < 23_514_179
    # The network carries Keras Applications' "caffe" normalization; the pipeline feeds raw pixels.
    layer = tuned.get_layer("input_normalization")
    assert layer.reverse_channels and np.allclose(layer.mean, [103.939, 116.779, 123.68])
    assert not DataInfo.load(cfg.run.model_dir).mean.any()
    # The export serves it like any other run: the same probabilities as the run loaded in Python.
    image = np.asarray(tf.io.decode_jpeg(tf.io.read_file(str(next((root / "val").rglob("*.JPEG"))))))
    served = tf.saved_model.load(summary.export_path).signatures["predict_pixels_uint8"]
    probabilities = served(pixels=tf.constant(image[None]))["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, loading.load(cfg.run.model_dir).predict([image]), atol=1e-5)


@pytest.mark.slow
def test_fine_tuning_from_a_run_resumes_after_kill_9_with_its_frozen_stages_intact(tmp_path):
    source_cfg = tiny(tmp_path / "source", train_steps=20)
    training.run(source_cfg, verbose=0)
    source = keras.saving.load_model(RunDir(source_cfg.run.model_dir).model)
    cfg = tiny(tmp_path / "run", train_steps=60, eval_test=False, weights=str(tmp_path / "source"))
    cfg = cfg.replace(freeze=("conv1", "conv2"))
    flagfile = tmp_path / "run.cfg"
    flagfile.write_text(cfg.to_flags())
    cmd = [sys.executable, str(REPO / "train.py"), f"--flagfile={flagfile}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = tmp_path / "run" / "checkpoints" / "state.json"
    deadline = time.time() + 300
    while not (state.exists() and json.loads(state.read_text())["step"] >= 20):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "resuming at step" in done.stdout and "every layer copied" not in done.stdout
    tuned = keras.saving.load_model(RunDir(cfg.run.model_dir).model)
    for name in ("conv1_conv", "conv1_bn", "conv2_block1_2_conv", "conv2_block1_2_bn"):
        for before, after in zip(_values(source, name), _values(tuned, name), strict=True):
            np.testing.assert_array_equal(before, after, err_msg=name)
    kernel = "conv4_block1_1_conv"
    assert not np.array_equal(_values(source, kernel)[0], _values(tuned, kernel)[0])
    # The source's training mean went inside the network; this run's pipeline subtracted none.
    np.testing.assert_allclose(
        tuned.get_layer("input_normalization").mean, DataInfo.load(source_cfg.run.model_dir).mean, atol=1e-4
    )
    assert exporting.export_run(cfg.run.model_dir, tmp_path / "export").name == "1"
