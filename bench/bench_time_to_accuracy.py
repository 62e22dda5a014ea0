"""Time to accuracy: one whole `train.py` command, timed from its start to each test-accuracy threshold.

    .venv/bin/python bench/bench_time_to_accuracy.py --flagfile=configs/cifar10_resnet20_fast.cfg \\
        --model_dir=runs/fast1 [--json results/time_to_accuracy/fast1.json]

Runs train.py as a user would (a fresh process: start-up, data loading and every evaluation
count), then reads the run's own history: the wall time at which the test accuracy first
reached 85%, 88%, 90% and 91.25% (the paper's ResNet-20), the final model's test accuracy
(after the fixed budget, never the best epoch), and images/s. The test set is only seen at the
intervals the flags ask for (--eval_test_every), so a threshold's time is the first evaluation
at or above it. Every run is appended to --log (default results/time_to_accuracy/runs.csv),
including the ones that missed. Needs the machine to itself: anything running beside it voids
the figure.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_resnet import files  # noqa: E402  (the timed process is the train.py child)

THRESHOLDS = (0.85, 0.88, 0.90, 0.9125)
# PyTorch 2.13, the same ResNet-20 and CIFAR-10 copy, one-cycle recipe (../shared/reference), measured on
# the 2-core AVX-512 machine the issue was written on: accuracy and wall minutes.
PYTORCH_REFERENCE = {"30 epochs": (0.8696, 28.8), "55 epochs": (0.8819, 56.5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flagfile", required=True)
    parser.add_argument(
        "--model_dir", required=True, help="a new directory (the run must start from scratch)"
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--log", default="results/time_to_accuracy/runs.csv")
    parser.add_argument("train_flags", nargs="*", help="more train.py flags, after --")
    args = parser.parse_args()
    model_dir = pathlib.Path(args.model_dir)
    if model_dir.exists() and any(model_dir.iterdir()):
        parser.error(f"--model_dir={model_dir} is not empty: a timed run must start from scratch")
    repo = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(repo / "train.py"), f"--flagfile={args.flagfile}", f"--model_dir={model_dir}"]
    cmd += args.train_flags
    load = os.getloadavg()[0]
    started = datetime.datetime.now()
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_time_to_accuracy: train.py exited {proc.returncode}")
    with open(model_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((model_dir / "summary.json").read_text())

    def seconds_at(row) -> float:
        return (datetime.datetime.strptime(row["time"], "%Y-%m-%dT%H:%M:%S") - started).total_seconds()

    reached = {}
    for threshold in THRESHOLDS:
        hit = next((r for r in rows if r.get("test_error") and 1 - float(r["test_error"]) >= threshold), None)
        reached[f"{100 * threshold:g}%"] = round(seconds_at(hit)) if hit else None
    result = {
        "flagfile": args.flagfile,
        "extra_flags": args.train_flags,
        "model_dir": str(model_dir),
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round(wall),
        "final_test_accuracy": round(1 - summary["test_error"], 4),
        "steps": summary["steps"],
        "epochs": round(summary["epochs"], 2),
        "images_per_sec": round(summary["images_per_sec"], 1),
        "seconds_to": reached,
        "load_average_before": round(load, 2),
        "precision": summary["precision"],
    }
    print(
        f"\nwall {wall / 60:.1f} min, final test accuracy {result['final_test_accuracy']:.2%} after "
        f"{result['epochs']} epochs, {result['images_per_sec']:.0f} img/s"
    )
    for name, seconds in reached.items():
        print(f"  {name:>7}: {'not reached' if seconds is None else f'{seconds / 60:.1f} min'}")
    for name, (accuracy, minutes) in PYTORCH_REFERENCE.items():
        print(f"  PyTorch reference, {name}: {accuracy:.2%} in {minutes} min (another machine)")
    if args.json:
        files.write_json(pathlib.Path(args.json), result)
    log = pathlib.Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    fields = [
        "started",
        "flagfile",
        "extra_flags",
        "wall_s",
        "final_test_accuracy",
        "epochs",
        "images_per_sec",
    ]
    fields += [f"s_to_{k}" for k in reached] + ["load_average_before"]
    row = {
        **result,
        "extra_flags": " ".join(args.train_flags),
        **{f"s_to_{k}": v for k, v in reached.items()},
    }
    new_file = not log.exists()
    with log.open("a", newline="") as f:  # one line appended: a log, not a file rewritten
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        writer.writerow(row)


if __name__ == "__main__":
    main()
