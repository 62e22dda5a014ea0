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


# ----------------------------------------------------------------------------- 2. data changed under a run


def _folder_run(tmp_path, train_steps: int):
    """A tiny run on a two-class folder of 8x8 PNGs (conftest.image_folder), a checkpoint every 2 steps."""
    from conftest import image_folder, tiny

    root = tmp_path / "images"
    image_folder(root)
    cfg = tiny(tmp_path / "run", dataset=f"folder:{root}", batch_size=2, checkpoint_steps=2)
    return root, cfg.replace(train_steps=train_steps, eval_test=False, image_size=8)


@pytest.mark.slow
def test_data_changed_under_a_resumed_run_is_refused_unless_allowed_and_then_recorded(tmp_path):
    import json

    root, cfg = _folder_run(tmp_path, train_steps=8)
    run = RunDir(cfg.run.model_dir)
    assert training.run(cfg, verbose=0, until_step=4).step == 4  # stopped there, as by a SIGTERM
    recorded = run.data_info.read_bytes()
    shutil.copy(root / "train" / "a" / "0.png", root / "train" / "a" / "9.png")  # one image added
    with pytest.raises(
        ConfigError, match=r"files: fingerprint \w+ -> \w+; examples: 8 -> 9.*--allow_data_change"
    ):
        training.run(cfg, verbose=0)
    assert run.data_info.read_bytes() == recorded and not run.summary.exists()
    summary = training.run(cfg.replace(allow_data_change=True), verbose=0)
    (change,) = json.loads((run.path / "data_changes.json").read_text())
    assert change["step"] == 4
    assert (change["before"]["train_examples"], change["after"]["train_examples"]) == (8, 9)
    assert change["before"]["data_sha256"] == json.loads(recorded)["data_sha256"]
    assert summary.steps == 8 and summary.train_examples == 9
    assert json.loads(run.data_info.read_text())["train_examples"] == 9  # the data trained on since


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_records_the_data_it_then_trains_on(tmp_path):
    import json

    root, cfg = _folder_run(tmp_path, train_steps=4)
    run = RunDir(cfg.run.model_dir)
    assert training.run(cfg, verbose=0, until_step=2).step == 2
    shutil.rmtree(run.checkpoints)  # records written, nothing trained on them: as a stop at step 0
    shutil.copytree(root / "train" / "a", root / "train" / "c")  # a third class before the restart
    shutil.copytree(root / "val" / "a", root / "val" / "c")
    assert training.run(cfg, verbose=0).steps == 4
    assert json.loads(run.data_info.read_text())["class_names"] == ["a", "b", "c"]


def test_a_run_resumed_on_its_own_data_keeps_its_record_as_written(tiny_run, tmp_path):
    cfg = _copy(tiny_run, tmp_path)
    run = RunDir(cfg.run.model_dir)
    run.summary.unlink()
    run.model.unlink()
    os.utime(run.data_info, (1, 1))
    training.run(cfg, verbose=0)
    assert run.data_info.stat().st_mtime == 1 and not (run.path / "data_changes.json").exists()


# ----------------------------------------------------------------------------- 3. a run folder is the run's


def _mine(folder: pathlib.Path, *names: str) -> dict[pathlib.Path, bytes]:
    """The user's own files in `folder`, as they were written."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(f"the user's {name}\n".encode())
    return {folder / name: (folder / name).read_bytes() for name in names}


@pytest.mark.slow
def test_folders_holding_the_users_files_are_refused_before_any_work(tmp_path):
    from conftest import tiny

    cfg = tiny(tmp_path / "run", train_steps=4)
    flagfile = tmp_path / "run.cfg"
    flagfile.write_text(cfg.to_flags())
    base = ["train.py", f"--flagfile={flagfile}"]
    cases = {  # where the user's files are -> the command and its flag
        "run": (base, "--model_dir", ("history.csv", "notes.txt")),
        "export": (base + [f"--export_dir={tmp_path / 'export'}"], "--export_dir", ("models.config",)),
        "tuning": (base + ["--tune", f"--tune_dir={tmp_path / 'tuning'}"], "--tune_dir", ("plan.md",)),
    }
    for folder, (args, flag, names) in cases.items():
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        kept = _mine(tmp_path / folder, *names)
        done = _command(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, (folder, done.stdout[-2000:], done.stderr[-2000:])
        assert flag in lines[0] and names[0] in lines[0] and "did not write" in lines[0], lines
        assert {p: p.read_bytes() for p in kept} == kept  # untouched
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == sorted(names)  # nothing added
        shutil.rmtree(tmp_path / folder)


def test_run_folders_written_by_the_project_pass_and_locations_may_not_overlap(tiny_run, tmp_path):
    from keras_resnet.rundir import check_locations

    cfg = _copy(tiny_run, tmp_path)
    run = RunDir(cfg.run.model_dir)
    (run.path / "budget.json").write_text("{}")
    (run.path / ".DS_Store").write_text("")  # hidden: the OS's, never in the way
    check_locations(cfg)  # a finished run folder, every file of it the project's
    check_locations(cfg.replace(export_dir=str(run.path / "export")))  # beside the run's own files
    (run.path / "export" / "1").mkdir(parents=True)  # that export, then the run extended without it
    check_locations(cfg)
    for clash in (run.path, run.checkpoints, run.path / "model.keras" / "x"):
        with pytest.raises(ConfigError, match="is --model_dir=.* or one of its run files"):
            check_locations(cfg.replace(export_dir=str(clash)))
    with pytest.raises(ConfigError, match="lies inside --export_dir"):
        check_locations(cfg.replace(export_dir=str(tmp_path)))
    from keras_resnet.serving import exporting

    for clash in (run.path, run.checkpoints):  # export/export.py: the same rule
        with pytest.raises(ValueError, match="is the run's folder or one of its files"):
            exporting.export_run(run.path, clash)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == sorted(
        p.name for p in RunDir(tiny_run[0].run.model_dir).checkpoints.iterdir()
    )
    # The project's names without its record (config.json) are not the project's.
    _mine(tmp_path / "fresh", "history.csv")
    with pytest.raises(ConfigError, match=r"--model_dir=.*fresh holds files .*\(history\.csv\)"):
        check_locations(cfg.replace(model_dir=str(tmp_path / "fresh")))


def test_training_run_from_python_checks_its_folders_as_the_command_does(tmp_path):
    from conftest import tiny

    cfg = tiny(tmp_path / "run", train_steps=4, eval_test=False)
    cases = {  # the folder holding the user's files -> the config and the flag named
        "run": (cfg, "--model_dir"),
        "export": (cfg.replace(export_dir=str(tmp_path / "export")), "--export_dir"),
        "carry": (cfg.replace(carry_dir=str(tmp_path / "carry")), "--carry_dir"),
    }
    for folder, (config, flag) in cases.items():
        kept = _mine(tmp_path / folder, "notes.txt")
        with pytest.raises(ConfigError, match=rf"{flag}=.*{folder} holds files .*\(notes\.txt\)"):
            training.run(config, verbose=0)
        assert {p: p.read_bytes() for p in kept} == kept
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ["notes.txt"]  # nothing added
        assert not RunDir(cfg.run.model_dir).checkpoints.exists()  # nothing trained
        shutil.rmtree(tmp_path / folder)
    # A --time_budget run from Python too, before its budget.json or carry is written.
    from keras_resnet.training import budget

    kept = _mine(tmp_path / "run", "history.csv")
    with pytest.raises(ConfigError, match=r"--model_dir=.*run holds files .*\(history\.csv\)"):
        budget.run(cfg.replace(carry_dir=str(tmp_path / "carry")), 30, started=0.0)
    assert {p: p.read_bytes() for p in kept} == kept and not (tmp_path / "carry").exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["history.csv"]


def test_reproduce_refuses_out_results_and_carry_holding_the_users_files_or_inside_one_another(
    tmp_path, capsys
):
    from keras_resnet import reproduce

    out, results, carry = tmp_path / "out", tmp_path / "results", tmp_path / "carry"
    args = ["table6", "--models=resnet8", "--budget=2", "--dataset=digits", f"--out={out}"]
    args += [f"--results={results}", f"--carry={carry}"]
    cases = {  # the user's file -> the flag named
        out / "notes.txt": "--out",
        out / "digits" / "2" / "notes.txt": "--out",  # beside the run folders
        out / "digits" / "2" / "resnet8" / "notes.txt": "--model_dir",  # in the run's own
        results / "plan.xlsx": "--results",
        carry / "notes.txt": "--carry",
        carry / "digits" / "2" / "resnet8" / "notes.txt": "--carry_dir",  # in the run's carry
    }
    for mine, flag in cases.items():
        kept = _mine(mine.parent, mine.name)
        before = sorted(tmp_path.rglob("*"))
        assert reproduce.main(args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{flag}=" in err[0] and f"did not write ({mine.name})" in err[0], err
        assert {p: p.read_bytes() for p in kept} == kept and sorted(tmp_path.rglob("*")) == before
        shutil.rmtree(next(p for p in (out, results, carry) if mine.is_relative_to(p)))
    # The project's own layout passes: another budget's and dataset's folders, earlier results.
    (out / "cifar10-like" / "64k" / "resnet20").mkdir(parents=True)
    (out / "16000" / "plain20").mkdir(parents=True)
    (results / "table6-64k.csv").parent.mkdir(parents=True)
    (results / "table6-64k.csv").write_text("model\n")
    from keras_resnet.experiments import locations, plan

    options_ = reproduce.parse(args)[0]
    locations.check(options_, plan.plan(options_))
    for clash in (  # folders inside one another
        [f"--results={out / 'digits' / '2' / 'resnet8' / 'results'}"],
        [f"--results={out}"],
        [f"--carry={out / 'carry'}"],
        [f"--carry={results / 'carry'}"],
    ):
        assert reproduce.main([*args, *clash]) == 1
        assert "lie inside one another" in capsys.readouterr().err
    assert not (out / "digits" / "2" / "resnet8").exists()  # nothing trained
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert reproduce.main([*args[:4], f"--out={blocker}"]) == 1  # named as --out, not its results
    want = f"reproduce: error: --out={blocker} is a file, not a directory: pass a directory."
    assert capsys.readouterr().err.strip() == want


def test_an_export_base_holding_the_users_files_is_refused_and_versions_are_only_added(tiny_run, tmp_path):
    from keras_resnet import files
    from keras_resnet.serving import exporting

    cfg, _ = tiny_run
    base = tmp_path / "models"
    kept = _mine(base, "README.md", "models.config")
    mine = r"--export_base=.* did not write \(README\.md, models\.config\)"
    with pytest.raises(files.ForeignFiles, match=mine):
        exporting.export_run(cfg.run.model_dir, base)
    assert {p: p.read_bytes() for p in kept} == kept
    assert sorted(p.name for p in base.iterdir()) == ["README.md", "models.config"]  # nothing added
    for path in kept:
        path.unlink()
    (base / "1").mkdir()
    (base / "1" / "saved_model.pb").write_bytes(b"version 1, served now")
    assert exporting.export_run(cfg.run.model_dir, base) == base / "2"  # a new version beside it
    assert (base / "1" / "saved_model.pb").read_bytes() == b"version 1, served now"


@pytest.fixture
def disk_with_1_5_mb_free(tmp_path):
    """A 4 MB tmpfs (as root; skipped elsewhere) with 1.5 MB free: room for the 1 MB writability
    probe, not for ResNet-20's 1.56 MB export version (2.4 MB asked); unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("needs a small tmpfs: mount -t tmpfs as root")
    (disk / "filler").write_bytes(bytes(4 * 1024 * 1024 - 1_500_000))
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_an_export_base_without_room_for_the_version_is_refused_before_writing(
    tiny_run, disk_with_1_5_mb_free, monkeypatch
):
    from keras_resnet import build_model, files
    from keras_resnet.data.info import DataInfo
    from keras_resnet.serving import exporting

    base = disk_with_1_5_mb_free / "base"
    info = DataInfo.load(tiny_run[0].run.model_dir)
    size = info.image_size
    model = build_model("resnet20", num_classes=info.num_classes, input_shape=(size, size, 3))
    with pytest.raises(OSError, match=r"--export_base=.* MB free .*this export needs at least"):
        exporting.export(model, info, base)
    assert [p.name for p in base.iterdir()] == [".lock"]  # no version, no temporary
    # Were the estimate short, the disk fills mid-write: still no partial version.
    monkeypatch.setattr(exporting, "ROOM_PER_WEIGHT_BYTE", 0)
    monkeypatch.setattr(exporting, "ROOM_FOR_GRAPH", 0)
    with pytest.raises(Exception) as full:
        exporting.export(model, info, base)
    assert files.disk_full(full.value), full.value
    assert [p.name for p in base.iterdir()] == [".lock"]


@pytest.mark.slow
def test_an_export_dir_without_room_for_the_export_is_refused_before_training(
    tmp_path, disk_with_1_5_mb_free
):
    from conftest import tiny

    export = disk_with_1_5_mb_free / "export"
    cfg = tiny(tmp_path / "run", model="resnet20", train_steps=2, eval_test=False, export_dir=str(export))
    refused = r"--export_dir=.* the export at the end needs at least .*Nothing was trained"
    with pytest.raises(ConfigError, match=refused):
        training.run(cfg, verbose=0)
    assert not RunDir(cfg.run.model_dir).checkpoints.exists()  # nothing trained
    assert [p.name for p in export.iterdir()] == [".lock"]


@pytest.mark.slow
def test_a_run_and_its_export_on_one_device_need_room_for_both(tmp_path, disk_with_1_5_mb_free):
    from conftest import tiny

    # ResNet-8: its checkpoints (about 1.2 MB asked) fit in 1.5 MB, and so does its export (about
    # 1.4 MB), but not both on the one device.
    run, export = disk_with_1_5_mb_free / "run", disk_with_1_5_mb_free / "export"
    cfg = tiny(run, train_steps=2, eval_test=False, export_dir=str(export))
    with pytest.raises(
        ConfigError, match=r"--export_dir=.*beside this run's checkpoints.*Nothing was trained"
    ):
        training.run(cfg, verbose=0)
    assert not RunDir(run).checkpoints.exists()  # nothing trained


@pytest.mark.slow
def test_a_damaged_trial_model_is_named_by_the_search_and_the_way_out_it_gives_rebuilds_it(tmp_path):
    from conftest import tiny

    from keras_resnet import tuning

    cfg = tiny(tmp_path / "run", train_steps=2, checkpoint_steps=2, distribution="one_device")
    tune_dir = tmp_path / "tuning"
    first = tuning.search(cfg, max_trials=1, tune_dir=tune_dir)
    (model,) = tune_dir.glob("*/trial_*/model.keras")
    best = first.model_path.read_bytes()
    _damage(model, "half")
    with pytest.raises(ConfigError, match=rf"best trial's {model} is damaged .*train\.py --flagfile="):
        tuning.search(cfg, max_trials=1, tune_dir=tune_dir)
    assert first.model_path.read_bytes() == best  # the winner's copy is not replaced by the damaged one
    trial = RunDir(model.parent)
    training.run(trial.read_config(), verbose=0)  # the way out the line gives: the trial's own flags
    assert trial.model_damage() is None
    assert tuning.search(cfg, max_trials=1, tune_dir=tune_dir).best_trial == first.best_trial


# ------------------------------------------------------------------------- 4. outputs checked before work


class _ExportLockedAt(__import__("keras").callbacks.Callback):
    """Another export takes --export_dir's lock at `step` (it holds it past the run's end)."""

    def __init__(self, export_dir: pathlib.Path, step: int):
        super().__init__()
        self.export_dir, self.step, self.lock = export_dir, step, None

    def on_train_batch_end(self, batch, logs=None):
        from keras_resnet import files
        from keras_resnet.training.optimization import global_step

        if global_step(self.model) == self.step and self.lock is None:
            self.lock = files.DirLock(self.export_dir, purpose="export").acquire()


def test_an_export_dir_in_use_is_refused_before_work_and_an_export_failing_at_the_end_keeps_the_run(tmp_path):
    from conftest import tiny

    from keras_resnet import files
    from keras_resnet.serving import exporting

    export = tmp_path / "export"
    cfg = tiny(tmp_path / "run", train_steps=4, checkpoint_steps=2, eval_test=False, export_dir=str(export))
    run = RunDir(cfg.run.model_dir)
    with (
        files.DirLock(export, purpose="export"),
        pytest.raises(ConfigError, match="export pid .* in use|in use by"),
    ):
        training.run(cfg, verbose=0)
    assert not run.checkpoints.exists()  # nothing trained
    late = _ExportLockedAt(export, 2)
    with pytest.raises(
        ConfigError, match=r"the export failed .*trained and kept.*export/export\.py --model_dir="
    ):
        training.run(cfg, verbose=0, callbacks=[late])
    late.lock.release()
    summary = run.read_summary()
    assert summary.steps == 4 and summary.export_path is None and run.model.is_file()
    assert training.run(cfg, verbose=0) == summary  # finished: the same command trains nothing again
    assert (exporting.export_run(run.path, export) / "saved_model.pb").is_file()  # the command it gave


# ----------------------------------------------------------------------------- 5. interrupts outside training


def test_a_signal_wrapped_in_another_error_still_ends_in_one_line(capsys):
    """A signal landing inside TensorFlow's tracing can come back as TensorFlow's own error, raised
    from it (export.py once printed that traceback): still the signal's line and exit code."""
    import signal

    from keras_resnet import interrupts

    with interrupts.ending_the_command("export.py") as ending:
        try:
            raise interrupts.Interrupted(signal.SIGTERM)
        except interrupts.Interrupted as err:
            raise TypeError("could not build the function") from err
    assert ending.exit_code == 143
    assert capsys.readouterr().err.splitlines() == [
        "export.py: SIGTERM: stopped; nothing half-written is left: run the same command again."
    ]
    with pytest.raises(TypeError), interrupts.ending_the_command("export.py"):
        raise TypeError("no signal: the error itself")


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _until(predicate, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    import time

    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "condition not met"
        time.sleep(0.02)


def _tensorflow_loading(proc: subprocess.Popen) -> bool:
    """The command is importing TensorFlow (its own start-up, after its flags were read)."""
    try:
        return "tensorflow" in pathlib.Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.slow
def test_sigterm_during_an_export_leaves_no_partial_version_and_the_same_command_exports(tiny_run, tmp_path):
    import signal

    cfg, _ = tiny_run
    base = tmp_path / "export"
    args = ["export/export.py", f"--model_dir={cfg.run.model_dir}", f"--export_base={base}"]
    proc = _spawn(*args)
    _until(lambda: base.is_dir() and any(p.name.startswith(".tmp-") for p in base.iterdir()), proc)
    proc.send_signal(signal.SIGTERM)  # while the version is being written
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143 and err.strip().splitlines() == [
        "export.py: SIGTERM: stopped; nothing half-written is left: run the same command again."
    ], err[-2000:]
    assert [p.name for p in base.iterdir() if p.name != ".lock"] == []  # no version, no temporary
    done = _command(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (base / "1" / "saved_model.pb").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval_only", "predict"])
def test_ctrl_c_in_eval_only_and_predict_is_one_line_and_exit_130(tiny_run, tmp_path, command):
    import signal

    import tensorflow as tf

    cfg, _ = tiny_run
    image = tmp_path / "a.png"
    image.write_bytes(tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy())
    args = {
        "eval_only": ["train.py", f"--model_dir={cfg.run.model_dir}", "--eval_only"],
        "predict": ["-m", "keras_resnet.predict", f"--model_dir={cfg.run.model_dir}", str(image)],
    }[command]
    proc = _spawn(*args)
    _until(lambda: _tensorflow_loading(proc), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 1 and "SIGINT: stopped" in lines[0], err[-2000:]
    assert _command(*args).returncode == 0  # the same command again


@pytest.mark.slow
def test_a_disk_without_room_for_the_runs_checkpoints_is_refused_before_any_step(tmp_path):
    from conftest import tiny

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("needs a small tmpfs: mount -t tmpfs as root")
    try:
        # 1.15 MB free: room for the 1 MB writability probe, not for ResNet-8's two 0.7 MB checkpoints.
        (disk / "filler").write_bytes(bytes(2 * 1024 * 1024 - 1_150_000))
        cfg = tiny(disk / "run", train_steps=60, eval_test=False)
        flagfile = tmp_path / "run.cfg"
        flagfile.write_text(cfg.to_flags())
        done = _command("train.py", f"--flagfile={flagfile}")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
        assert "needs at least" in lines[0] and "Nothing was trained" in lines[0], lines
        assert not (disk / "run" / "checkpoints").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_sigint_and_sigterm_during_reproduce_are_one_line_and_the_same_command_finishes(tmp_path):
    import signal
    import time

    out, results = tmp_path / "out", tmp_path / "results"
    args = ["-m", "keras_resnet.reproduce", "table6", "--models=resnet8", "--budget=6", "--dataset=digits"]
    args += [f"--out={out}", f"--results={results}"]  # a checkpoint at every step of the 6
    run = RunDir(out / "digits" / "6" / "resnet8")
    for signum in (signal.SIGINT, signal.SIGTERM):
        launched = time.time()
        proc = _spawn(*args)

        def under_way(launched=launched) -> bool:  # a checkpoint this process wrote
            return any(p.stat().st_mtime > launched for p in run.checkpoints.glob("ckpt-*.json"))

        _until(under_way, proc)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert proc.returncode == 130 and len(lines) == 1, (signum, err[-2000:])  # train.py's status
        assert lines[0].startswith("reproduce: interrupted at step ") and "same command again" in lines[0]
        assert not list(tmp_path.rglob(".tmp-*")) and not run.summary.exists()  # nothing half-written
        assert not results.exists() or not any(results.iterdir())
    done = _command(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming at step" in done.stdout
    assert run.read_summary().steps == 6 and (results / "table6-6.csv").is_file()
