"""A user's first day with a trained run: extend it, load it in Python, predict files with the
command, score it again (--eval_only), and ask the commands for --help without waiting for TensorFlow."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, tiny

from keras_resnet import data
from keras_resnet.rundir import RunDir


def _history_steps(model_dir) -> list[int]:
    with RunDir(model_dir).history.open() as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_extending_a_run_trains_the_extra_steps_mid_epoch_and_across_an_epoch_boundary(tmp_path):
    from keras_resnet import training

    cfg = tiny(tmp_path / "run", train_steps=25, eval_test=False)  # the digits: 44 steps per epoch
    first = training.run(cfg, verbose=0)
    mid_epoch = training.run(cfg.replace(train_steps=35, allow_config_change=True), verbose=0)
    across = training.run(cfg.replace(train_steps=60, allow_config_change=True), verbose=0)
    assert (first.steps, mid_epoch.steps, across.steps) == (25, 35, 60)
    assert (mid_epoch.resumed_from_step, across.resumed_from_step) == (25, 35)
    # Timings accumulate over the invocations instead of restarting from the extension's.
    assert across.train_time_s > mid_epoch.train_time_s > first.train_time_s > 0
    assert across.images_per_sec > 0
    steps = _history_steps(cfg.run.model_dir)
    assert steps == sorted(steps) and {25, 35, 60} <= set(steps) and steps[-1] == 60
    assert training.resumes_at(cfg.run.model_dir) == 60


@pytest.mark.slow
def test_the_summary_times_the_whole_run_and_a_commands_own_segments_are_no_resume(tmp_path, capsys):
    from keras_resnet import training

    cfg = tiny(tmp_path / "run", train_steps=20, eval_test=False)
    began = time.time()  # one command in two segments, as --time_budget runs it
    paused = training.run(cfg, verbose=0, until_step=10, started=began)
    time.sleep(1.0)
    between = time.time() - began
    first = training.run(cfg, verbose=0, started=began)
    took = time.time() - began
    assert (paused.step, first.steps, first.resumed_from_step) == (10, 20, 0)
    assert first.command_time_s == pytest.approx(first.wall_time_s, abs=0.1)
    assert between < first.wall_time_s <= took  # from the command's start: both segments
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["resumed_from_step"] == 0
    assert "of them in this command" not in capsys.readouterr().out

    extended = cfg.replace(train_steps=30, allow_config_change=True)
    again = time.time()
    second = training.run(extended, verbose=0)  # another command: a resume
    assert (second.steps, second.resumed_from_step) == (30, 20)
    assert second.command_time_s <= time.time() - again
    assert second.wall_time_s == pytest.approx(first.wall_time_s + second.command_time_s, abs=1.0)
    assert "of them in this command" in capsys.readouterr().out


def _digit_files(tmp_path, n: int = 6):
    ds = data.load("digits", batch_size=32)
    paths, labels = [], []
    for i in range(n):
        image, label = ds.test_example(i)
        path = tmp_path / f"digit{i}.png"
        path.write_bytes(tf.io.encode_png(image).numpy())
        paths.append(path)
        labels.append(label)
    return paths, labels


def test_load_predicts_what_the_exported_serving_default_serves(tiny_run, tmp_path):
    import keras_resnet as kr
    from keras_resnet import serving

    cfg, _ = tiny_run
    paths, _ = _digit_files(tmp_path)
    classifier = kr.load(cfg.run.model_dir)
    ours = classifier.predict_files(paths)
    exported = serving.export_run(cfg.run.model_dir, tmp_path / "export")
    served = tf.saved_model.load(str(exported)).signatures["serving_default"]
    theirs = served(images=tf.constant([p.read_bytes() for p in paths]))
    np.testing.assert_allclose(ours, theirs["probabilities"].numpy(), atol=1e-5)
    assert ours.shape == (len(paths), 10)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-5)
    top = [[name.decode() for name in row] for row in theirs["class_names"].numpy()]
    best = classifier.top_k(classifier.decode_files(paths), 1)
    assert [row[0] for row in top] == [b[0][0] for b in best]


def _digit_images(n: int = 12) -> np.ndarray:
    ds = data.load("digits", batch_size=32)
    return np.stack([ds.test_example(i)[0] for i in range(n)])


def test_predict_takes_images_as_keras_users_give_them(tiny_run):
    import keras_resnet as kr

    cfg, _ = tiny_run
    classifier = kr.load(cfg.run.model_dir)
    x = _digit_images()  # uint8 [12, H, W, 3], grey digits (equal channels)
    want = classifier.predict(x)
    assert want.shape == (12, 10)
    got = {
        "keras keywords": classifier.predict(x, verbose=0, batch_size=5),
        "float 0..255": classifier.predict(x.astype("float32"), verbose=0, batch_size=8),
        "float 0..1, said": classifier.predict(x / 255.0, value_range=(0, 1)),
        "a tensor": classifier.predict(tf.constant(x)),
        "one channel": classifier.predict(x[..., :1]),
        "four channels": classifier.predict(np.concatenate([x, np.full_like(x[..., :1], 7)], -1)),
        "a list": classifier.predict(list(x)),
        "nested Python lists": classifier.predict(x.tolist()),
        "nested lists, one by one": np.concatenate([classifier.predict(image.tolist()) for image in x]),
        "2-D grayscale, one by one": np.concatenate([classifier.predict(image[..., 0]) for image in x]),
        "HWC, one by one": np.concatenate([classifier.predict(image) for image in x]),
    }
    for how, probabilities in got.items():
        np.testing.assert_allclose(probabilities, want, atol=1e-5, err_msg=how)
    larger = tf.image.resize(x[:2], [24, 20], method="nearest").numpy().astype(np.uint8)
    mixed = classifier.predict([x[0], larger[0], x[1], larger[1]])
    np.testing.assert_allclose(mixed[[0, 2]], want[:2], atol=1e-5)
    np.testing.assert_allclose(mixed[[1, 3]], classifier.predict(larger), atol=1e-5)
    assert [row[0][0] for row in classifier.top_k(x, k=1, batch_size=3, verbose=0)] == [
        classifier.class_names[i] for i in want.argmax(1)
    ]
    assert classifier.predict(x[:0]).shape == (0, 10)


def test_floats_within_0_1_warn_once_and_bad_input_is_one_line_not_a_traceback(tiny_run):
    import warnings

    import keras_resnet as kr

    cfg, _ = tiny_run
    classifier = kr.load(cfg.run.model_dir)
    x = _digit_images(4)
    with pytest.warns(UserWarning) as caught:
        classifier.predict(x / 255.0)  # read as 0..255, as keras.applications would: a warning
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        classifier.predict(x.astype("float32"))  # 0..255 floats: no warning
        classifier.predict(x / 255.0, value_range=(0, 1))
    bad = {
        "5-D": x[None],
        "channels first": np.transpose(x, (0, 3, 1, 2)),
        "2 channels": x[..., :2],
        "grey batch without a channel axis": x[..., 0],
        "strings": np.array(["a.png"]),
        "bool": x > 0,
        "NaN": np.full(x.shape, np.nan, np.float32),
        "preprocessed floats": (x - 127.5) / 127.5,
        "16-bit": x.astype(np.uint16) * 256,
        "an empty image": np.zeros((0, 16, 3), np.uint8),
        "a ragged list": [x[0], np.zeros((3, 3, 2), np.uint8)],
    }
    for how, images in bad.items():
        with pytest.raises(ValueError) as refused:
            classifier.predict(images)
        assert refused.type is ValueError and "\n" not in str(refused.value), how
        assert "[N, H, W, C]" in str(refused.value), how  # names the expected shape and dtype
        with pytest.raises(ValueError):
            classifier.top_k(images)


def test_predict_command_prints_each_files_top_classes_and_the_exports_reason_for_bad_files(
    tiny_run, tmp_path, capsys
):
    import keras_resnet as kr
    from keras_resnet import predict

    cfg, _ = tiny_run
    paths, _ = _digit_files(tmp_path, n=3)
    png = paths[0].read_bytes()
    bad = {  # file: a word of the export's own reason
        "cut.png": (png[:-20], "truncated"),
        "anim.gif": (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "neither JPEG nor PNG"),
        "empty.png": (b"", "neither JPEG nor PNG"),
        "notes.txt": (b"not an image", "neither JPEG nor PNG"),
    }
    for name, (content, _) in bad.items():
        (tmp_path / name).write_bytes(content)
    files = [str(p) for p in paths] + [str(tmp_path / name) for name in bad]
    assert predict.main([*files, f"--model_dir={cfg.run.model_dir}", "--top_k=2"]) == 1
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == len(files)
    classifier = kr.load(cfg.run.model_dir)
    expected = classifier.top_k(classifier.decode_files(paths), k=2)
    for line, path, best in zip(lines, paths, expected, strict=False):
        name, rest = line.split(": ", 1)
        assert name == str(path)
        assert [part.split()[0] for part in rest.split(", ")] == [c for c, _ in best]
    for line, (name, (_, reason)) in zip(lines[3:], bad.items(), strict=True):
        assert line.startswith(f"{tmp_path / name}: refused: ") and reason in line and "tf.Tensor" not in line
    assert f"{len(bad)} of {len(files)}" in err  # how many were refused
    assert predict.main([*files[:3], f"--model_dir={cfg.run.model_dir}"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        predict.main([str(tmp_path / "absent.png"), f"--model_dir={cfg.run.model_dir}"])
    assert "no such file" in capsys.readouterr().err


def test_predict_command_reads_folders_recursively_in_order_and_answers_in_json(tiny_run, tmp_path, capsys):
    import json

    import keras_resnet as kr
    from keras_resnet import predict

    cfg, _ = tiny_run
    paths, _ = _digit_files(tmp_path, n=4)
    folder = tmp_path / "photos"
    (folder / "b" / "deeper").mkdir(parents=True)
    placed = [
        folder / "b" / "deeper" / "z.png",
        folder / "a.PNG",
        folder / "b" / "c.png",
        folder / "b" / "bad.png",
    ]
    for source, target in zip(paths, placed, strict=True):
        target.write_bytes(source.read_bytes())
    placed[3].write_bytes(paths[3].read_bytes()[:-20])
    (folder / "readme.txt").write_text("left out: not an image")
    code = predict.main(
        [str(paths[0]), str(folder), f"--model_dir={cfg.run.model_dir}", "--json", "--top_k=3"]
    )
    assert code == 1  # bad.png
    out, err = capsys.readouterr()
    answers = [json.loads(line) for line in out.strip().splitlines()]
    order = [str(paths[0]), *sorted(str(p) for p in placed)]
    assert [a["file"] for a in answers] == order
    classifier = kr.load(cfg.run.model_dir)
    for answer in answers:
        if answer["file"].endswith("bad.png"):
            assert "truncated" in answer["refused"] and "classes" not in answer
            continue
        (best,) = classifier.top_k(classifier.decode_files([answer["file"]]), k=3)
        assert [name for name, _ in answer["classes"]] == [name for name, _ in best]
        np.testing.assert_allclose([p for _, p in answer["classes"]], [p for _, p in best], atol=1e-5)
    assert "1 of 5" in err and "left out 1" in err


def test_eval_only_scores_the_finished_run_as_it_scored_itself(tiny_run, tmp_path, capsys):
    from keras_resnet.config import ConfigError
    from keras_resnet.training import evaluation

    cfg, summary = tiny_run
    results = evaluation.evaluate_run(cfg.run.model_dir)
    assert results["test_error"] == pytest.approx(summary.test_error, abs=1e-6)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"test error {summary.test_error:.2%}" in line and "359 images of digits" in line
    with pytest.raises(ConfigError, match="--eval_only needs --model_dir of a finished run"):
        evaluation.evaluate_run(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, flag",
    [
        (["train.py"], "--model_dir"),
        (["-m", "keras_resnet.reproduce"], "--budget"),
        (["-m", "keras_resnet.predict"], "--top_k"),
        (["export/export.py"], "--model_dir"),
    ],
    ids=["train", "reproduce", "predict", "export"],
)
def test_help_answers_without_importing_tensorflow(command, flag):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert flag in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "tensorflow" not in imported and "keras" not in imported


def _train_py(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_help_lists_every_flag_of_a_run_under_its_section_with_its_default_in_under_2_s():
    from keras_resnet.config import flag_fields

    began = time.perf_counter()
    done = _train_py("--help")
    took = time.perf_counter() - began
    assert done.returncode == 0 and took < 2.0, (took, done.stderr[-2000:])
    lines = done.stdout.splitlines()
    headings = {line.split(":")[0]: i for i, line in enumerate(lines) if line and not line[0].isspace()}
    where = {}
    for i, line in enumerate(lines):
        if line.startswith("  --"):
            name = line.split()[0].removeprefix("--").removeprefix("[no]").split("=")[0]
            where[name] = (max(h for h in headings.values() if h < i), line)
    sections = {"model": "model", "data": "data", "optim": "optimization", "run": "run"}
    for name, section, field in flag_fields():
        heading, line = where[name]  # every field of TrainConfig is listed...
        assert heading == headings[sections[section]], name  # ...under its section...
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        shown = line.split("(default: ")[1].rstrip(")")  # ...with its default
        if isinstance(default, bool):
            assert shown == str(default).lower(), name
        elif isinstance(default, int | float):
            assert float(shown) == default, name
        else:
            assert shown == (",".join(map(str, default)) if isinstance(default, tuple) else default) or (
                not default and shown == "''"
            ), name
    assert len([line for line in lines if "--" in line]) >= len(list(flag_fields()))
    full = _train_py("--helpfull")
    assert full.returncode == 0 and "--verbosity" in full.stdout and "--flagfile" in full.stdout
    assert all(f"--{name}" in full.stdout or f"--[no]{name}" in full.stdout for name, _, _ in flag_fields())


@pytest.mark.slow
def test_a_run_without_a_length_is_refused_as_help_says_and_the_preset_gives_one(tmp_path):
    done = _train_py("--model=resnet8", "--dataset=digits", f"--model_dir={tmp_path / 'run'}")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "--train_steps" in done.stderr and "--epochs" in done.stderr
    assert not (tmp_path / "run").exists()
    assert "A run's length has no default" in _train_py("--help").stdout
    preset = (REPO / "configs" / "quickstart.cfg").read_text()
    assert "--epochs=" in preset or "--train_steps=" in preset


@pytest.mark.slow
def test_the_export_at_the_end_of_training_stores_each_variable_once(tmp_path):
    """keras-team/keras#23553 on the path users take (train.py --export_dir, under MirroredStrategy):
    every tensor was stored twice, under `variables/N` and `_all_variables/N`."""
    import keras

    from keras_resnet import training

    cfg = tiny(tmp_path / "run", train_steps=10, eval_test=False, export_dir=str(tmp_path / "models"))
    training.run(cfg, verbose=0)
    model = keras.saving.load_model(RunDir(cfg.run.model_dir).model, safe_mode=True, compile=False)
    weights = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    stored = sum(f.stat().st_size for f in (tmp_path / "models" / "1" / "variables").iterdir())
    assert weights < stored < 1.05 * weights
    keys = tf.train.load_checkpoint(str(tmp_path / "models" / "1" / "variables" / "variables"))
    assert not [k for k in keys.get_variable_to_shape_map() if k.startswith("_all_variables")]


def _scalars(logs_dir) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(run, tag) -> [(step, value)] from the TensorBoard event files under `logs_dir`."""
    found: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for events in sorted(logs_dir.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                tensor = value.HasField("tensor")
                number = float(tf.make_ndarray(value.tensor)) if tensor else value.simple_value
                found.setdefault((events.parent.name, value.tag), []).append((event.step, number))
    return found


@pytest.mark.slow
def test_one_progress_display_live_on_a_terminal_plain_lines_in_a_log_and_tensorboard_by_iteration(
    tmp_path, capsys
):
    from keras_resnet import training

    cfg = tiny(tmp_path / "live", train_steps=20)
    training.run(cfg, verbose=1)  # as on a terminal
    live = capsys.readouterr().out
    assert "\r" in live and "━" not in live  # our status line redrawn in place; no Keras bar
    chunk_lines = [line for line in live.split("\n") if "test_error" in line]
    assert len(chunk_lines) == 2 and all(line.rsplit("\r", 1)[-1].startswith("step ") for line in chunk_lines)
    training.run(tiny(tmp_path / "log", train_steps=20), verbose=0)  # redirected to a file
    log = capsys.readouterr().out
    assert "\r" not in log and "\x1b" not in log and "━" not in log
    assert [line.split()[1] for line in log.splitlines() if "test_error" in line] == ["10/20", "20/20"]

    scalars = _scalars(RunDir(cfg.run.model_dir).logs)
    for run in ("train", "test"):
        for tag in ("loss", "error"):
            assert [step for step, _ in scalars[(run, tag)]] == [10, 20], (run, tag)
    assert [step for step, _ in scalars[("train", "learning_rate")]] == [10, 20]
    with RunDir(cfg.run.model_dir).history.open() as f:
        last = list(csv.DictReader(f))[-1]
    assert scalars[("test", "error")][-1][1] == pytest.approx(float(last["test_error"]), abs=1e-6)
    assert not any(tag.startswith("epoch_") for _, tag in scalars)
