"""keras-tuner's distributed mode through train.py --tune: a chief and workers as separate processes
on 127.0.0.1 sharing one --tune_dir; digits, ResNet-8, a few steps per trial."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO

from keras_resnet.training.rundir import RunDir

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tune(tmp_path: pathlib.Path, tuner_id: str, port: int, *extra: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        KERASTUNER_TUNER_ID=tuner_id,
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT=str(port),
    )
    cmd = [sys.executable, str(REPO / "train.py"), "--model=resnet8", "--dataset=digits", "--batch_size=32"]
    cmd += [
        "--eval_batch_size=1000",
        "--train_steps=60",
        "--checkpoint_steps=20",
        "--distribution=one_device",
    ]
    cmd += [f"--model_dir={tmp_path / 'run'}", "--tune", "--search=shortcut", "--tune_wait=120", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trials(tmp_path: pathlib.Path) -> dict[str, dict]:
    """{shortcut: summary} of every trial that finished."""
    found = {}
    for summary in (tmp_path / "run" / "tuning" / "search").glob("trial_*/summary.json"):
        cfg = json.loads((summary.parent / "config.json").read_text())
        assert cfg["shortcut"] not in found, f"{cfg['shortcut']} trained twice"
        found[cfg["shortcut"]] = json.loads(summary.read_text())
    return found


def test_chief_and_two_workers_train_each_option_once(tmp_path):
    port = _port()
    chief = _tune(tmp_path, "chief", port)
    workers = [_tune(tmp_path, f"tuner{i}", port) for i in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in (chief, *workers)]
    for proc, out in zip((chief, *workers), outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    trials = _trials(tmp_path)
    assert sorted(trials) == ["A", "B", "C"]
    assert all(t["steps"] == 60 and t["resumed_from_step"] == 0 for t in trials.values())
    for out in outputs[1:]:  # both workers trained
        assert "trial(s) trained here" in out and "0 trial(s) trained here" not in out, out[-2000:]
    assert "trains nothing" in outputs[0] and "Training resnet8" not in outputs[0]  # the chief only serves
    with open(tmp_path / "run" / "tuning" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["shortcut"] for r in rows) == ["A", "B", "C"] and {r["status"] for r in rows} == {
        "COMPLETED"
    }
    assert (tmp_path / "run" / "tuning" / "best.flags").is_file()

    # The chief started again (say its last step had failed): its workers are gone and will not
    # ask for trials; it writes the results at once instead of serving forever.
    again = _tune(tmp_path, "chief", port)
    try:
        out = again.communicate(timeout=300)[0]
    finally:
        again.kill()  # a chief that serves forever must not outlive the test
    assert again.returncode == 0, out[-4000:]
    assert "[tune] best: trial" in out and "serving the oracle" not in out


def test_a_killed_worker_comes_back_and_its_trial_resumes(tmp_path):
    port = _port()
    chief = _tune(tmp_path, "chief", port)
    worker = _tune(tmp_path, "tuner0", port)
    search = tmp_path / "run" / "tuning" / "search"
    deadline = time.time() + 600
    while not list(search.glob("trial_*/checkpoints/ckpt-20.json")):
        assert worker.poll() is None and time.time() < deadline, worker.communicate()[0][-3000:]
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)  # a machine lost mid-trial
    worker.communicate(timeout=60)
    interrupted = next(search.glob("trial_*/checkpoints/ckpt-20.json")).parents[1].name

    again = _tune(tmp_path, "tuner0", port)  # the same worker id comes back
    out = again.communicate(timeout=900)[0]
    assert again.returncode == 0, out[-4000:]
    assert chief.communicate(timeout=120)[0] and chief.returncode == 0
    summary = RunDir(search / interrupted).read_summary()
    assert summary.resumed_from_step >= 20 and summary.steps == 60  # continued, not restarted
    assert sorted(_trials(tmp_path)) == ["A", "B", "C"]


def test_worker_without_a_chief_or_with_other_flags_is_refused(tmp_path):
    port = _port()
    lonely = _tune(tmp_path, "tuner0", port, "--tune_wait=3")
    out = lonely.communicate(timeout=300)[0]
    assert lonely.returncode == 1
    assert f"cannot reach the chief's oracle at 127.0.0.1:{port} after 3 s" in out.strip().splitlines()[-1]

    chief = _tune(tmp_path, "chief", port)
    other = _tune(tmp_path, "tuner1", port, "--learning_rate=0.5")
    out = other.communicate(timeout=300)[0]
    chief.send_signal(signal.SIGTERM)
    chief.communicate(timeout=120)
    assert other.returncode == 1
    assert "this worker's --tune flags differ from the chief's (--learning_rate: 0.1 -> 0.5)" in out
