"""Faults and bad input as a user meets them: damaged checkpoints, two runs on one --model_dir,
unwritable outputs, a saved model loaded elsewhere, signals in a search. Digits and ResNet-8."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, TINY, image_folder

from keras_resnet import data, files, training
from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.rundir import RunDir
from keras_resnet.training.optimization import global_step


def _flags(cfg: TrainConfig, path: pathlib.Path) -> list[str]:
    path.write_text(cfg.to_flags())
    return [sys.executable, str(REPO / "train.py"), f"--flagfile={path}"]


def _wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.communicate()[0][-3000:]}")
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError("condition not met")


def _checkpoint_steps(model_dir: pathlib.Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1].split(".")[0]) for p in (model_dir / "checkpoints").glob("ckpt-*.json")
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[TrainConfig, dict]:
    """A finished 20-step run with checkpoints at 10 and 20 (in-process, 2 replicas)."""
    cfg = TrainConfig.of(
        **TINY, train_steps=20, eval_test=False, model_dir=str(tmp_path_factory.mktemp("run"))
    )
    return cfg, training.run(cfg, verbose=0)


def _unfinished_copy(finished, tmp_path) -> TrainConfig:
    """The finished run as a kill would have left it: checkpoints, no model or summary yet."""
    cfg, _ = finished
    model_dir = tmp_path / "run"
    shutil.copytree(cfg.run.model_dir, model_dir)
    for name in ("summary.json", "model.keras"):
        (model_dir / name).unlink()
    return TrainConfig.of(**{**cfg.to_json(), "model_dir": str(model_dir)})


class _CtrlCAtStep(keras.callbacks.Callback):
    """Sends this process a SIGINT as global step `step` begins, where a Ctrl-C could land."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if global_step(self.model) == self.step - 1:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_ctrl_c_during_the_last_step_finishes_the_run_then_reports_the_stop(tmp_path):
    cfg = TrainConfig.of(**TINY, train_steps=12, eval_test=False, model_dir=str(tmp_path / "run"))
    with pytest.raises(training.TrainingStopped, match="after the last step: the run is complete") as stop:
        training.run(cfg, verbose=0, callbacks=[_CtrlCAtStep(12)])
    assert stop.value.exit_code == 130  # a caller running several runs stops here
    summary = RunDir(tmp_path / "run").read_summary()
    assert summary.steps == 12
    assert training.run(cfg, verbose=0) == summary  # finished: nothing to do
    # Even without its outputs the run is at its end: no 13th step.
    for name in ("summary.json", "model.keras"):
        (tmp_path / "run" / name).unlink()
    assert training.run(cfg, verbose=0).steps == 12


@pytest.mark.slow
def test_a_resumed_run_tests_where_the_uninterrupted_run_would(tmp_path):
    # Test set every 3 chunks of 10 steps: at step 30 and the last. A Ctrl-C at step 25 makes the
    # resumed chunks end at 35 and 40; the first of them at or past step 30 is the one tested.
    cfg = TrainConfig.of(**TINY, train_steps=40, eval_test_every=3, model_dir=str(tmp_path / "run"))
    with pytest.raises(training.TrainingStopped):
        training.run(cfg, verbose=0, callbacks=[_CtrlCAtStep(25)])
    training.run(cfg, verbose=0)
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [int(r["step"]) for r in rows] == [10, 20, 25, 35, 40]
    # Epochs are passes over the data, also across the resume (Keras' own index would repeat 3).
    per_step = [float(r["epoch"]) / int(r["step"]) for r in rows]
    assert max(per_step) - min(per_step) < 0.01 / 10, rows
    assert [int(r["step"]) for r in rows if r.get("test_error")] == [35, 40]


@pytest.mark.slow
def test_kill_9_then_truncated_newest_checkpoint_resumes_from_the_previous_one(tmp_path):
    model_dir = tmp_path / "run"
    cfg = TrainConfig.of(**TINY, train_steps=60, eval_test=False, model_dir=str(model_dir))
    cmd = _flags(cfg, tmp_path / "run.cfg")
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.Popen(cmd, **kw)
    _wait_for(lambda: len(_checkpoint_steps(model_dir)) >= 2, proc)
    proc.kill()  # kill -9
    proc.communicate(timeout=60)
    newest = max(_checkpoint_steps(model_dir))
    weights = model_dir / "checkpoints" / f"ckpt-{newest}.weights.h5"
    with weights.open("r+b") as f:  # as a full disk or a dying node leaves it
        f.truncate(weights.stat().st_size // 2)

    proc = subprocess.run(cmd, **kw, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"skipping the checkpoint of step {newest}: ckpt-{newest}.weights.h5 has" in proc.stdout
    assert "truncated" in proc.stdout
    summary = RunDir(model_dir).read_summary()
    assert summary.steps == 60 and summary.resumed_from_step == newest - 10


def test_unreadable_state_file_is_rebuilt_from_the_checkpoints(finished, tmp_path, capsys):
    for damage in ("garbage {", '{"step": 20, "weights": "ckpt-999.weights.h5", "epoch": 2}', ""):
        cfg = _unfinished_copy(finished, tmp_path / str(len(damage)))
        (pathlib.Path(cfg.run.model_dir) / "checkpoints" / "state.json").write_text(damage)
        summary = training.run(cfg, verbose=0)
        assert summary.resumed_from_step == 20 and summary.steps == 20
    assert "state.json is unreadable; rebuilt from the checkpoint files present" in capsys.readouterr().out


def test_a_run_saved_before_the_padding_flag_resumes_only_with_its_own_padding(finished, tmp_path):
    cfg = _unfinished_copy(finished, tmp_path)
    saved = pathlib.Path(cfg.run.model_dir) / "config.json"
    old = {k: v for k, v in json.loads(saved.read_text()).items() if k not in ("padding", "skip_corrupt")}
    saved.write_text(json.dumps(old))  # as written before the two flags existed
    with pytest.raises(ConfigError, match="--padding: 'same' -> 'symmetric'"):
        training.run(cfg, verbose=0)
    summary = training.run(cfg.replace(padding="same"), verbose=0)
    assert summary.resumed_from_step == 20
    model = keras.models.load_model(pathlib.Path(cfg.run.model_dir) / "model.keras")
    assert not any(isinstance(layer, keras.layers.ZeroPadding2D) for layer in model.layers)


def test_nothing_usable_left_is_one_line(finished, tmp_path):
    cfg = _unfinished_copy(finished, tmp_path)
    for weights in (pathlib.Path(cfg.run.model_dir) / "checkpoints").glob("*.weights.h5"):
        weights.write_bytes(b"x" * weights.stat().st_size)  # the right size, the wrong bytes
    with pytest.raises(ConfigError) as err:
        training.run(cfg, verbose=0)
    message = str(err.value)
    assert "\n" not in message and "no usable checkpoint" in message and "step 20" in message
    assert "does not match its recorded SHA-256" in message


@pytest.mark.slow
def test_second_run_on_a_model_dir_is_refused_while_the_first_finishes(tmp_path):
    model_dir = tmp_path / "run"
    # Long enough to still run while a second process starts (digits: about 5 steps a second).
    cfg = TrainConfig.of(
        **{**TINY, "checkpoint_steps": 25}, train_steps=400, eval_test=False, model_dir=str(model_dir)
    )
    cmd = _flags(cfg, tmp_path / "run.cfg")
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = subprocess.Popen(cmd, **kw)
    _wait_for(lambda: bool(_checkpoint_steps(model_dir)), first)
    second = subprocess.run(cmd, **kw, timeout=120)
    assert second.returncode == 1
    line = second.stderr.strip()
    assert "\n" not in line and line.startswith(
        f"train.py: error: {model_dir} is in use by train.py run pid "
    )
    assert f"pid {first.pid} on " in line
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    assert json.loads((model_dir / "summary.json").read_text())["steps"] == 400


@pytest.mark.parametrize("flag", ["model_dir", "export_dir"])
def test_unwritable_output_is_refused_before_any_work(tmp_path, flag):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    paths = {"model_dir": tmp_path / "run", "export_dir": tmp_path / "export"}
    paths[flag] = blocker / "inside"  # under a regular file: cannot be created (root ignores modes)
    cfg = TrainConfig.of(**TINY, train_steps=10, **{k: str(v) for k, v in paths.items()})
    with pytest.raises(ConfigError) as err:
        training.run(cfg, verbose=0)
    assert str(err.value).startswith(f"--{flag}={blocker / 'inside'} is not writable")
    assert not (tmp_path / "run" / "checkpoints").exists()  # no training step ran


def test_export_base_that_is_a_file_is_one_line(tmp_path):
    import numpy as np

    from keras_resnet import build_model, serving
    from keras_resnet.data.info import DataInfo

    base = tmp_path / "exports"
    base.write_text("")
    info = DataInfo("x", "cifar", 10, tuple("0123456789"), 32, 32, np.zeros((32, 32, 3), np.float32), 10)
    with pytest.raises(files.NotWritable, match=r"--export_base=.*exports is a file, not a directory"):
        serving.export(build_model("resnet8"), info, base)


@pytest.mark.slow
def test_saved_model_loads_compiled_in_a_fresh_process_that_imports_only_keras_resnet(tmp_path):
    cfg = TrainConfig.of(**TINY, train_steps=10, label_smoothing=0.1, model_dir=str(tmp_path / "run"))
    training.run(cfg, verbose=0)
    script = textwrap.dedent(
        f"""
        import keras_resnet, keras
        from keras_resnet import data
        model = keras.models.load_model({str(tmp_path / "run" / "model.keras")!r}, safe_mode=True)
        assert int(model.optimizer.iterations.numpy()) == 10, model.optimizer.iterations
        assert type(model.loss).__name__ == "SmoothedCrossEntropy"
        print(model.evaluate(data.load("digits", batch_size=32).test, verbose=0, return_dict=True))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'error':" in proc.stdout and "'loss':" in proc.stdout


@pytest.mark.slow
def test_search_in_the_background_stops_on_sigint_and_sigterm_and_resumes(tmp_path):
    cfg = TrainConfig.of(**{**TINY, "train_steps": 40}, eval_test=False, model_dir=str(tmp_path / "run"))
    cmd = [*_flags(cfg, tmp_path / "run.cfg"), "--tune", "--search=shortcut"]
    trials = tmp_path / "run" / "tuning" / "search"

    for signum in (signal.SIGINT, signal.SIGTERM):
        launched = time.time()

        def started_trial(launched=launched) -> bool:  # a checkpoint written by this process
            return any(p.stat().st_mtime > launched for p in trials.glob("trial_*/checkpoints/ckpt-*.json"))

        # A shell starts background jobs with SIGINT ignored; the search must still stop on it.
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        _wait_for(started_trial, proc)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 130, out[-3000:]
        assert f"{signal.Signals(signum).name}: checkpointing after this step" in out
        assert "run the same command again to continue it" in out
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = (tmp_path / "run" / "tuning" / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",COMPLETED," in r for r in rows[1:])
    # Every trial trained to exactly 40 steps, however often it was interrupted.
    for summary in trials.glob("trial_*/summary.json"):
        assert json.loads(summary.read_text())["steps"] == 40


def test_fewer_than_two_classes_and_too_small_images_are_refused(tmp_path):
    import numpy as np
    import tensorflow as tf

    from keras_resnet import data

    for split in ("train", "val"):
        (tmp_path / "one" / split / "cat").mkdir(parents=True)
        tf.io.write_file(
            str(tmp_path / "one" / split / "cat" / "a.png"), tf.io.encode_png(np.zeros((8, 8, 3), np.uint8))
        )
    with pytest.raises(ValueError, match="holds 1 class folder.*at least 2 classes"):
        data.load(f"folder:{tmp_path / 'one'}", batch_size=1, cache_dir=str(tmp_path / "c"))
    for model, size, stride in (("resnet8", 3, 4), ("resnet50", 31, 32), ("resnet8", -2, 4)):
        cfg = TrainConfig.of(
            **{**TINY, "model": model}, image_size=size, train_steps=1, model_dir=str(tmp_path / "r")
        )
        with pytest.raises(
            ConfigError, match=rf"--image_size={size} is smaller than {model}'s total stride of {stride}"
        ):
            training.run(cfg)
    assert not (tmp_path / "r").exists()


def test_test_time_mirrors_are_refused_for_a_net_trained_without_flips(tmp_path):
    for tta in ("flip", "flip_translate"):
        cfg = TrainConfig.of(**TINY, tta=tta, train_steps=1, model_dir=str(tmp_path / "r"))
        with pytest.raises(ConfigError, match=rf"--tta={tta} averages over mirrored test images.*--tta=none"):
            training.run(cfg, verbose=0)
    assert not (tmp_path / "r" / "config.json").exists()  # nothing recorded, nothing trained
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.slow
def test_a_refused_config_change_leaves_the_runs_record_as_it_was(finished, tmp_path):
    cfg = _unfinished_copy(finished, tmp_path)
    run = pathlib.Path(cfg.run.model_dir)
    record = {name: (run / name).read_text() for name in ("config.json", "flags.cfg")}
    deeper = cfg.replace(model="resnet14", train_steps=30, allow_config_change=True)
    with pytest.raises(ConfigError, match="no usable checkpoint"):
        training.run(deeper, verbose=0)
    assert {name: (run / name).read_text() for name in record} == record
    assert training.run(cfg, verbose=0).steps == 20  # the original command still resumes


def test_garbled_manifests_do_not_condemn_sound_checkpoint_files(finished, tmp_path, capsys):
    cfg = _unfinished_copy(finished, tmp_path)
    checkpoints = pathlib.Path(cfg.run.model_dir) / "checkpoints"
    for manifest in checkpoints.glob("*.json"):  # state.json and every ckpt-N.json
        manifest.write_text("{garbled")
    summary = training.run(cfg, verbose=0)
    assert summary.resumed_from_step == 20 and summary.steps == 20
    out = capsys.readouterr().out
    assert "ckpt-20.json is missing or unreadable; trying ckpt-20.weights.h5 unverified" in out
    # An unverified file is still loaded and checked: wrong bytes are no checkpoint.
    cfg = _unfinished_copy(finished, tmp_path / "bad")
    checkpoints = pathlib.Path(cfg.run.model_dir) / "checkpoints"
    for path in checkpoints.iterdir():
        path.write_bytes(b"x" * path.stat().st_size)
    with pytest.raises(ConfigError, match="no usable checkpoint"):
        training.run(cfg, verbose=0)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (as root; skipped elsewhere), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("needs a small tmpfs: mount -t tmpfs as root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_same_command_recovers_once_there_is_space(small_disk, tmp_path):
    cfg = TrainConfig.of(**TINY, train_steps=60, eval_test=False, model_dir=str(small_disk / "run"))
    cmd = _flags(cfg, tmp_path / "run.cfg")
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert full.returncode == 1, full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    assert f"train.py: error: no space left on the device of --model_dir={small_disk / 'run'}" in full.stderr
    subprocess.run(["mount", "-o", "remount,size=64M", str(small_disk)], check=True)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((small_disk / "run" / "summary.json").read_text())
    assert summary["steps"] == 60
    assert not [p for p in (small_disk / "run").rglob("*") if p.name.startswith(files.TMP_PREFIX)]


@pytest.mark.slow
def test_a_disk_full_before_the_run_starts_is_refused_in_one_line_leaving_nothing(small_disk, tmp_path):
    (small_disk / "filler").write_bytes(bytes(2 * 1024 * 1024 - 64 * 1024))  # all but 64 KB
    cfg = TrainConfig.of(**TINY, train_steps=5, eval_test=False, model_dir=str(small_disk / "run"))
    done = subprocess.run(_flags(cfg, tmp_path / "run.cfg"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"--model_dir={small_disk / 'run'} is not writable" in done.stderr
    run = small_disk / "run"
    assert not run.exists() or not any(run.iterdir())  # no .lock, no probe left behind


@pytest.mark.slow
def test_an_export_without_room_on_its_disk_is_one_line_and_leaves_no_partial_version(small_disk, tmp_path):
    # ResNet-20's weights (1.1 MB) pass the 1 MB writability probe, not the estimate of its version
    # (a disk filled mid-write anyway: test_nothing_lost.py's test of the room before an export).
    cfg = TrainConfig.of(**{**TINY, "model": "resnet20"}, train_steps=2, model_dir=str(tmp_path / "run"))
    training.run(cfg, verbose=0)
    (small_disk / "filler").write_bytes(bytes(2 * 1024 * 1024 - files.PROBE_BYTES - 256 * 1024))
    cmd = [sys.executable, str(REPO / "export" / "export.py"), f"--model_dir={cfg.run.model_dir}"]
    done = subprocess.run([*cmd, f"--export_base={small_disk / 'models'}"], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"export.py: error: --export_base={small_disk / 'models'} has ") and (
        "this export needs at least" in last
    ), last
    assert [p.name for p in (small_disk / "models").iterdir()] == [".lock"]  # no version, no temporary


# Hostile files: what a header declares is checked before anything is decoded or scaled.


def _big_png(path: pathlib.Path, width: int, height: int) -> None:
    """A valid PNG of width x height black pixels: a 20000 x 20000 one is 1.2 MB and takes a second."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = 80
    assert height % rows == 0
    block = (b"\0" * (1 + 3 * width)) * rows  # each row: filter type 0, then its pixels
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    again = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)  # no history after a full flush: one block's bytes
    adler = 1
    for _ in range(height // rows):
        adler = zlib.adler32(block, adler)
    stream = b"\x78\xda" + first + again * (height // rows - 1) + z.flush() + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")
    )


class _PeakGrowth:
    """The most this process's resident memory grew above its start while the block ran (sampled
    every 2 ms: a gigabyte takes far longer than that to fill)."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    @property
    def bytes(self) -> int:
        return self.peak - self.start

    def _sample(self):
        while not self._done.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        return int(pathlib.Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_training_png_declaring_20000_px_is_refused_by_its_header_not_decoded(tmp_path):
    root = tmp_path / "images"
    image_folder(root)
    _big_png(root / "train" / "a" / "huge.png", 20000, 20000)  # 1.2 MB on disk, 1.2 GB decoded
    with _PeakGrowth() as memory, pytest.raises(ValueError, match="corrupt or unreadable") as err:
        data.load(f"folder:{root}", batch_size=2, image_size=8, cache_dir=tmp_path / "cache")
    assert "huge.png: 20000x20000 pixels, more than the 16,777,216" in str(err.value)
    assert "\n" not in str(err.value)
    # Was 1.2 GB: the in-memory decision decoded a sample of the files to estimate their size.
    assert memory.bytes < 300 << 20, f"grew by {memory.bytes >> 20} MB"


def test_a_1x1000000_png_is_served_and_ten_cropped_in_little_memory(tmp_path):
    from keras_resnet.data import recipes
    from keras_resnet.data.info import DataInfo
    from keras_resnet.serving.decode import decode_images

    info = DataInfo("x", "imagenet", 2, ("a", "b"), 48, 55, np.zeros(3, np.float32), 10)
    strip = tf.io.encode_png(tf.fill([1, 1_000_000, 3], tf.constant(7, tf.uint8)))
    with _PeakGrowth() as memory:
        views = decode_images(tf.stack([strip]), info, max_pixels=16_777_216)
        crops = recipes.ten_crop(tf.io.decode_png(strip)[tf.newaxis], info)
    assert views.shape == (1, 48, 48, 3) and crops.shape == (1, 10, 48, 48, 3)
    np.testing.assert_allclose(views, 7.0, atol=1e-4)
    np.testing.assert_allclose(crops, 7.0, atol=1e-4)
    # Scaled to a 55 px short side first, either would be 55 x 55,000,000 floats (36 GB).
    assert memory.bytes < 300 << 20, f"grew by {memory.bytes >> 20} MB"


def test_a_folder_file_name_that_is_not_utf8_is_named_in_one_line(tmp_path):
    root = tmp_path / "images"
    image_folder(root)
    bad = os.path.join(os.fsencode(root / "train" / "b"), b"caf\xe9.png")
    shutil.copy(root / "train" / "b" / "0.png", bad)
    with pytest.raises(ValueError, match=r"caf\\xe9.png' has a name that is not valid UTF-8: rename it"):
        data.load(f"folder:{root}", batch_size=2, image_size=8, cache_dir=tmp_path / "cache")


# Damaged records: one line naming the file and what to do.


def test_a_damaged_tfds_record_file_is_named_with_the_fix(tfds_dir, tmp_path):
    copy = tmp_path / "tfds" / "cifar10" / "3.0.2"
    copy.mkdir(parents=True)
    source = tfds_dir / "cifar10" / "3.0.2"
    for path in source.iterdir():
        if "tfrecord" not in path.name:
            shutil.copy(path, copy / path.name)
    (test_file,) = source.glob("cifar10-test.tfrecord*")
    shutil.copy(test_file, copy / test_file.name)
    (train_file,) = source.glob("cifar10-train.tfrecord*")
    with open(train_file, "rb") as f, open(copy / train_file.name, "wb") as out:
        out.write(f.read(1 << 20) + np.random.default_rng(0).bytes(1 << 20))  # a megabyte, then noise
    with pytest.raises(data.DataUnavailable) as err:
        data.load("cifar10", data_dir=str(tmp_path / "tfds"), download=False, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert f"damaged: {train_file.name})" in message and "restore it from a good copy" in message
    assert test_file.name not in message and "\n" not in message


@pytest.mark.parametrize("record, text", [("summary.json", '{"steps": 2'), ("config.json", "[]")])
def test_a_damaged_run_record_is_one_line_with_the_fix(finished, tmp_path, record, text):
    cfg, _ = finished
    model_dir = tmp_path / "run"
    shutil.copytree(cfg.run.model_dir, model_dir)
    (model_dir / record).write_text(text)
    fix = "delete it and run the same command again" if record == "summary.json" else "restore it from"
    with pytest.raises(ConfigError, match=f"{record} is damaged .*{fix}") as err:
        training.run(cfg.replace(model_dir=str(model_dir)), verbose=0)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_flags_out_of_range_are_refused_in_one_line_naming_the_flag(tmp_path):
    cases = {  # flag: what the line must say (the range or the image side it must stay below)
        "--seed=-1": "--seed must be in [0, 4294967295]",
        "--seed=4294967296": "--seed must be in [0, 4294967295]",
        "--weight_decay=inf": "--weight_decay must be finite",
        f"--train_steps={10**30}": "--train_steps must be at most 100,000,000",
        "--plateau_patience=-3": "--plateau_patience must be >= 1",
        "--warmup_max_steps=-5": "--warmup_max_steps must be >= 1",
        "--tune_wait=-1": "--tune_wait must be >= 0 seconds",
        "--cutout=1000": "must be below the 32 px image side",
        "--translate=1000": "must be below the 32 px image side",
    }
    for flag, says in cases.items():
        model_dir = tmp_path / flag.split("=")[0].strip("-")
        cmd = [sys.executable, str(REPO / "train.py"), "--model=resnet8", "--dataset=digits"]
        done = subprocess.run(
            [*cmd, "--train_steps=5", f"--model_dir={model_dir}", flag], capture_output=True, text=True
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, (flag, done.stderr[-2000:])
        assert lines[0].startswith("train.py: error: ") and says in lines[0], (flag, lines[0])
        assert not (model_dir / "checkpoints").exists(), flag
