"""train.py and keras_resnet.training on the embedded digits (real, offline) with ResNet-8 and a few steps.

In-process runs use the two logical CPUs of conftest (MirroredStrategy, 2 replicas); a separate
process is used only where it is the point: kill -9 and Ctrl-C, the 2-worker cluster, exit codes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import REPO, TINY

from keras_resnet import config, plots, training
from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.models import compiled
from keras_resnet.rundir import RunDir
from keras_resnet.training import callbacks, optimization


def _history(model_dir: pathlib.Path) -> list[dict]:
    with (model_dir / "history.csv").open() as f:
        return list(csv.DictReader(f))


def _env(**extra) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    env.pop("TF_CONFIG", None)
    return env | extra


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[TrainConfig, dict]:
    """One full in-process run: 40 steps with a held-out validation split, on 2 replicas."""
    model_dir = tmp_path_factory.mktemp("run")
    cfg = TrainConfig.of(
        **{**TINY, "checkpoint_steps": 20},
        model_dir=str(model_dir),
        train_steps=40,
        validation_split=True,
        lr_schedule="constant",  # 40 steps are too few for the step schedule to show anything
        learning_rate=0.05,
        export_dir=str(model_dir / "export"),
    )
    summary = training.run(cfg, verbose=0)
    return cfg, summary


def test_run_writes_every_output(finished_run):
    cfg, summary = finished_run
    model_dir = pathlib.Path(cfg.run.model_dir)
    outputs = (
        "config.json",
        "flags.cfg",
        "data_info.json",
        "history.csv",
        "curves.png",
        "summary.json",
        "model.keras",
    )
    for name in outputs:
        assert (model_dir / name).is_file(), name
    assert list((model_dir / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    state = json.loads((model_dir / "checkpoints" / "state.json").read_text())
    assert state["step"] == 40 and (model_dir / "checkpoints" / state["weights"]).is_file()
    assert not list(model_dir.rglob("*.tmp")) and not list(model_dir.rglob("*.partial.keras"))

    rows = _history(model_dir)
    assert [int(r["step"]) for r in rows] == [20, 40]
    assert [r["lr_changes"] for r in rows] == ["", ""]  # a constant schedule never jumps
    for key in ("loss", "error", "val_loss", "val_error", "test_loss", "test_error", "lr", "images_per_sec"):
        assert all(math.isfinite(float(r[key])) for r in rows), key
    assert float(rows[-1]["test_error"]) == pytest.approx(summary.test_error, abs=1e-6)

    on_disk = json.loads((model_dir / "summary.json").read_text())
    assert on_disk == summary.to_json()
    model = keras.models.load_model(model_dir / "model.keras")
    counts = keras_resnet_count(model)
    assert (summary.params, summary.macs) == (counts.params, counts.macs)
    assert summary.steps == summary.total_steps == 40
    assert summary.replicas == 2 and summary.workers == 1  # conftest's 2 logical CPUs
    assert summary.images_per_sec > 0 and summary.wall_time_s > 0
    assert 0 < summary.test_error < 1 and summary.val_error is not None
    # --export_dir hands the final model to the TF Serving export: <export_dir>/<version>/.
    exported = pathlib.Path(summary.export_path)
    assert exported.parent == model_dir / "export" and (exported / "saved_model.pb").is_file()


def keras_resnet_count(model):
    from keras_resnet import models

    return models.count(model)


def test_loss_goes_down(finished_run):
    rows = _history(pathlib.Path(finished_run[0].run.model_dir))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    # ln(10) is the loss of a uniform guess over 10 classes; training must get below it.
    assert float(rows[-1]["loss"]) < math.log(10)


def test_same_command_on_finished_run_does_nothing(finished_run, capsys):
    cfg, summary = finished_run
    before = (pathlib.Path(cfg.run.model_dir) / "summary.json").stat().st_mtime_ns
    assert training.run(cfg, verbose=0) == summary
    assert (pathlib.Path(cfg.run.model_dir) / "summary.json").stat().st_mtime_ns == before
    assert "nothing to do" in capsys.readouterr().out


def test_model_dir_with_other_configuration_is_refused(finished_run):
    cfg, _ = finished_run
    other = TrainConfig.of(**{**cfg.to_json(), "learning_rate": 0.1})
    with pytest.raises(ConfigError, match="--learning_rate: 0.05 -> 0.1.*--allow_config_change"):
        training.run(other)


# lr 1e3 blows up slowly (huge and tiny floats are slow on a CPU): about 2 minutes.
@pytest.mark.parametrize(
    "learning_rate", [1e12, pytest.param(1e3, marks=pytest.mark.slow)], ids=["nan", "exploding"]
)
def test_a_diverged_run_stops_with_exit_3_and_keeps_the_last_good_checkpoint(
    finished_run, tmp_path, learning_rate
):
    cfg, _ = finished_run
    model_dir = tmp_path / "run"
    shutil.copytree(cfg.run.model_dir, model_dir)
    # Continue the finished 40-step run with an absurd learning rate: it must diverge, to NaN
    # (1e12) or to a huge but finite loss (1e3: 6e29 once, with BN variances at inf).
    diverging = TrainConfig.of(
        **{
            **cfg.to_json(),
            "model_dir": str(model_dir),
            "train_steps": 80,
            "checkpoint_steps": 1,
            "learning_rate": learning_rate,
            "eval_test": False,
            "allow_config_change": True,
        }
    )
    with pytest.raises(training.TrainingStopped, match=r"training diverged at step (\d+) \(") as err:
        training.run(diverging, verbose=0)
    assert err.value.exit_code == 3
    diverged_at, kept = (int(n) for n in re.findall(r"step (\d+)", str(err.value))[:2])
    state = json.loads((model_dir / "checkpoints" / "state.json").read_text())
    assert 40 <= state["step"] == kept < diverged_at  # the last step whose loss and weights were finite
    model = keras.models.load_model(model_dir / "model.keras")  # untouched: the 40-step model
    assert json.loads((model_dir / "summary.json").read_text())["steps"] == 40
    model.load_weights(model_dir / "checkpoints" / state["weights"])
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


def test_a_checkpoint_with_a_non_finite_bn_statistic_is_never_written(tmp_path):
    import keras_resnet as kr
    from keras_resnet.training.checkpoints import Checkpointer

    model = kr.build_model("resnet8", num_classes=10, input_shape=(16, 16, 3))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.set_model(model)
    checkpointer.save(1)
    assert (tmp_path / "checkpoints" / "state.json").exists() and checkpointer.diverged is None
    variance = next(v for v in model.variables if v.path.endswith("moving_variance"))
    variance.assign(np.full(variance.shape, np.inf, np.float32))
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    checkpointer.save(2)
    assert checkpointer.diverged is not None and variance.path in checkpointer.diverged[1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    assert model.stop_training


def test_step_schedule_changes_lr_at_the_milestones():
    total, milestones = 64000, (32000, 48000)
    schedule = compiled.LearningRate("step", 0.1, total, milestones, 0.1)
    steps = np.array([0, 1, 31999, 32000, 32001, 47999, 48000, 63999])
    got = np.array([float(schedule(s)) for s in steps])
    # lr = 0.1 * 0.1^(number of milestones reached)
    want = 0.1 * 0.1 ** np.array([sum(s >= m for m in milestones) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert config.milestones(TrainConfig.of().optim, 64000) == milestones  # the paper's 32k/48k of 64k
    cosine = compiled.LearningRate("cosine", 0.1, 100)
    np.testing.assert_allclose(
        [float(cosine(s)) for s in (0, 50, 100, 200)], [0.1, 0.05, 0.0, 0.0], atol=1e-7
    )


def test_lr_applied_per_step_with_warmup():
    """The learning rate each real training step used: warmup at 0.01, then the step schedule."""
    from keras_resnet import data

    cfg = TrainConfig.of(
        model="resnet8", train_steps=12, lr_milestones=(8, 10), warmup=True, warmup_max_steps=4, model_dir="x"
    )
    ds = data.load("digits", batch_size=16)
    rate = optimization.schedule(cfg.optim, cfg.optim.train_steps)
    model = optimization.compile_model(
        training.build_model(cfg, ds.info), cfg.optim, cfg.optim.train_steps, rate
    )
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(logs["error"]))

    control = callbacks.LearningRateControl(cfg.optim, rate, verbose=False)
    model.fit(ds.train, steps_per_epoch=12, epochs=1, shuffle=False, callbacks=[control, Record()], verbose=0)
    lrs, errors = seen[0::2], seen[1::2]
    # Rule: 0.01 while warming; warming ends after the step whose running error < 0.8, or step 4.
    expected, warming = [], True
    for step in range(12):
        base = 0.1 * 0.1 ** sum(step >= m for m in (8, 10))
        expected.append(0.01 if warming else base)
        if warming and (errors[step] < 0.8 or step + 1 >= 4):
            warming, warmup_end = False, step + 1
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    # The history records where the rate jumped, in steps done before the first step at the new rate.
    assert control.pop_changes() == {"lr_changes": f"{warmup_end} 8 10"}
    assert control.pop_changes() == {"lr_changes": ""}


def test_lr_change_markers_from_history_rows():
    def rows(lrs, **extra):
        return [{"step": str(100 * (i + 1)), "lr": str(lr), **extra} for i, lr in enumerate(lrs)]

    logged = rows([0.1, 0.1, 0.01], lr_changes="")
    logged[2]["lr_changes"] = "250"
    assert plots.lr_change_steps(logged) == [250]  # exact, as logged
    # Files without the column: the last row before each jump; a cosine decay is no jump.
    assert plots.lr_change_steps(rows([0.1, 0.1, 0.01, 0.01, 0.001])) == [200, 400]
    assert plots.lr_change_steps(rows([0.1, 0.09, 0.07, 0.05, 0.0])) == []
    assert plots.lr_change_steps(rows([0.01, 0.1])) == [100]  # warmup over


def _history_resuming_at(step: int, path, **kwargs) -> callbacks.HistoryCSV:
    """A HistoryCSV whose (tiny) model resumes at global step `step`."""
    history = callbacks.HistoryCSV(path, **kwargs)
    history.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)], name="m"))
    history.model.compile(keras.optimizers.SGD())
    history.model.optimizer.build(history.model.trainable_variables)
    history.model.optimizer.iterations.assign(step)
    history.on_train_begin()
    return history


def test_history_from_before_lr_changes_keeps_its_markers_when_a_run_resumes(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,step,lr\n1,100,0.1\n2,200,0.01\n3,300,0.01\n")
    history = _history_resuming_at(300, path, columns=lambda: {"lr_changes": "350"})
    history.on_epoch_end(3, {"lr": 0.001, "step": 400})
    with path.open() as f:
        assert plots.lr_change_steps(list(csv.DictReader(f))) == [100, 350]


def test_history_rows_from_before_the_passes_column_are_renumbered_on_resume(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,step,lr\n1,100,0.1\n2,150,0.1\n2,250,0.1\n")  # Keras' index, repeated
    history = _history_resuming_at(250, path, steps_per_epoch=100)
    history.on_epoch_end(0, {"lr": 0.1, "step": 300})
    with path.open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1.0", "1.5", "2.5", "3.0"]


def test_curves_are_redrawn_at_most_every_plot_every_s_and_at_the_end_of_training(tmp_path):
    path = tmp_path / "history.csv"
    history = _history_resuming_at(0, path)
    figure = path.with_name("curves.png")
    history.on_epoch_end(0, {"loss": 2.0, "step": 10})
    assert figure.is_file()  # the first chunk is drawn at once
    figure.unlink()
    history.on_epoch_end(1, {"loss": 1.5, "step": 20})
    assert not figure.exists()  # too soon after the last drawing; the rows are written
    assert path.read_text().count("\n") == 3
    history.plotted_at -= history.PLOT_EVERY_S  # as if the last drawing were that long ago
    history.on_epoch_end(2, {"loss": 1.2, "step": 30})
    assert figure.is_file()
    figure.unlink()
    history.on_epoch_end(3, {"loss": 1.1, "step": 40})
    history.on_train_end()  # the last row is drawn, however soon
    assert figure.is_file()
    figure.unlink()
    history.on_train_end()  # nothing new since
    assert not figure.exists()


@pytest.mark.slow
def test_imagenet_family_short_run_on_imagenette(imagenette_dir, tmp_path, monkeypatch):
    """ResNet-50 (bottlenecks, option B, fused BN, 2 replicas) through the ImageNet recipe.

    On real imagenette JPEGs: a 3-class image folder of 48 training and 24 validation images taken
    from the shared copy, so that decoding and evaluation stay short.
    """
    from keras_resnet.data import splits

    root = tmp_path / "mini"
    for split, per_class in (("train", 16), ("val", 8)):
        for wnid in sorted(p.name for p in (imagenette_dir / split).iterdir())[:3]:
            (root / split / wnid).mkdir(parents=True)
            for image in sorted((imagenette_dir / split / wnid).glob("*.JPEG"))[:per_class]:
                shutil.copy(image, root / split / wnid / image.name)
    monkeypatch.setenv(splits.CACHE_ENV, str(tmp_path / "cache"))
    cfg = TrainConfig.of(
        model="resnet50",
        dataset=f"folder:{root}",
        image_size=32,  # small crops: this checks the path, not the accuracy
        batch_size=16,
        learning_rate=0.1 * 16 / 256,  # the paper's 0.1 at batch 256, scaled linearly
        train_steps=4,
        checkpoint_steps=2,
        eval_test=False,
        model_dir=str(tmp_path / "run"),
    )
    summary = training.run(cfg, verbose=0)
    assert (summary.model, summary.shortcut) == ("resnet50", "B")
    assert summary.steps == 4 and summary.replicas == 2
    # Table 1's ResNet-50 with a 3-class classifier instead of 1000.
    assert summary.params == 25_557_032 - 2048 * 997 - 997
    assert math.isfinite(summary.test_loss) and 0 <= summary.test_error <= 1
    assert summary.train_error is not None and math.isfinite(summary.train_error)
    assert [int(r["step"]) for r in _history(pathlib.Path(cfg.run.model_dir))] == [2, 4]


def test_sync_bn_synchronizes_every_batch_norm():
    from keras_resnet import data

    info = data.load("digits").info
    plain = training.build_model(TrainConfig.of(model="resnet8"), info)
    synced = training.build_model(TrainConfig.of(model="resnet8", sync_bn=True), info)
    bns = [layer for layer in synced.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.synchronized for layer in bns)
    assert [w.shape for w in synced.weights] == [w.shape for w in plain.weights]


def test_mirrored_strategy_has_two_replicas():
    strategy = training.strategy_for(TrainConfig.of(model_dir="x", train_steps=1))
    assert strategy.num_replicas_in_sync == 2
    one = training.strategy_for(TrainConfig.of(model_dir="x", train_steps=1, distribution="one_device"))
    assert one.num_replicas_in_sync == 1


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"model": "resnet7"}, "--model"),
        ({"model": "densenet121"}, "--model"),
        ({"shortcut": "D"}, "--shortcut"),
        ({"batch_size": 0}, "--batch_size"),
        ({"batch_size": -8}, "--batch_size"),
        ({"batch_size": 33}, "--batch_size=33 does not divide across 2 replicas"),
        ({"train_steps": 0}, "--train_steps"),
        ({"model_dir": ""}, "--model_dir"),
        ({"lr_milestones": (300, 200)}, "--lr_milestones"),
    ],
)
def test_bad_input_is_refused_before_any_work(changes, flag, tmp_path):
    cfg = TrainConfig.of(**{**TINY, "model_dir": str(tmp_path / "run"), "train_steps": 10, **changes})
    with pytest.raises(ConfigError) as err:
        training.run(cfg)
    assert flag in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_configs_parse_and_match_the_paper(tmp_path):
    sys.path.insert(0, str(REPO))
    import train

    train.FLAGS.unparse_flags()
    seen = {}
    for path in sorted((REPO / "configs").glob("*.cfg")):
        train.FLAGS(["train.py", f"--flagfile={path}", "--model_dir=/tmp/x"])
        cfg = train.from_absl_flags(train.FLAGS)
        cfg.check()
        # A preset is a recipe: where a run writes is the command's to say.
        assert (cfg.run.model_dir, cfg.run.export_dir) == ("/tmp/x", ""), path
        seen[path.stem] = cfg
        train.FLAGS.unparse_flags()
    for depth in (20, 32, 44, 56, 110):
        cfg = seen[f"cifar10_resnet{depth}"]
        assert (cfg.data.batch_size, cfg.optim.train_steps, cfg.optim.lr_milestones) == (
            128,
            64000,
            (32000, 48000),
        )
        assert (cfg.optim.learning_rate, cfg.optim.weight_decay, cfg.optim.momentum, cfg.optim.warmup) == (
            0.1,
            1e-4,
            0.9,
            depth == 110,
        )
    assert {f"cifar10_plain{d}" for d in (20, 32, 44, 56)} <= set(seen)
    assert {seen[f"imagenet_resnet34_{s}"].model.shortcut for s in "abc"} == {"A", "B", "C"}
    for depth in (18, 50, 101, 152):
        cfg = seen[f"imagenet_resnet{depth}"]
        assert (cfg.data.batch_size, cfg.optim.train_steps, cfg.optim.lr_schedule) == (256, 600000, "plateau")
    # A flag file written by the config reads back as the same config.
    cfg = seen["cifar10_resnet20_cpu"]
    flagfile = tmp_path / "flags.cfg"
    try:
        flagfile.write_text(cfg.to_flags())
        train.FLAGS(["train.py", f"--flagfile={flagfile}"])
        assert train.from_absl_flags(train.FLAGS) == cfg
    finally:
        train.FLAGS.unparse_flags()


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *args]


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--model=resnet7"], "--model"),
        (["--batch_size=0"], "--batch_size"),
        (["--time_budget=5", "--tune"], "--time_budget"),
    ],
)
@pytest.mark.slow
def test_train_py_bad_flag_exits_with_one_line(args, flag, tmp_path):
    proc = subprocess.run(
        _train_cmd(f"--model_dir={tmp_path}/run", "--train_steps=10", *args),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: error: {flag}")
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def _wait_for_step(model_dir: pathlib.Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    state = model_dir / "checkpoints" / "state.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        if state.exists():
            saved = json.loads(state.read_text())["step"]
            if saved >= step:
                return saved
        time.sleep(0.2)
    raise TimeoutError(f"no checkpoint of step {step} in {model_dir}")


@pytest.mark.slow
def test_ctrl_c_then_kill_9_then_resume_finishes_all_steps(tmp_path):
    model_dir = tmp_path / "run"
    cfg = TrainConfig.of(**TINY, model_dir=str(model_dir), train_steps=50, eval_test=False, seed=3)
    flagfile = tmp_path / "run.cfg"
    flagfile.write_text(cfg.to_flags())
    cmd = _train_cmd(f"--flagfile={flagfile}", "--cpu_devices=2")  # MirroredStrategy, 2 replicas
    run_kw = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())

    # Ctrl-C after the first checkpoint: a checkpoint of the current step, exit 130.
    proc = subprocess.Popen(cmd, **run_kw)
    _wait_for_step(model_dir, 10, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "Run the same command again to resume" in out
    interrupted = json.loads((model_dir / "checkpoints" / "state.json").read_text())["step"]
    assert interrupted >= 10

    # The same command resumes; kill -9 after a later checkpoint.
    proc = subprocess.Popen(cmd, **run_kw)
    killed_at = _wait_for_step(model_dir, interrupted + 1, proc)
    proc.kill()
    out, _ = proc.communicate(timeout=60)
    assert f"resuming at step {interrupted}" in out

    # Once more: resumes from the last checkpoint and stops at exactly 50 steps.
    proc = subprocess.run(cmd, **run_kw, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = RunDir(model_dir).read_summary()
    assert summary.resumed_from_step >= killed_at
    assert summary.steps == summary.total_steps == 50 and summary.replicas == 2
    steps = [int(r["step"]) for r in _history(model_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 50
    assert interrupted in steps and killed_at in steps


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_worker_cluster_trains_and_only_the_chief_writes(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    dirs = [tmp_path / "chief", tmp_path / "worker1"]
    procs = []
    for index, model_dir in enumerate(dirs):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        cmd = _train_cmd(
            "--model=resnet8",
            "--dataset=digits",
            f"--model_dir={model_dir}",
            "--batch_size=32",
            "--eval_batch_size=1000",
            "--train_steps=6",
            "--checkpoint_steps=3",
        )
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=_env(TF_CONFIG=tf_config),
            )
        )
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    summary = RunDir(dirs[0]).read_summary()
    # MultiWorkerMirroredStrategy uses one CPU device per worker.
    assert (summary.workers, summary.replicas, summary.steps) == (2, 2, 6)
    assert [int(r["step"]) for r in _history(dirs[0])] == [3, 6]
    assert (dirs[0] / "model.keras").is_file()
    assert not dirs[1].exists(), sorted(p.name for p in dirs[1].rglob("*"))
