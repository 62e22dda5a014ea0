"""keras-tuner's distributed mode through train.py --tune: a chief and workers as separate processes
on 127.0.0.1 sharing one --tune_dir; digits, ResNet-8, a few steps per trial."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO

from keras_resnet import workarounds
from keras_resnet.rundir import RunDir

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


def test_a_chief_killed_mid_trial_comes_back_and_the_search_finishes(tmp_path):
    port = _port()
    chief = _tune(tmp_path, "chief", port)
    worker = _tune(tmp_path, "tuner0", port)
    search = tmp_path / "run" / "tuning" / "search"
    deadline = time.time() + 600
    while not list(search.glob("trial_*/checkpoints/ckpt-20.json")):
        assert worker.poll() is None and time.time() < deadline, worker.communicate()[0][-3000:]
        time.sleep(0.2)
    chief.send_signal(signal.SIGKILL)  # the chief's machine lost during the first trial
    chief.communicate(timeout=60)
    time.sleep(10)  # the worker trains on, then waits for the chief to end its trial
    again = _tune(tmp_path, "chief", port)
    try:
        out = worker.communicate(timeout=600)[0]
        assert worker.returncode == 0, out[-4000:]
        chief_out = again.communicate(timeout=120)[0]
    finally:
        for proc in (worker, again):
            proc.kill()  # a chief that serves forever must not outlive the test
    assert again.returncode == 0 and "Traceback" not in chief_out, chief_out[-4000:]
    assert sorted(re.findall(r"worker tuner0: trial (\d+)", out)) == ["0", "1", "2"], out[-4000:]  # once each
    assert sorted(_trials(tmp_path)) == ["A", "B", "C"]
    with open(tmp_path / "run" / "tuning" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["shortcut"], r["status"]) for r in rows) == [(c, "COMPLETED") for c in "ABC"]


# A stand-in chief: `CreateTrial` hangs (HANG) or hands out trial 0.
_ORACLE = """
import sys, time
from concurrent import futures
import grpc
from keras_tuner.src import protos
from keras_tuner.src.engine import hyperparameters, trial

class Servicer(protos.get_service_grpc().OracleServicer):
    def CreateTrial(self, request, context):
        print("asked", flush=True)
        if sys.argv[2] == "HANG":
            time.sleep(600)
        done = trial.Trial(hyperparameters.HyperParameters(), trial_id="0", status="RUNNING")
        return protos.get_service().CreateTrialResponse(trial=done.to_proto())

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
protos.get_service_grpc().add_OracleServicer_to_server(Servicer(), server)
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
print("up", flush=True)
time.sleep(600)
"""


def test_a_request_cut_by_the_chief_s_death_is_sent_again(monkeypatch):
    import concurrent.futures

    import keras_tuner
    from keras_tuner.src.distribute import oracle_client

    port = str(_port())
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", port)
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    client = oracle_client.OracleClient(keras_tuner.oracles.RandomSearchOracle())
    workarounds.ride_out_a_chief_restart(client, f"127.0.0.1:{port}")

    def chief(mode: str) -> subprocess.Popen:
        cmd = [sys.executable, "-c", _ORACLE, port, mode]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    first = chief("HANG")
    second = None
    try:
        assert first.stdout.readline() == "up\n"
        with workarounds.keras_tuner_rpc_timeout(120), concurrent.futures.ThreadPoolExecutor(1) as pool:
            asked = pool.submit(client.create_trial, "tuner0")
            assert first.stdout.readline() == "asked\n"  # the request is in flight
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=60)
            second = chief("ANSWER")
            assert asked.result(timeout=120).trial_id == "0"  # was: UNAVAILABLE at once
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
                proc.communicate(timeout=60)
