"""A run's carry (--carry_dir): a run moved to another machine resumes at the carried step with
the carried weights and finishes as an uninterrupted run does. Digits and ResNet-8."""

from __future__ import annotations

import csv
import json
import shutil

import keras
import numpy as np
import pytest
from conftest import tiny

from keras_resnet import files, training
from keras_resnet.config import ConfigError
from keras_resnet.rundir import RunDir
from keras_resnet.training import carry
from keras_resnet.training.procedure import Paused


def _weights(run_dir) -> list[np.ndarray]:
    return keras.saving.load_model(RunDir(run_dir).model, safe_mode=True).get_weights()


def _carry_files(carry_dir) -> list[str]:
    return sorted(str(p.relative_to(carry_dir)) for p in carry_dir.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_carried_run_resumes_at_the_carried_step_and_finishes_as_the_run_resumed_in_place(tmp_path):
    # deterministic: the run resumed in its own folder and the carried one must agree to the bit.
    # (A resumed run, carried or not, reshuffles from its step: `data.recipes`.)
    carried = tiny(tmp_path / "moved", train_steps=30, deterministic=True, carry_dir=str(tmp_path / "carry"))
    paused = training.run(carried, verbose=0, until_step=20)
    assert isinstance(paused, Paused) and paused.step == 20
    assert _carry_files(tmp_path / "carry") == [
        "step-20/carry.json",
        "step-20/checkpoints/ckpt-20.json",
        "step-20/checkpoints/ckpt-20.weights.h5",
        "step-20/config.json",
        "step-20/data_info.json",
        "step-20/flags.cfg",
        "step-20/history.csv",
    ]
    shutil.rmtree(tmp_path / "moved")  # the machine is gone; the carry was committed

    summary = training.run(carried, verbose=0)
    assert summary.steps == 30 and summary.resumed_from_step == 20
    with open(tmp_path / "moved" / "history.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [10, 20, 30]
    # Finished: the carry is the final model and records, no checkpoint. On a machine without the
    # run folder the same command finds the run finished, with its model: nothing is trained.
    final = ["carry.json", "config.json", "data_info.json", "flags.cfg", "history.csv", "model.keras"]
    assert _carry_files(tmp_path / "carry") == [f"final-30/{name}" for name in [*final, "summary.json"]]
    model = (tmp_path / "moved" / "model.keras").read_bytes()
    shutil.rmtree(tmp_path / "moved")
    again = training.run(carried, verbose=0)
    assert again == summary and (tmp_path / "moved" / "model.keras").read_bytes() == model
    assert not (tmp_path / "moved" / "checkpoints").exists()  # nothing was trained

    stayed = tiny(tmp_path / "stayed", train_steps=30, deterministic=True)
    assert training.run(stayed, verbose=0, until_step=20).step == 20
    assert training.run(stayed, verbose=0).resumed_from_step == 20
    for a, b in zip(_weights(tmp_path / "stayed"), _weights(tmp_path / "moved"), strict=True):
        np.testing.assert_array_equal(a, b)
    # Extending it needs its checkpoint, which the final carry does not hold: refused, not retrained.
    shutil.rmtree(tmp_path / "moved")
    with pytest.raises(ConfigError, match="holds the finished run"):
        training.run(carried.replace(train_steps=40, allow_config_change=True), verbose=0)
    assert not (tmp_path / "moved" / "config.json").exists()


@pytest.mark.slow
def test_a_carry_behind_the_run_folder_is_left_and_a_damaged_one_is_one_line(tmp_path):
    cfg = tiny(tmp_path / "run", train_steps=30, carry_dir=str(tmp_path / "carry"))
    training.run(cfg, verbose=0, until_step=10)
    behind = tmp_path / "carry-at-10"
    shutil.copytree(tmp_path / "carry", behind)
    training.run(cfg, verbose=0, until_step=20)
    assert carry.newest(tmp_path / "carry").step == 20

    # An older carry (another machine's, from before) never rolls a run folder back.
    older = cfg.replace(carry_dir=str(behind))
    assert carry.restore(RunDir(cfg.run.model_dir), behind, local_step=20) is None
    paused = training.run(older, verbose=0, until_step=25)
    assert paused.step == 25

    # A carry whose weights were damaged in transit is named, and nothing is copied.
    shutil.rmtree(tmp_path / "run")
    weights = next((tmp_path / "carry").rglob("ckpt-20.weights.h5"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="ckpt-20.weights.h5 is missing or damaged"):
        training.run(cfg, verbose=0)
    assert not (tmp_path / "run" / "checkpoints").exists()
    manifest = json.loads((tmp_path / "carry" / "step-20" / "carry.json").read_text())
    assert manifest["step"] == 20


@pytest.mark.slow
def test_a_carry_is_refused_before_any_copy_when_it_is_another_run_and_a_cut_restore_is_redone(tmp_path):
    cfg = tiny(tmp_path / "run", train_steps=30, carry_dir=str(tmp_path / "carry"))
    training.run(cfg, verbose=0, until_step=20)
    shutil.rmtree(tmp_path / "run")

    # Another net pointed at this carry: refused, and its fresh folder gets none of the carry.
    other = cfg.replace(model="resnet14", model_dir=str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="different configuration"):
        training.run(other, verbose=0)
    assert not (tmp_path / "other" / "checkpoints").exists()

    # A restore cut after the weights, before the checkpoint's manifest: the next one finishes it.
    step20 = tmp_path / "carry" / "step-20"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "checkpoints/ckpt-20.weights.h5"):
        shutil.copyfile(step20 / name, tmp_path / "run" / name)
    assert training.run(cfg, verbose=0).resumed_from_step == 20


def test_a_carry_inside_the_run_folder_and_a_manifest_naming_other_files_are_refused(tmp_path):
    from keras_resnet.rundir import check_locations

    inside = tiny(tmp_path / "run", train_steps=30, carry_dir=str(tmp_path / "run" / "carry"))
    with pytest.raises(ConfigError, match="--carry_dir"):
        check_locations(inside)

    step = tmp_path / "carry" / "step-10"
    step.mkdir(parents=True)
    (step / "x").write_text("x")
    record = {"size": 1, "sha256": files.sha256(step / "x")}
    (step / "carry.json").write_text(json.dumps({"step": 10, "files": {"../x": record}}))
    with pytest.raises(ValueError, match="not a file of a run folder"):
        carry.restore(RunDir(tmp_path / "run"), tmp_path / "carry", local_step=0)
    assert not (tmp_path / "x").exists()
