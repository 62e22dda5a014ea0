"""keras-tuner searches over shortcuts A/B/C on the embedded digits, ResNet-8, a few steps per trial."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import keras
import keras_tuner
import pytest
from conftest import REPO

from keras_resnet import build_model, count, training, tuning
from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.models.layers import ZeroPadShortcut
from keras_resnet.tuning import cluster


def tiny_config(model_dir, **overrides) -> TrainConfig:
    """ResNet-8 (the smallest 6n+2 net), one Keras epoch of 2 steps of 32 images per trial."""
    fields = dict(
        model="resnet8",
        model_dir=str(model_dir),
        dataset="digits",
        batch_size=32,
        eval_batch_size=2500,
        train_steps=2,
        distribution="one_device",
    )
    return TrainConfig.of(**{**fields, **overrides})


def shortcut_of(model: keras.Model) -> str:
    """Which option a residual net was built with, read off its layers (section 3.3)."""
    if any(isinstance(layer, ZeroPadShortcut) for layer in model.layers):
        return "A"  # zero-padding identity where the shape changes
    # B projects only where the shape changes; C also on the first, shape-keeping block.
    return "C" if "conv2_block1_0_conv" in {layer.name for layer in model.layers} else "B"


class Recorder(keras.callbacks.Callback):
    """Appends `<shortcut> <replicas>` to `path` when a trial starts training; can die mid-trial.

    keras-tuner deep-copies callbacks for every trial, so the state lives in the file.
    """

    def __init__(self, path, interrupt_fit: int | None = None):
        super().__init__()
        self.path, self.interrupt_fit = str(path), interrupt_fit

    def fits(self) -> list[str]:
        return pathlib.Path(self.path).read_text().split("\n")[:-1] if os.path.exists(self.path) else []

    def on_train_begin(self, logs=None):
        replicas = self.model.distribute_strategy.num_replicas_in_sync
        with open(self.path, "a") as f:
            f.write(f"{shortcut_of(self.model)} {replicas}\n")

    def on_train_batch_end(self, batch, logs=None):
        if self.interrupt_fit is not None and len(self.fits()) == self.interrupt_fit:
            raise KeyboardInterrupt  # what Ctrl-C raises; not an Exception, so keras-tuner lets it through


def read_csv(path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- bad input (no training)


@pytest.mark.parametrize(
    "search, match",
    [
        ([], "search space is empty"),
        (["", " "], "search space is empty"),
        (["width"], "unknown hyperparameter 'width'"),
        (["shortcut", "shortcut"], "twice"),
        (["shortcut=D"], "Unknown shortcut option 'D'"),
        (["depth=21"], "6n\\+2"),
        (["learning_rate=-1"], "learning_rate must be > 0"),
        (["shortcut=A"], "single configuration"),
    ],
)
def test_bad_search_space_is_refused_before_any_work(tmp_path, search, match):
    cfg = TrainConfig.of(model="resnet8", model_dir=str(tmp_path), train_steps=2)
    with pytest.raises(ConfigError, match=match):
        tuning.search(cfg, search=search)
    assert not (tmp_path / "tuning").exists()


def test_search_whose_data_fails_to_load_records_no_settings(tmp_path):
    # The corrected command must not then be refused as "a search with other settings".
    missing = tmp_path / "no_images"
    cfg = TrainConfig.of(model="resnet8", model_dir=str(tmp_path), train_steps=2, dataset=f"folder:{missing}")
    with pytest.raises(ConfigError, match="no_images"):
        tuning.search(cfg)
    assert not (tuning.default_tune_dir(cfg) / "search.json").exists()


@pytest.mark.parametrize("damage", ['{"tuner": "gr', "[]", "\udcff"], ids=["truncated", "a-list", "not-utf8"])
def test_a_damaged_search_record_is_one_line_and_deleting_it_continues(tmp_path, damage):
    from keras_resnet.tuning import searching

    cfg = TrainConfig.of(model="resnet8", model_dir=str(tmp_path), train_steps=2)
    record = tmp_path / "search.json"
    record.write_bytes(damage.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError, match=r"search\.json is damaged .*delete it to continue"):
        searching.check_same_search(tmp_path, cfg, "grid", {"shortcut": ["A", "B"]})
    record.unlink()
    assert searching.check_same_search(tmp_path, cfg, "grid", {"shortcut": ["A", "B"]})["tuner"] == "grid"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tuner="annealing"), "Unknown --tuner 'annealing'.*grid, random, bayesian, hyperband"),
        (dict(max_trials=0), "--max_trials must be an integer >= 1"),
        (dict(max_trials=-3), "--max_trials must be an integer >= 1"),
    ],
)
def test_bad_tuner_or_max_trials_is_refused(tmp_path, kwargs, match):
    cfg = TrainConfig.of(model="resnet8", model_dir=str(tmp_path), train_steps=2)
    with pytest.raises(ConfigError, match=match):
        tuning.search(cfg, **kwargs)


def test_shortcut_search_on_a_plain_net_says_what_to_do():
    cfg = TrainConfig.of(model="plain20", model_dir="unused", train_steps=2)
    with pytest.raises(ValueError, match="--model=resnet20, or add `plain`"):
        tuning.make_space(cfg, ["shortcut"])


def test_space_puts_the_configured_value_first_and_counts_plain_nets_once():
    cfg = TrainConfig.of(model="resnet32", learning_rate=0.3, model_dir="unused", train_steps=2)
    space = tuning.make_space(cfg, ["plain", "shortcut", "depth", "learning_rate", "weight_decay=1e-4/0"])
    assert space["depth"][0] == 32 and set(space["depth"]) == {20, 32, 44, 56, 110}
    assert space["learning_rate"][0] == 0.3
    assert space["shortcut"] == ("A", "B", "C")  # CIFAR's default A first
    assert space["plain"] == (False, True)
    # A plain net has no shortcut: 3 residual + 1 plain per depth, learning rate, weight decay.
    assert tuning.space_size(space) == (3 + 1) * 5 * 4 * 2


def test_trial_values_become_training_flags():
    cfg = TrainConfig.of(model="resnet20", model_dir="unused", train_steps=2)
    trial = tuning.apply_values(cfg, {"shortcut": "C", "depth": 56, "learning_rate": 0.05})
    assert (trial.model.name, trial.model.resolved_shortcut, trial.optim.learning_rate) == (
        "resnet56",
        "C",
        0.05,
    )
    assert trial.optim.weight_decay == cfg.optim.weight_decay  # not searched: as configured
    # 50 = 6*8+2 is a CIFAR depth too: the trial must not turn into the ImageNet ResNet-50.
    assert tuning.apply_values(cfg, {"depth": 50}).model.spec.family == "cifar"
    assert tuning.apply_values(cfg, {"plain": True}).model.spec.residual is False


def test_hyperband_trials_stop_at_the_configured_run_length(tmp_path):
    # 1,000 iterations in checkpoint intervals of 300: Hyperband's longest budget is 4 intervals
    # (rounded up); those trials must stop at 1,000, not 1,200; shorter ones run whole intervals.
    cfg = TrainConfig.of(model="resnet8", model_dir=str(tmp_path), train_steps=1000, checkpoint_steps=300)
    hypermodel = tuning.ResNetHyperModel(cfg, tuning.make_space(cfg, ["shortcut"]))
    kt = tuning.make_tuner(
        hypermodel, "hyperband", max_trials=None, directory=tmp_path, run_steps=(1000, 300)
    )
    for epochs, steps in ((4, 1000), (2, 600)):
        hp = keras_tuner.HyperParameters()
        hypermodel.build(hp)
        hp.values["tuner/epochs"] = epochs
        trial = keras_tuner.engine.trial.Trial(hp, trial_id=f"t{epochs}")
        assert kt.trial_config(trial).optim.train_steps == steps


def test_hyperband_over_a_space_smaller_than_its_first_round_is_refused(tmp_path):
    # 4 intervals: Hyperband's first round wants 5 configurations; shortcut has 3, so it would
    # train only the 1-interval trials and report one of them as the best.
    cfg = tiny_config(tmp_path / "run", train_steps=4, checkpoint_steps=1)
    with pytest.raises(
        ConfigError, match="hyperband over 4 .* starts with 5 configurations, the space has 3"
    ):
        tuning.search(cfg, tuner="hyperband")
    assert not (tmp_path / "run" / "tuning" / "search.json").exists()


# ----------------------------------------------------------------------------- searches on CIFAR-10


@pytest.fixture(scope="module")
def abc_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("abc")
    recorder = Recorder(root / "fits.txt")
    cfg = tiny_config(root / "run", export_dir=str(root / "export"), tta="flip", flip="random")
    result = tuning.search(cfg, callbacks=[recorder])
    return result, recorder, cfg


@pytest.mark.slow
def test_grid_search_trains_each_shortcut_once_and_tabulates_them(abc_search):
    result, recorder, _ = abc_search
    # The default tuner is the grid: one trial per option, the paper's default A first.
    assert recorder.fits() == ["A 1", "B 1", "C 1"]
    rows = read_csv(result.tables["csv"])
    assert [r["shortcut"] for r in rows] == ["A", "B", "C"]
    assert all(r["status"] == "COMPLETED" for r in rows)
    for row in rows:
        assert 0.0 <= float(row["val_error"]) <= 1.0
        assert float(row["train_time_s"]) > 0
        # Sizes are those of the net the trial names, counted afresh.
        counted = count(build_model("resnet8", shortcut=row["shortcut"]))
        assert (int(row["params"]), int(row["macs"])) == (counted.params, counted.macs)
    # Projections cost parameters: A has none, B only where the shape changes, C everywhere.
    params = [int(r["params"]) for r in rows]
    assert params[0] < params[1] < params[2]
    markdown = result.tables["md"].read_text()
    for row in rows:
        assert f"| {row['trial']} | {row['shortcut']} | " in markdown
    assert result.tables["png"].stat().st_size > 0

    best = min(rows, key=lambda r: float(r["val_error"]))
    assert result.best_values == {"shortcut": best["shortcut"]}
    assert result.best_val_error == pytest.approx(float(best["val_error"]))
    assert 0.0 <= result.test_error <= 1.0
    model = keras.saving.load_model(result.model_path, safe_mode=True, compile=False)
    assert shortcut_of(model) == best["shortcut"]
    assert (result.model_path.parent / "data_info.json").is_file()
    # --export_dir: the winner is served as version 1 of a TF Serving model.
    assert result.export_path == result.model_path.parents[3] / "export" / "1"
    assert (result.export_path / "saved_model.pb").is_file()


@pytest.mark.slow
def test_a_finished_search_run_again_trains_and_exports_nothing_new(abc_search):
    result, recorder, cfg = abc_search
    again = tuning.search(cfg, callbacks=[recorder])
    assert recorder.fits() == ["A 1", "B 1", "C 1"]
    assert (again.best_trial, again.export_path) == (result.best_trial, result.export_path)
    assert sorted(p.name for p in result.export_path.parent.glob("[!.]*")) == ["1"]  # no version 2
    # best/ is a run directory with the winner's settings: re-exporting it serves what was scored.
    best_dir = result.model_path.parent
    saved = json.loads((best_dir / "config.json").read_text())
    assert (saved["tta"], saved["shortcut"]) == ("flip", result.best_values["shortcut"])
    assert json.loads((best_dir / "summary.json").read_text())["export"] == str(result.export_path)


@pytest.mark.slow
def test_a_search_whose_every_trial_diverges_ends_in_one_message_also_when_run_again(tmp_path, capsys):
    # Four failures in a row: one more than keras-tuner's default limit, which raised from inside
    # the oracle and, run again, re-ran the third trial forever.
    cfg = tiny_config(tmp_path / "run", learning_rate=1e20, train_steps=4)
    search = ["learning_rate=1e20/1e21/1e22/1e23"]
    for _ in range(2):
        with pytest.raises(tuning.NoTrialCompleted, match="no trial of the search in .* completed"):
            tuning.search(cfg, search=search)
        trials = tuning.trials_on_disk(tmp_path / "run" / "tuning")
        assert [status for _, status, _ in trials] == ["FAILED"] * 4
        # One numbering (the trials' ids and folders, from 0), and one line per failed trial with its
        # reason, not a traceback, nor a run's advice that does not apply to a trial.
        out = capsys.readouterr().out
        ids = sorted(d.name.removeprefix("trial_") for _, _, d in trials)
        failed = [
            line for line in out.splitlines() if line.startswith("[tune] trial ") and " failed: " in line
        ]
        assert sorted(line.split()[2] for line in failed) == ids
        assert all("diverged" in line for line in failed)
        assert "Trial #" not in out and "Traceback" not in out and "--allow_config_change" not in out


def test_grid_oracle_hands_every_worker_a_trial(tmp_path):
    # keras-tuner's grid proposes a configuration only from ended trials: the third worker of a
    # cluster got IDLE until one of the first two trials had ended.
    from keras_resnet import workarounds

    hp = keras_tuner.HyperParameters()
    hp.Choice("shortcut", ["A", "B", "C", "D"])
    oracle = workarounds.resumable_grid_oracle()(objective=keras_tuner.Objective("e", "min"), seed=1)
    oracle._set_project_dir(str(tmp_path), "search")
    oracle.update_space(hp)
    trials = [oracle.create_trial(f"tuner{i}") for i in range(5)]
    assert [t.status for t in trials] == ["RUNNING"] * 4 + ["IDLE"]
    assert [t.hyperparameters.values["shortcut"] for t in trials[:4]] == ["A", "B", "C", "D"]
    oracle.end_trial(trials[0])
    assert oracle.create_trial("tuner0").status == "IDLE"  # all handed out; still running
    for trial in trials[1:4]:
        oracle.end_trial(trial)
    assert oracle.create_trial("tuner0").status == "STOPPED"


def test_a_reloaded_oracle_does_not_retry_the_last_ended_trial(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    hypermodel = tuning.ResNetHyperModel(cfg, tuning.make_space(cfg, ["shortcut"]))

    def tuner(max_trials):
        return tuning.make_tuner(hypermodel, "random", max_trials=max_trials, directory=tmp_path)

    kt = tuner(10)
    kt.save()  # as the chief does before serving; then only its oracle saves, at each trial's end
    for _ in range(3):  # every configuration, each failed
        trial = kt.oracle.create_trial("tuner0")
        trial.status = "FAILED"
        kt.oracle.end_trial(trial)
    assert kt.oracle.create_trial("tuner0").status == "STOPPED"  # 3 configurations only
    again = tuner(10)
    assert again.oracle._retry_queue == []  # keras-tuner's reload queued trial 2 again
    # A random search ends short of --max_trials: only the chief's record says it is over.
    assert not again._all_trials_ended()
    (pathlib.Path(again.project_dir) / cluster.SEARCH_ENDED).write_text('{"max_trials": 10}')
    assert again._all_trials_ended() and not tuner(12)._all_trials_ended()


def test_a_random_search_hands_out_every_configuration_of_a_small_space(tmp_path):
    # keras-tuner's random draws give up after 20 repeats in a row: this 24-configuration search
    # stopped after 23, one configuration never tried.
    cfg = tiny_config(tmp_path / "run")
    rates = "/".join(str(r / 10) for r in range(1, 9))
    space = tuning.make_space(cfg, ["shortcut", f"learning_rate={rates}"])
    hypermodel = tuning.ResNetHyperModel(cfg, space)
    oracle = tuning.make_tuner(hypermodel, "random", max_trials=100, directory=tmp_path).oracle
    seen = set()
    while (trial := oracle.create_trial("tuner0")).status == "RUNNING":
        seen.add(tuple(trial.hyperparameters.values.values()))
        trial.status = "FAILED"
        oracle.end_trial(trial)
    assert len(seen) == len(space["shortcut"]) * len(space["learning_rate"]) == 24


def test_a_second_chief_on_a_port_in_use_is_refused(monkeypatch, tmp_path):
    from concurrent import futures

    import grpc

    holder = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # grpcio's defaults, as keras-tuner's
    port = holder.add_insecure_port("127.0.0.1:0")
    holder.start()
    try:
        monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
        monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
        monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(port))
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: is the port in use"):
            tuning.search(tiny_config(tmp_path / "run"))
    finally:
        holder.stop(grace=0)


@pytest.mark.slow
def test_best_flag_file_reproduces_the_best_configuration_through_train_py(abc_search, tmp_path):
    result, _, cfg = abc_search
    best = min(read_csv(result.tables["csv"]), key=lambda r: float(r["val_error"]))
    model_dir = tmp_path / "repro"
    # Later flags override the file's: a new run directory, and no second export.
    command = [sys.executable, "train.py", f"--flagfile={result.flagfile}", f"--model_dir={model_dir}"]
    proc = subprocess.run(
        [*command, "--export_dir="],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["shortcut"] == best["shortcut"] and config["model"] == "resnet8"
    # Every flag that defines the run is the searched configuration with the winner's values.
    expected = tuning.apply_values(cfg, {"shortcut": best["shortcut"]})
    assert TrainConfig.from_json(config).training_fields() == expected.training_fields()
    # A single run (not another search), on the full training set as the original flags said.
    assert config["validation_split"] is False
    assert not (model_dir / "tuning").exists()
    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True, compile=False)
    assert shortcut_of(model) == best["shortcut"]
    assert count(model).params == int(best["params"])


@pytest.mark.slow
def test_interrupted_search_under_mirrored_strategy_resumes_without_repeating_finished_trials(
    tmp_path,
):
    # The same A/B/C search on the two logical CPUs of conftest.py (one test for both behaviours:
    # a MirroredStrategy trial costs ~3x a single-device one here).
    cfg = tiny_config(tmp_path / "run", distribution="mirrored")
    fits = tmp_path / "fits.txt"
    # Dies in the first step of the second trial, as a Ctrl-C or a kill would leave it.
    with pytest.raises(training.TrainingStopped, match=r"1 trial\(s\) done.*run the same command") as stop:
        tuning.search(cfg, callbacks=[Recorder(fits, interrupt_fit=2)])
    assert stop.value.exit_code == 130  # train.py's exit status for an interruption
    first = tmp_path / "run" / "tuning" / "search" / "trial_0" / "trial.json"
    assert json.loads(first.read_text())["status"] == "COMPLETED"
    before = first.stat().st_mtime_ns

    result = tuning.search(cfg, callbacks=[Recorder(fits)])
    # A is not trained again; B, which was running, is re-run from its start, then C; every
    # trial on both replicas.
    assert Recorder(fits).fits() == ["A 2", "B 2", "B 2", "C 2"]
    assert first.stat().st_mtime_ns == before
    assert [(r["shortcut"], r["status"]) for r in result.rows] == [(s, "COMPLETED") for s in "ABC"]
    assert len(read_csv(result.tables["csv"])) == 3 and result.model_path.is_file()

    # A finished search run again trains nothing and gives the same answer, also when it was
    # started before the newest flags existed (its search.json without them).
    settings = tmp_path / "run" / "tuning" / "search.json"
    saved = json.loads(settings.read_text())
    saved["config"] = {k: v for k, v in saved["config"].items() if k not in ("skip_corrupt", "padding")}
    settings.write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="--padding: 'same' -> 'symmetric'"):
        tuning.search(cfg, callbacks=[Recorder(fits)])  # it was built with the old padding
    again = tuning.search(cfg.replace(padding="same"), callbacks=[Recorder(fits)])
    assert len(Recorder(fits).fits()) == 4
    assert again.best_trial == result.best_trial

    # Another space in the same --tune_dir is refused rather than mixed in.
    with pytest.raises(ConfigError, match="holds a search with other settings"):
        tuning.search(cfg, search=["shortcut=A/C"])
