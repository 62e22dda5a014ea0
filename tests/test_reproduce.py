"""`python -m keras_resnet.reproduce`: each experiment's mechanics on tiny nets, digits, a few steps."""

from __future__ import annotations

import csv
import json
import pathlib
import re
import shutil

import keras
import numpy as np
import pytest

from keras_resnet import build_model, reproduce, training, tuning
from keras_resnet.experiments import measure, options, plan
from keras_resnet.rundir import RunDir


def _read(path: pathlib.Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[list[str], pathlib.Path]:
    root = tmp_path_factory.mktemp("reproduction")
    args = ["--models=plain8,resnet8", "--budget=20", "--dataset=digits", f"--out={root / 'runs'}"]
    return [*args, f"--results={root / 'results'}"], root


@pytest.mark.slow
def test_degradation_trains_each_net_once_with_one_recipe_and_writes_csv_and_figure(tiny):
    args, root = tiny
    assert reproduce.main(["degradation", *args]) == 0
    rows = _read(root / "results" / "degradation.csv")
    assert list(rows[0]) == ["model", "steps", "train_error", "test_error", "dataset", "data_sha256"]
    assert [r["model"] for r in rows] == ["plain8", "resnet8"] and all(r["steps"] == "20" for r in rows)
    assert all(0 <= float(r[k]) <= 1 for r in rows for k in ("train_error", "test_error"))
    assert (root / "results" / "degradation.png").stat().st_size > 10_000
    # Every row names the data it was measured on: the runs' own fingerprint of the training files.
    summary = RunDir(root / "runs" / "digits" / "20" / "resnet8").read_summary()
    assert len(summary.data_sha256) == 16 and {(r["dataset"], r["data_sha256"]) for r in rows} == {
        ("digits", summary.data_sha256)
    }
    configs = [
        (root / "runs" / "digits" / "20" / m / "config.json").read_text() for m in ("plain8", "resnet8")
    ]
    # Same recipe and seed; only the net differs.
    assert configs[0].replace("plain8", "resnet8") == configs[1]
    # The training error is the final model's on the training images in evaluation mode.
    from keras_resnet import data

    model = keras.models.load_model(root / "runs" / "digits" / "20" / "resnet8" / "model.keras")
    ds = data.load("digits", eval_batch_size=1000)
    measured = model.evaluate(ds.train_evaluation(), verbose=0, return_dict=True)["error"]
    assert float(rows[1]["train_error"]) == pytest.approx(measured, abs=1e-4)

    # Run again: finished runs are skipped, not retrained.
    summaries = [root / "runs" / "digits" / "20" / m / "summary.json" for m in ("plain8", "resnet8")]
    before = [p.stat().st_mtime_ns for p in summaries]
    assert reproduce.main(["degradation", *args]) == 0
    assert [p.stat().st_mtime_ns for p in summaries] == before


@pytest.mark.slow
def test_responses_reuse_the_trained_nets_and_list_every_3x3_layer(tiny):
    args, root = tiny
    summary = root / "runs" / "digits" / "20" / "resnet8" / "summary.json"
    before = summary.stat().st_mtime_ns
    assert reproduce.main(["responses", *args]) == 0
    assert summary.stat().st_mtime_ns == before
    rows = _read(root / "results" / "responses.csv")
    assert list(rows[0]) == ["model", "layer_index", "layer", "std", "dataset", "data_sha256"]
    # ResNet-8: the first conv and two 3x3 convs in each of 3 blocks; shortcuts (1x1) excluded.
    layers = [r["layer"] for r in rows if r["model"] == "resnet8"]
    assert layers[0] == "conv1_bn" and len(layers) == 7 and all(float(r["std"]) > 0 for r in rows)
    assert (root / "results" / "responses.png").stat().st_size > 10_000


@pytest.mark.slow
def test_table6_puts_the_final_test_error_beside_the_papers_as_fractions(tiny, monkeypatch):
    args, root = tiny
    args = ["--models=resnet8" if a.startswith("--models=") else a for a in args]
    monkeypatch.setitem(options.PAPER_TABLE6, "resnet8", 8.75)  # the paper has no ResNet-8
    assert reproduce.main(["table6", *args]) == 0
    (row,) = _read(root / "results" / "table6-20.csv")
    summary = RunDir(root / "runs" / "digits" / "20" / "resnet8").read_summary()
    assert float(row["test_error"]) == pytest.approx(summary.test_error, abs=1e-4)
    assert (row["model"], row["steps"], row["paper"], row["reference_pytorch"]) == (
        "resnet8",
        "20",
        "0.0875",
        "",
    )


def test_response_std_is_the_std_of_every_element_of_the_layer_output():
    model = build_model("resnet8", shortcut="B")
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(4, 32, 32, 3)).astype("float32"), None) for _ in range(3)]
    got = measure.response_stds(model, batches)
    assert "conv3_block1_0_bn" not in got  # a 1x1 projection is not a 3x3 layer
    probe = keras.Model(model.input, model.get_layer("conv3_block1_2_bn").output)
    outputs = np.concatenate([probe(x, training=False).numpy() for x, _ in batches])
    assert got["conv3_block1_2_bn"] == pytest.approx(float(np.std(outputs.astype(np.float64))), rel=1e-5)


@pytest.mark.slow
def test_shortcuts_search_a_b_c_per_seed_and_summarize(tmp_path):
    args = ["--models=resnet8", "--budget=4", "--seeds=2", "--dataset=digits", f"--out={tmp_path / 'runs'}"]
    assert reproduce.main(["shortcuts", *args, f"--results={tmp_path / 'res'}"]) == 0
    rows = _read(tmp_path / "res" / "shortcuts.csv")
    assert sorted((r["seed"], r["shortcut"]) for r in rows) == [(s, o) for s in "01" for o in "ABC"]
    table = (tmp_path / "res" / "shortcuts.md").read_text()
    for option in "ABC":
        errors = [100 * float(r["val_error"]) for r in rows if r["shortcut"] == option]
        assert f"| {option} |" in table and f"{np.mean(errors):.2f} ± {np.std(errors, ddof=1):.2f}" in table
    # The plan names the searches' own directories, and counts finished searches as done.
    options, _ = reproduce.parse(["shortcuts", *args])
    cfgs = plan.plan(options)
    names = {pathlib.Path(c.run.model_dir).name for c in cfgs}
    assert names == {"resnet8-shortcuts-seed0", "resnet8-shortcuts-seed1"}
    assert plan.estimate_seconds(cfgs) == 0
    # An interrupted search (no results table yet) counts its finished trials as done too, and
    # an unfinished trial from its own checkpoints.
    elsewhere = [c.replace(model_dir=str(tmp_path / "new")) for c in cfgs]
    fresh = plan.estimate_seconds(elsewhere)
    for c in cfgs:
        (pathlib.Path(c.run.model_dir) / "tuning" / "results.csv").unlink(missing_ok=True)
    assert plan.estimate_seconds(cfgs) == 0
    trials = tuning.trials_on_disk(tuning.default_tune_dir(cfgs[0]))
    (trial,) = [d for values, _, d in trials if values["shortcut"] == "B"]
    trial_json = json.loads((trial / "trial.json").read_text())
    (trial / "trial.json").write_text(json.dumps({**trial_json, "status": "RUNNING"}))
    assert plan.steps_done(cfgs[0].replace(shortcut="B")) == training.resumes_at(trial) == 4
    shutil.rmtree(trial / "checkpoints")
    assert plan.estimate_seconds(cfgs) == pytest.approx(fresh / 6)  # one run of six left


def test_bad_arguments_and_dry_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["degradation", "--budget=soon"])
    assert "--budget='soon'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["shortcuts", "--models=plain20"])
    assert "only in residual nets" in capsys.readouterr().err
    assert reproduce.main(["degradation", "--budget=cpu", "--dry_run", f"--out={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "4 run(s) of 4,000 iterations (plain20, plain56, resnet20, resnet56) on cifar10" in out
    assert "estimated" in out
    assert not any(tmp_path.iterdir())  # a dry run trains nothing
    # 50 and 152 are CIFAR depths (6n+2) and ImageNet ones: these experiments mean CIFAR's.
    assert reproduce.main(["table6", "--models=resnet50,resnet56", "--dry_run", f"--out={tmp_path}"]) == 0
    macs = dict(re.findall(r"(resnet5[06])  \(([\d.]+)M multiply-adds", capsys.readouterr().out))
    assert float(macs["resnet50"]) < float(macs["resnet56"]) == 125.5  # not ImageNet's 3,858M
    resnet50, resnet56 = plan.plan(reproduce.parse(["table6", "--models=resnet50,resnet56"])[0])
    assert resnet50.model.spec.family == "cifar" and resnet50.model.spec.stages[0][2] == 8  # 6 * 8 + 2
    assert resnet56.model.family == ""  # as before: the config.json of runs under way is unchanged


@pytest.mark.slow
def test_estimate_and_dry_run_count_the_checkpointed_iterations(tmp_path, capsys):
    from keras_resnet import training

    args = ["degradation", "--models=resnet8", "--budget=8", "--dataset=digits", f"--out={tmp_path}"]
    (cfg,) = plan.plan(reproduce.parse(args)[0])
    fresh = plan.estimate_seconds([cfg])
    assert fresh > 0
    # Half the run's iterations checkpointed and no summary: what the estimate reads of a run.
    training.run(cfg.replace(train_steps=4), verbose=0)
    (pathlib.Path(cfg.run.model_dir) / "summary.json").unlink()
    assert training.resumes_at(cfg.run.model_dir) == 4
    # Half the steps and checkpoints are left, and a run's start-up.
    overhead = options.RUN_OVERHEAD_S
    assert plan.estimate_seconds([cfg]) == pytest.approx((fresh - overhead) / 2 + overhead)
    capsys.readouterr()
    assert reproduce.main([*args, "--dry_run"]) == 0
    assert "resumes at step 4" in capsys.readouterr().out


def test_a_run_started_before_the_padding_flag_resumes_with_its_own(tmp_path):
    from keras_resnet.rundir import check_model_dir

    args = ["table6", "--models=resnet20", f"--out={tmp_path}"]
    (cfg,) = plan.plan(reproduce.parse(args)[0])
    assert cfg.model.padding == "symmetric"
    old = {k: v for k, v in cfg.to_json().items() if k != "padding"}  # a config.json from before
    pathlib.Path(cfg.run.model_dir).mkdir(parents=True)
    (pathlib.Path(cfg.run.model_dir) / "config.json").write_text(json.dumps(old))
    (cfg,) = plan.plan(reproduce.parse(args)[0])
    assert cfg.model.padding == "same" and check_model_dir(cfg) is False  # accepted, not finished


def test_results_go_to_the_runs_own_folder_and_a_bad_path_is_refused_before_training(tmp_path, capsys):
    """A quick look never overwrites the checkout's results/: they go under --out unless named."""
    options_, _ = reproduce.parse(["degradation", "--budget=cpu", f"--out={tmp_path / 'runs'}"])
    assert options_.results_dir == tmp_path / "runs" / "results"
    options_, _ = reproduce.parse(["degradation", "--dataset=digits", f"--out={tmp_path / 'runs'}"])
    assert options_.results_dir == tmp_path / "runs" / "digits" / "results"  # not CIFAR-10's
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = ["table6", "--models=resnet8", "--budget=2", "--dataset=digits", f"--out={tmp_path / 'runs'}"]
    assert reproduce.main([*args, f"--results={blocker / 'sub'}"]) == 1
    assert "--results=" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "digits" / "2").exists()  # nothing was trained


def test_the_default_is_a_quick_look_on_the_digits_and_each_dataset_and_budget_has_its_folder(
    tmp_path, capsys
):
    out = tmp_path / "runs"
    quick = plan.plan(reproduce.parse(["degradation", f"--out={out}"])[0])
    assert {(c.data.dataset, c.optim.train_steps) for c in quick} == {("digits", options.BUDGETS["quick"])}
    assert plan.estimate_seconds(quick) < 15 * 60  # minutes, not hours (the paper's nets, 2 cores)
    assert {pathlib.Path(c.run.model_dir).parent for c in quick} == {out / "digits" / "quick"}
    assert (
        plan.plan(reproduce.parse(["table6", "--budget=quick", f"--out={out}"])[0])[0].data.dataset
        == "digits"
    )
    # A budget by name or number is the paper's CIFAR-10, in the folders every run before used:
    # the long runs resume with the same command.
    same = ["--models=plain20", f"--out={out}", f"--carry={tmp_path / 'carry'}"]
    (long,) = plan.plan(reproduce.parse(["degradation", "--budget=16000", *same])[0])
    assert (long.data.dataset, long.run.model_dir) == ("cifar10", str(out / "16000" / "plain20"))
    assert long.run.carry_dir == str(tmp_path / "carry" / "16000" / "plain20")
    (table6,) = plan.plan(reproduce.parse(["table6", "--budget=64k", f"--out={out}"])[0])
    assert table6.run.model_dir == str(out / "64k" / "resnet20")
    # The digits and CIFAR-10 at one budget no longer share a folder...
    (digits,) = plan.plan(reproduce.parse(["table6", "--budget=cpu", "--dataset=digits", f"--out={out}"])[0])
    (cifar,) = plan.plan(reproduce.parse(["table6", "--budget=cpu", f"--out={out}"])[0])
    assert digits.run.model_dir == str(out / "digits" / "cpu" / "resnet20")
    assert cifar.run.model_dir == str(out / "cpu" / "resnet20")
    # ...but a digits run started in the shared folder before resumes where it is, and only the digits.
    old = out / "cpu" / "resnet20"
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps(digits.replace(model_dir=str(old)).to_json()))
    (again,) = plan.plan(reproduce.parse(["table6", "--budget=cpu", "--dataset=digits", f"--out={out}"])[0])
    assert again.run.model_dir == str(old)
    (cifar,) = plan.plan(reproduce.parse(["table6", "--budget=cpu", f"--out={out}"])[0])
    assert cifar.run.model_dir == str(old)  # its own folder (holding a digits run: train.py refuses it)
    (elsewhere,) = plan.plan(
        reproduce.parse(["table6", "--budget=300", "--dataset=cifar100", f"--out={out}"])[0]
    )
    assert elsewhere.run.model_dir == str(out / "cifar100" / "300" / "resnet20")
