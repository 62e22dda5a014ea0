"""bench/bench_time_to_accuracy.py run whole on a tiny net and the embedded digits, then
bench/score_tta.py on its model (no timing asserted)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from keras_resnet.training.rundir import RunDir

BENCH = REPO / "bench" / "bench_time_to_accuracy.py"
SCORE_TTA = REPO / "bench" / "score_tta.py"


def _python(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """A bench script in its own process, on the CPU, outside any cluster."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1")
    env.pop("TF_CONFIG", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_time_to_accuracy_reads_the_runs_own_history(tmp_path):
    flagfile = tmp_path / "tiny.cfg"
    flagfile.write_text(
        "--model=resnet8\n--dataset=digits\n--batch_size=32\n--eval_batch_size=1000\n"
        "--train_steps=40\n--checkpoint_steps=10\n--learning_rate=0.05\n"
    )
    results = tmp_path / "results"
    cmd = [str(BENCH), f"--flagfile={flagfile}", f"--log={results / 'runs.csv'}"]
    run = tmp_path / "run"
    proc = _python(*cmd, f"--model_dir={run}", f"--json={results / 'tiny.json'}", "--", "--seed=3")
    assert proc.returncode == 0, proc.stderr[-2000:]

    result = json.loads((results / "tiny.json").read_text())
    summary = RunDir(run).read_summary()
    assert result["final_test_accuracy"] == round(1 - summary.test_error, 4)  # the final model's
    assert result["steps"] == 40 and result["extra_flags"] == ["--seed=3"]
    history = (run / "history.csv").read_text()
    assert (results / "tiny_history.csv").read_text() == history
    rows = list(csv.DictReader(history.splitlines()))
    accuracies = [1 - float(r["test_error"]) for r in rows if r["test_error"]]
    assert len(accuracies) == 4  # every checkpoint evaluated the test set
    for name, seconds in result["seconds_to"].items():
        threshold = float(name.rstrip("%")) / 100
        assert (seconds is None) == (max(accuracies) < threshold), name
        assert seconds is None or 0 <= seconds <= result["wall_s"]
    with (results / "runs.csv").open() as f:
        (logged,) = list(csv.DictReader(f))
    assert logged["final_test_accuracy"] == str(result["final_test_accuracy"])
    assert logged["extra_flags"] == "--seed=3"
    assert (results / "time_to_accuracy.png").stat().st_size > 10_000

    # Every test-time augmentation scored on the saved model; without views it is the run's own score.
    scored = _python(str(SCORE_TTA), str(run), f"--json={results / 'tta.json'}")
    assert scored.returncode == 0, scored.stderr[-2000:]
    table = json.loads((results / "tta.json").read_text())
    errors = {row["tta"]: row["error"] for row in table["rows"]}
    assert table["split"] == "test" and set(errors) == {"none", "flip", "flip_translate"}
    assert abs(errors["none"] - summary.test_error) <= 1e-4
    assert all(0 <= e <= 1 for e in errors.values())

    # A timed run never resumes: a used --model_dir is refused in one line, before training.
    again = _python(*cmd, f"--model_dir={run}", timeout=120)
    assert again.returncode == 2 and "not empty" in again.stderr.splitlines()[-1]
    with (results / "runs.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 1
