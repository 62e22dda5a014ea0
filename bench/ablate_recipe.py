"""What each lever of a recipe buys: leave-one-out train.py runs scored on the 45k/5k validation split.

    .venv/bin/python bench/ablate_recipe.py --flagfile=configs/cifar10_resnet20_fast.cfg \\
        --out=runs/ablation --csv=results/time_to_accuracy/ablation.csv \\
        -- --epochs=4 --lr_warmup_steps=105 --low_res_epochs=2

Each row is one `train.py` command: the preset as it is ("preset"), the preset with one of its levers
set back to the paper's choice, or with one more lever turned on (`LEVERS`, below), plus the flags
after `--` (a shorter budget for all; a row's own flags come last and win), with
`--validation_split --noeval_test`: trained on 45k images and scored on the 5k held out (train.py
still reports the final model's test error at the end; this table never reads it). Levers are
compared at the same number of epochs, so the rows measure accuracy, not speed, and may share the
machine with other work. Running the command again skips finished runs and resumes interrupted ones
(train.py's own resume); the CSV holds the rows of the levers and seeds asked for (a finished run
is read back, not trained again), `wall_s` being its last process's time. With `--seeds=0,1` each row
is run per seed and the table shows the mean and the spread (half the range), which is what a
lever's effect must exceed to count.

The rows that turn a lever on: the weight average (`--ema_decay=0.999`), BN momentum 0.8 (PyTorch's
0.2), ghost batch norm over 32 examples, 4x the learning rate for the BN parameters (and, in
another row, their scales frozen), the stem initialised as the whitening of the images' patches
(`--stem_init=pca`), translations of 2 pixels instead of 4, and three quarters of the epochs at low
resolution instead of half. `--low_res_epochs` counts epochs, not a fraction: "low-res 3/4" sets 3
of the `--epochs=4` above, against the preset row's 2; with other `--epochs`, edit that row to match.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_resnet.interrupts import ExitCode  # noqa: E402

# Each lever of the fast preset and the flags that set it back to the paper's recipe (or to
# train.py's default where the paper has no such thing); then the levers the preset leaves off and
# the flags that turn each on.
LEVERS = {
    "preset": [],
    "step schedule": [  # the paper's lr 0.1 at batch 128, scaled to 256; no warmup
        "--lr_schedule=step",
        "--learning_rate=0.2",
        "--lr_warmup_steps=0",
    ],
    "no Nesterov": ["--nonesterov"],
    "no label smoothing": ["--label_smoothing=0"],
    "weight decay 1e-4": ["--weight_decay=0.0001"],
    # Rows at the same epochs measure what the smaller images cost in accuracy, not the epochs they
    # buy in the same time.
    "full resolution": ["--low_res_size=0", "--low_res_epochs=0"],
    "random flips": ["--flip=random"],
    "no flip TTA": ["--tta=none"],
    # On top of the preset:
    "EMA 0.999": ["--ema_decay=0.999"],
    "BN momentum 0.8": ["--bn_momentum=0.8"],
    "ghost BN 32": ["--ghost_batch_size=32"],
    "BN lr x4": ["--bn_lr_multiplier=4"],
    "frozen BN scale": ["--freeze_bn_scale"],
    "PCA stem": ["--stem_init=pca"],
    "translate 2": ["--translate=2"],
    "low-res 3/4": ["--low_res_epochs=3"],  # of the --epochs=4 in the docstring's command (absolute)
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flagfile", required=True)
    parser.add_argument("--out", default="runs/ablation", help="one train.py --model_dir per row under it")
    parser.add_argument("--csv", default="", help="write every finished row here")
    parser.add_argument("--levers", default=",".join(LEVERS), help="comma-separated names of LEVERS")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each lever is run per seed")
    parser.add_argument("train_flags", nargs="*", help="more train.py flags for every row, after --")
    args = parser.parse_args()
    levers = [name.strip() for name in args.levers.split(",") if name.strip()]
    if unknown := [name for name in levers if name not in LEVERS]:
        parser.error(f"--levers: unknown {', '.join(unknown)}; choose from: {', '.join(LEVERS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds={args.seeds}: give comma-separated integers, e.g. --seeds=0,1")
    repo = pathlib.Path(__file__).resolve().parents[1]
    rows = []
    for lever in levers:
        for seed in seeds:
            model_dir = pathlib.Path(args.out) / f"{lever.replace(' ', '_')}_seed{seed}"
            flags = [f"--flagfile={args.flagfile}", *args.train_flags, *LEVERS[lever]]
            flags += ["--validation_split", "--noeval_test", f"--seed={seed}", f"--model_dir={model_dir}"]
            print(f"[ablate] {lever}, seed {seed}: train.py {' '.join(flags)}", flush=True)
            child = subprocess.Popen([sys.executable, str(repo / "train.py"), *flags])
            try:
                code = child.wait()
            except KeyboardInterrupt:  # the terminal's Ctrl-C reached train.py too: let it checkpoint
                code = child.wait()
            if code == ExitCode.INTERRUPTED:
                print("[ablate] interrupted; run the same command again to resume", flush=True)
                return ExitCode.INTERRUPTED
            if code != 0:
                print(f"[ablate] {lever}, seed {seed}: train.py exited {code}; row left out", flush=True)
                continue
            summary = json.loads((model_dir / "summary.json").read_text())
            rows.append(
                {
                    "lever": lever,
                    "seed": seed,
                    "val_error": round(summary["val_error"], 4),
                    "epochs": round(summary["epochs"], 2),
                    "wall_s": round(summary["wall_time_s"]),
                    "flags": " ".join(args.train_flags + LEVERS[lever]),
                }
            )
    if not rows:
        return 1
    if args.csv:
        path = pathlib.Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(_table(rows))
    return 0


def _table(rows: list[dict]) -> str:
    """Markdown: mean validation error per lever, its spread, and the change against the preset."""
    by_lever: dict[str, list[float]] = {}
    for row in rows:
        by_lever.setdefault(row["lever"], []).append(row["val_error"])
    base = by_lever.get("preset")
    base_mean = sum(base) / len(base) if base else None
    lines = ["| row | validation error | spread | vs preset | seeds |", "|---|---:|---:|---:|---:|"]
    for lever, errors in by_lever.items():
        mean = sum(errors) / len(errors)
        spread = (max(errors) - min(errors)) / 2
        delta = "" if base_mean is None or lever == "preset" else f"{100 * (mean - base_mean):+.2f}"
        lines.append(f"| {lever} | {100 * mean:.2f}% | {100 * spread:.2f} | {delta} | {len(errors)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
