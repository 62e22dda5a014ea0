"""Nothing of the user's lost, no work wasted (issue 49): a damaged model.keras named as damaged and
rebuilt from its checkpoint, data changed under a resumed run, run folders holding the user's own
files, output locations checked before the work, interrupts outside training. Digits and ResNet-8."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from keras_resnet import training
from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.rundir import RunDir


def _copy(tiny_run, tmp_path: pathlib.Path, name: str = "run") -> TrainConfig:
    cfg, _ = tiny_run
    shutil.copytree(cfg.run.model_dir, tmp_path / name)
    return cfg.replace(model_dir=str(tmp_path / name))


def _damage(path: pathlib.Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    else:  # cut in half, as a full disk or an interrupted copy leaves it
        os.truncate(path, path.stat().st_size // 2)


def _command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


# ----------------------------------------------------------------------------- 1. a damaged model.keras


@pytest.mark.parametrize("how", ["half", "empty"])
def test_a_damaged_model_is_named_as_damaged_by_load_and_export(tiny_run, tmp_path, how):
    import keras_resnet as kr
    from keras_resnet.serving import exporting

    cfg = _copy(tiny_run, tmp_path)
    model = RunDir(cfg.run.model_dir).model
    _damage(model, how)
    export = tmp_path / "e"
    for attempt in (lambda: kr.load(cfg.run.model_dir), lambda: exporting.export_run(model.parent, export)):
        with pytest.raises(ValueError, match=r"model\.keras is damaged .*flags\.cfg.*newest checkpoint"):
            attempt()
    assert not export.exists() or not any(export.iterdir())  # nothing exported


@pytest.mark.slow
def test_a_damaged_model_is_one_line_from_predict_export_and_eval_only(tiny_run, tmp_path):
    cfg = _copy(tiny_run, tmp_path)
    _damage(RunDir(cfg.run.model_dir).model, "half")
    image = tmp_path / "a.png"
    import tensorflow as tf

    image.write_bytes(tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy())
    commands = {
        "predict": ["-m", "keras_resnet.predict", f"--model_dir={cfg.run.model_dir}", str(image)],
        "export": ["export/export.py", f"--model_dir={cfg.run.model_dir}", f"--export_base={tmp_path / 'e'}"],
        "eval_only": ["train.py", f"--model_dir={cfg.run.model_dir}", "--eval_only"],
    }
    for name, args in commands.items():
        done = _command(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1, (name, done.stderr[-2000:])
        assert len(lines) == 1 and "model.keras is damaged" in lines[0], (name, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and "File not found" not in done.stderr


def test_a_finished_run_whose_damaged_model_is_rebuilt_from_its_newest_checkpoint(tiny_run, tmp_path, capsys):
    import keras

    cfg = _copy(tiny_run, tmp_path)
    run = RunDir(cfg.run.model_dir)
    before = [w.copy() for w in keras.saving.load_model(run.model, compile=False).get_weights()]
    _damage(run.model, "half")
    summary = training.run(cfg, verbose=0)
    assert "model.keras is damaged" in capsys.readouterr().out
    assert summary.steps == tiny_run[1].steps and summary.test_error == pytest.approx(tiny_run[1].test_error)
    after = keras.saving.load_model(run.model, compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    # Without a checkpoint to rebuild it from: one line, and the files stay.
    _damage(run.model, "empty")
    shutil.rmtree(run.checkpoints)
    with pytest.raises(ConfigError, match="no checkpoint is left to rebuild it"):
        training.run(cfg, verbose=0)
    assert run.summary.is_file() and run.model.stat().st_size == 0
