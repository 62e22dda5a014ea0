"""The bench scripts' mechanics, no timing asserted: bench/bench_time_to_accuracy.py run whole on a
tiny net and the embedded digits, then bench/score_tta.py on its model; bench/bench_serving.py on
ResNet-8 and real CIFAR-10 images against Keras and PyTorch, and without PyTorch; the PyTorch
twins' parameter counts against the Keras nets'."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from keras_resnet import models
from keras_resnet.rundir import RunDir

BENCH = REPO / "bench" / "bench_time_to_accuracy.py"
SCORE_TTA = REPO / "bench" / "score_tta.py"
BENCH_SERVING = REPO / "bench" / "bench_serving.py"
# bench_serving.py in a process where `import torch` fails as it does without the `bench` extra
# (a finder ahead of the installed one; torch stays out of sys.modules, as when not installed).
WITHOUT_TORCH = """
import runpy, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
sys.argv[0] = sys.argv.pop(1)
runpy.run_path(sys.argv[0], run_name="__main__")
"""
# Tiny call counts: the mechanics, not the speed.
TINY_SERVING = [
    "--model=resnet8",
    "--batches=1,2",
    "--calls_batch1=3",
    "--calls_batch64=1",
    "--warmup_calls=1",
]
EXPORT_PATHS = {("tensorflow", "predict_pixels_uint8"), ("tensorflow", "serving_default")}
KERAS_PATHS = {("keras", "model.predict"), ("keras", "kr.load predict")}
TORCH_PATHS = {("pytorch", "eager"), ("pytorch", "jit.trace+freeze"), ("pytorch", "torch.compile")}


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


@pytest.mark.parametrize(
    "name, num_classes, params", [("resnet20", 10, 269_722), ("resnet50", 1000, 25_557_032)]
)
def test_torch_twins_have_the_keras_nets_parameters(name, num_classes, params, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import torch_serving

    spec = models.specs.get_spec(name)
    twin = torch_serving.twin(spec.family, tuple(n for _, _, n in spec.stages), num_classes)
    assert torch_serving.count_params(twin) == params
    assert models.count(models.build_model(name, num_classes=num_classes)).params == params


def _serving_rows(result: dict) -> dict[tuple[str, str, int], dict]:
    rows = {(r["framework"], r["path"], r["batch"]): r for r in result["rows"]}
    assert len(rows) == len(result["rows"])
    for r in rows.values():
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["images_per_s"] > 0
        assert len(r["rounds_images_per_s"]) == result["rounds"]
    return rows


@pytest.mark.slow
def test_serving_bench_against_keras_and_torch(tmp_path, tfds_dir):
    pytest.importorskip("torch")
    out = tmp_path / "serving.json"
    proc = _python(
        str(BENCH_SERVING),
        *TINY_SERVING,
        "--against=keras,torch",
        "--rounds=2",
        f"--data={tfds_dir.parent}",
        f"--json={out}",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = _serving_rows(result)
    paths = EXPORT_PATHS | KERAS_PATHS | TORCH_PATHS
    assert set(rows) == {(f, p, b) for f, p in paths for b in (1, 2)}
    # 3 calls at batch 1 and 1 at 64 make 2 at batch 2 (log-linear); each round its share, rounded up.
    assert {(b, r["calls"]) for (_, _, b), r in rows.items()} == {(1, 4), (2, 2)}
    assert result["params"] == {"keras": 75_290, "pytorch": 75_290}  # ResNet-8, 10 classes
    assert result["export_peak_rss_mb"] > 100 and result["torch_peak_rss_mb"] > 50
    assert result["cpu"] and result["threads"]["torch"] == os.cpu_count()
    assert "torch not installed" not in proc.stdout
    for framework, path in paths:  # the printed table has every row
        assert sum(line.split()[:2] == [framework, path.split()[0]] for line in proc.stdout.splitlines()) == 2


@pytest.mark.slow
def test_serving_bench_without_torch_times_the_export_alone(tmp_path, tfds_dir):
    out = tmp_path / "serving.json"
    args = [*TINY_SERVING, "--against=torch", "--rounds=1", f"--data={tfds_dir.parent}", f"--json={out}"]
    proc = _python("-c", WITHOUT_TORCH, str(BENCH_SERVING), *args, "--threads=1", "--inter_op_threads=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0] == (
        "torch not installed: pip install -e '.[bench]' to compare; timing the export alone"
    )
    result = json.loads(out.read_text())
    rows = _serving_rows(result)
    assert set(rows) == {(f, p, b) for f, p in EXPORT_PATHS for b in (1, 2)}
    assert {(b, r["calls"]) for (_, _, b), r in rows.items()} == {(1, 3), (2, 2)}
    assert result["against"] == ["none"] and result["params"] == {"keras": 75_290}
    assert result["torch_peak_rss_mb"] is None and result["export_peak_rss_mb"] > 100
    assert result["threads"]["tensorflow"] == "intra-op 1, inter-op 1"  # as TensorFlow holds them
