"""The paper's evidence, re-measured by this code: `python -m keras_resnet.reproduce EXPERIMENT`.

    python -m keras_resnet.reproduce degradation                    # a quick look: the digits, minutes
    python -m keras_resnet.reproduce degradation --budget=16000     # Fig. 6: plain vs residual, 20 and 56
    python -m keras_resnet.reproduce responses --budget=16000       # Fig. 7: std of the 3x3 layers' responses
    python -m keras_resnet.reproduce shortcuts --budget=cpu         # options A/B/C (Table 3), a grid search
    python -m keras_resnet.reproduce table6 --budget=64k            # Table 6 with the paper's full schedule

Every experiment is a set of ordinary training runs (the code path of `train.py`) of the paper's
CIFAR-10 recipe (section 4.2: batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10
at 50% and 75% of the run, option A, the paper's augmentation), with the same seed across the
nets it compares. Running it again skips finished runs and resumes interrupted ones; `--dry_run`
prints the plan and its estimated time.

`--budget` is the length of every run: `quick` (the default: 200 iterations on the embedded digits,
minutes), `cpu` (4,000 iterations, about 10 epochs of CIFAR-10), `64k` (the paper's 64,000), or a
number of iterations. Every budget but `quick` runs on CIFAR-10 unless `--dataset` says
otherwise. Runs live under `<out>/<budget>/<run>` on CIFAR-10 and `<out>/<dataset>/<budget>/<run>`
on another dataset (default `--out=runs/reproduction`); CSV files and figures go to `--results`
(default `<out>/results`, `<out>/<dataset>/results`; pass `--results=results/reproduction` to
update the checkout's), rewritten from the finished runs. Folders holding anything else, or lying
inside one another, are refused before the first run (`experiments.locations`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from keras_resnet.experiments.options import (
    BUDGETS,
    DEFAULT_MODELS,
    EXPERIMENTS,
    PAPER_DATASET,
    QUICK,
    QUICK_DATASET,
    Options,
)
from keras_resnet.interrupts import ExitCode
from keras_resnet.models import specs


def parse(argv: Sequence[str] | None = None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m keras_resnet.reproduce", description=__doc__.split("\n")[0]
    )
    parser.add_argument("experiment", choices=EXPERIMENTS)
    parser.add_argument(
        "--budget",
        default=None,
        help=f"iterations per run: quick ({BUDGETS[QUICK]}, the default, on the digits), cpu (4,000), 64k, "
        "or a number",
    )
    parser.add_argument(
        "--models", default="", help="comma list, e.g. plain20,plain56,resnet20,resnet56,resnet110"
    )
    parser.add_argument("--seeds", type=int, default=3, help="shortcuts: seeds per option")
    parser.add_argument(
        "--dataset",
        default=None,
        help=f"cifar10 (the paper; the default of every budget but quick), or {QUICK_DATASET} (quick's)",
    )
    parser.add_argument("--data_dir", default="", help="TFDS data dir (as train.py --data_dir)")
    parser.add_argument("--out", default="runs/reproduction", help="where the runs live")
    parser.add_argument("--results", default="", help="where CSV and figures go (default: <out>/results)")
    parser.add_argument(
        "--carry",
        default="",
        help="also keep each unfinished run's newest state under CARRY/<budget>/<run> (commit it to move "
        "the runs to another machine; the same command there resumes from it)",
    )
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--dry_run", action="store_true", help="print the runs and the estimated time only")
    args = parser.parse_args(argv)
    named = args.budget or QUICK
    dataset = args.dataset or (QUICK_DATASET if named == QUICK else PAPER_DATASET)
    budget = BUDGETS.get(named) or (int(named) if named.isdigit() else 0)
    if budget < 1:
        parser.error(f"--budget={named!r}: expected {', '.join(BUDGETS)} or a positive number of iterations")
    names = tuple(m.strip() for m in args.models.split(",") if m.strip()) or DEFAULT_MODELS[args.experiment]
    for name in names:
        try:
            spec = specs.get_spec(name, specs.CIFAR)
        except ValueError as err:
            parser.error(f"--models: {err}")
        if args.experiment == "shortcuts" and not spec.residual:
            parser.error(f"--models={name}: shortcut options exist only in residual nets")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    options = Options(
        experiment=args.experiment,
        budget=budget,
        models=names,
        seeds=args.seeds,
        dataset=dataset,
        data_dir=args.data_dir,
        out=pathlib.Path(args.out),
        results=pathlib.Path(args.results) if args.results else None,
        carry=pathlib.Path(args.carry) if args.carry else None,
        precision=args.precision,
    )
    return options, args.dry_run


def main(argv: Sequence[str] | None = None) -> int:
    options, dry_run = parse(argv)
    from keras_resnet import files, runtime

    runtime.start_command()
    from keras_resnet.config import ConfigError
    from keras_resnet.console import duration
    from keras_resnet.experiments import locations, paper, plan
    from keras_resnet.rundir import DamagedFile
    from keras_resnet.training.procedure import TrainingStopped

    try:
        cfgs = plan.plan(options)
        if not dry_run:  # the user's files, clashes, a bad path: refused before hours of training
            locations.check(options, cfgs)
    except (ConfigError, files.NotWritable) as err:
        print(f"reproduce: error: {err}", file=sys.stderr, flush=True)
        return ExitCode.ERROR
    print(
        f"[reproduce] {options.experiment}: {len(cfgs)} run(s) of {options.budget:,} iterations "
        f"({', '.join(dict.fromkeys(c.model.name for c in cfgs))}) on {options.dataset}; estimated "
        f"{duration(plan.estimate_seconds(cfgs))} left, evaluations included; runs in "
        f"{options.runs_dir}, results in {options.results_dir}",
        flush=True,
    )
    if dry_run:
        print(plan.describe(cfgs))
        return ExitCode.OK
    try:
        outputs = paper.RUNNERS[options.experiment](options)
    except (ConfigError, DamagedFile) as err:  # a run's model.keras damaged: named, with the way out
        print(f"reproduce: error: {err}", file=sys.stderr, flush=True)
        return ExitCode.ERROR
    except TrainingStopped as err:
        print(f"reproduce: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    print("[reproduce] wrote " + ", ".join(str(p) for p in outputs.values()), flush=True)
    return ExitCode.OK


if __name__ == "__main__":
    from keras_resnet.interrupts import run_command

    run_command("reproduce", main)  # a signal: one line, 130/143, nothing half-written
