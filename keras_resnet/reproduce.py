"""The paper's evidence, re-measured by this code: `python -m keras_resnet.reproduce EXPERIMENT`.

    python -m keras_resnet.reproduce degradation              # Fig. 6: plain vs residual, 20 and 56
    python -m keras_resnet.reproduce responses                # Fig. 7: std of the 3x3 layers' responses
    python -m keras_resnet.reproduce shortcuts --seeds=3      # options A/B/C (Table 3), keras-tuner grid
    python -m keras_resnet.reproduce table6 --budget=64k      # Table 6 with the paper's full schedule

Every experiment is a set of ordinary `training.run`s (the code path of `train.py`) of the paper's
CIFAR-10 recipe (section 4.2: batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10
at 50% and 75% of the run, option A, the paper's augmentation), with the same seed across the
nets it compares, under `--out/<budget>/<run>` (default `runs/reproduction`). Running it again
skips finished runs and resumes interrupted ones from their checkpoints; `--dry_run` prints the
plan and its estimated time. The figures and CSV files go to `--results` (default
`results/reproduction`), rewritten from whatever runs have finished.

`--budget` is the length of every run: `cpu` (4,000 iterations, about 10 epochs: about 3 hours of
2 CPU cores for Fig. 6 and 7 together), `64k` (the paper's 64,000), or a number of iterations.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_resnet import counting, data, files, models, plots, specs, training, tuning
from keras_resnet.callbacks import duration
from keras_resnet.config import ConfigError, TrainConfig, check_config

EXPERIMENTS = ("degradation", "responses", "shortcuts", "table6")
BUDGETS = {"cpu": 4000, "64k": 64000}
DEFAULT_MODELS = {
    "degradation": ("plain20", "plain56", "resnet20", "resnet56"),
    "responses": ("plain20", "plain56", "resnet20", "resnet56"),
    "shortcuts": ("resnet20",),
    "table6": ("resnet20",),
}
# Table 6, CIFAR-10 test error (%), and the reference PyTorch reproduction of the same nets and
# recipe (github.com/akamaster/pytorch_resnet_cifar10).
PAPER_TABLE6 = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43}
REFERENCE_TABLE6 = {"resnet20": 8.27, "resnet32": 7.37, "resnet44": 6.90, "resnet56": 6.61, "resnet110": 6.32}
# Table 3, ImageNet val top-1 error (%, 10-crop) of ResNet-34 with each shortcut option.
PAPER_TABLE3 = {"A": 25.03, "B": 24.52, "C": 24.19}
# Training throughput measured here (2-core AMD EPYC Zen 3, float32, oneDNN): ResNet-20's train.py
# path at about 450 img/s, i.e. this many multiply-adds per second counting the backward pass as 2x.
MACS_PER_SECOND = 450 * 3 * 40.6e6


@dataclasses.dataclass
class Options:
    """An experiment's settings (the command line)."""

    experiment: str
    budget: int
    models: tuple[str, ...]
    seeds: int = 1
    dataset: str = "cifar10"
    data_dir: str = ""
    out: pathlib.Path = pathlib.Path("runs/reproduction")
    results: pathlib.Path = pathlib.Path("results/reproduction")
    precision: str = "auto"

    @property
    def budget_name(self) -> str:
        return next((k for k, v in BUDGETS.items() if v == self.budget), str(self.budget))


def paper_config(
    model: str, options: Options, *, shortcut: str = "", seed: int = 0, name: str = ""
) -> TrainConfig:
    """The paper's CIFAR-10 recipe (section 4.2) for `model`, scaled to the budget."""
    steps = options.budget
    spec = specs.get_spec(model, specs.CIFAR)
    cfg = TrainConfig(
        model=model,
        # resnet50 and resnet152 name ImageNet nets unless told; only those depths spell the family
        # out, so the config.json of every other run stays as before (and resumes).
        family=specs.CIFAR if spec.depth in specs.IMAGENET_SPECS else "",
        shortcut=shortcut,
        dataset=options.dataset,
        data_dir=options.data_dir,
        batch_size=128,
        train_steps=steps,
        lr_milestones=(steps // 2, steps * 3 // 4),
        # 20 points per curve (the paper's Fig. 6 has about as many); every epoch at 64k.
        checkpoint_steps=max(min(steps // 20, 390), 1),
        eval_batch_size=1000,
        # The paper warms ResNet-110 up at lr 0.01 until the training error is below 80%.
        warmup=spec.depth >= 110,
        precision=options.precision,
        seed=seed,
        model_dir=str(options.out / options.budget_name / (name or model)),
    )
    check_config(cfg)
    return dataclasses.replace(cfg, padding=_saved_padding(cfg) or cfg.padding)


def _saved_padding(cfg: TrainConfig) -> str | None:
    """The padding of a run (or search) already under way in cfg's folder: one started before
    --padding existed resumes, and counts as done once finished, with its own."""
    for path, key in (
        (pathlib.Path(cfg.model_dir) / "config.json", None),
        (tuning.default_tune_dir(cfg) / "search.json", "config"),
    ):
        try:
            saved = json.loads(path.read_text())
            return TrainConfig.from_json(saved[key] if key else saved).padding
        except (OSError, ValueError, TypeError, KeyError):
            continue  # none, or damaged: training's own check of the folder says what is wrong
    return None


def steps_done(cfg: TrainConfig) -> int:
    """Iterations of the run of `cfg` already trained: all when finished, else the checkpointed ones."""
    model_dir, tune_dir = pathlib.Path(cfg.model_dir), tuning.default_tune_dir(cfg)
    # A finished run has its summary; a finished search (shortcuts) its results table.
    if (model_dir / "summary.json").exists() or (tune_dir / "results.csv").exists():
        return cfg.train_steps
    # A search's run (one shortcut option) is a trial: done, or checkpointed in its own folder.
    for values, status, trial_dir in tuning.trials_on_disk(tune_dir):
        if values.get("shortcut") == cfg.shortcut:
            return cfg.train_steps if status == "COMPLETED" else training.resumes_at(trial_dir)
    return training.resumes_at(model_dir)


def estimate_seconds(cfgs: Sequence[TrainConfig]) -> float:
    """Training time left from the multiply-adds of the iterations not yet checkpointed.

    Evaluations add about 10%.
    """
    total = 0.0
    for cfg in cfgs:
        spec = cfg.spec
        blocks = sum(r for _, _, r in spec.stages)
        macs = 40.6e6 * (blocks / 9)  # CIFAR nets: cost grows with the number of blocks
        steps = max(cfg.train_steps - steps_done(cfg), 0)
        total += 1.1 * steps * cfg.batch_size * 3 * macs / MACS_PER_SECOND
    return total


def _train_all(cfgs: Sequence[TrainConfig], label: str) -> list[dict]:
    left = estimate_seconds(cfgs)
    print(f"[reproduce] {label}: {len(cfgs)} run(s), about {duration(left)} left (float32 speed)", flush=True)
    summaries = []
    for i, cfg in enumerate(cfgs, 1):
        print(f"[reproduce] run {i}/{len(cfgs)}: {cfg.model_dir}", flush=True)
        summaries.append(training.run(cfg))
    return summaries


# ----------------------------------------------------------------------------- measurements


def train_error(cfg: TrainConfig) -> float:
    """Top-1 error of the run's final model on its whole training set, in evaluation mode (no
    augmentation), as Fig. 6's curves end; cached in `<model_dir>/train_error.json`."""
    import keras

    model_dir = pathlib.Path(cfg.model_dir)
    cached = model_dir / "train_error.json"
    if cached.exists():
        return float(json.loads(cached.read_text())["train_error"])
    ds = data.load(cfg.dataset, data_dir=cfg.data_dir or None, eval_batch_size=1000, verbose=False)
    with training.precision_policy(cfg.precision):
        model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
        result = model.evaluate(ds.train_evaluation(), verbose=0, return_dict=True)
    files.write_json(cached, {"train_error": float(result["error"])})
    return float(result["error"])


def response_layers(model) -> list[str]:
    """The BN layers right after a 3x3 convolution, in network order: the "responses" of Fig. 7."""
    names = []
    for layer in model.layers:
        if layer.name.endswith("_bn"):
            conv = model.get_layer(layer.name[: -len("_bn")] + "_conv")
            if tuple(conv.kernel_size) == (3, 3):
                names.append(layer.name)
    return names


def response_stds(model, batches) -> dict[str, float]:
    """Standard deviation of every 3x3 layer's response (after BN, before ReLU or addition) over
    every element of every image of `batches`, in evaluation mode."""
    import keras

    names = response_layers(model)
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    sums = np.zeros(len(names))
    squares = np.zeros(len(names))
    counts = np.zeros(len(names))
    for x, _ in batches:
        outputs = probe(x, training=False)
        for i, out in enumerate(outputs):
            out = np.asarray(out, np.float64)
            sums[i] += out.sum()
            squares[i] += np.square(out).sum()
            counts[i] += out.size
    means = sums / counts
    return {
        n: float(math.sqrt(max(q / c - m * m, 0.0)))
        for n, q, c, m in zip(names, squares, counts, means, strict=True)
    }


# ----------------------------------------------------------------------------- experiments


def degradation(options: Options) -> dict[str, pathlib.Path]:
    """Fig. 6: plain nets get worse with depth, residual nets better; curves, CSV and figure."""
    cfgs = [paper_config(m, options) for m in options.models]
    _train_all(cfgs, f"degradation at {options.budget:,} iterations")
    rows, curves = [], {}
    for cfg in cfgs:
        model_dir = pathlib.Path(cfg.model_dir)
        if not (model_dir / "summary.json").exists():
            continue
        summary = json.loads((model_dir / "summary.json").read_text())
        rows.append(
            {
                "model": cfg.model,
                "steps": summary["steps"],
                "train_error": round(train_error(cfg), 5),
                "test_error": round(summary["test_error"], 5),
            }
        )
        with open(model_dir / "history.csv") as f:
            curves[cfg.model] = list(csv.DictReader(f))
    options.results.mkdir(parents=True, exist_ok=True)
    out = {"csv": _write_csv(options.results / "degradation.csv", rows)}
    out["png"] = _plot_degradation(curves, options.results / "degradation.png", options.budget)
    print(_table(rows), flush=True)
    return out


def responses(options: Options) -> dict[str, pathlib.Path]:
    """Fig. 7: std of each 3x3 layer's response on the test set, of the nets `degradation` trains."""
    import keras

    cfgs = [paper_config(m, options) for m in options.models]
    _train_all(cfgs, f"responses of nets trained {options.budget:,} iterations")
    rows = []
    for cfg in cfgs:
        ds = data.load(cfg.dataset, data_dir=cfg.data_dir or None, eval_batch_size=500, verbose=False)
        with training.precision_policy(cfg.precision):
            model = keras.saving.load_model(pathlib.Path(cfg.model_dir) / "model.keras", safe_mode=True)
            stds = response_stds(model, ds.test)
        rows += [
            {"model": cfg.model, "layer_index": i + 1, "layer": n, "std": round(s, 6)}
            for i, (n, s) in enumerate(stds.items())
        ]
    options.results.mkdir(parents=True, exist_ok=True)
    out = {"csv": _write_csv(options.results / "responses.csv", rows)}
    out["png"] = _plot_responses(rows, options.results / "responses.png")
    return out


def shortcuts(options: Options) -> dict[str, pathlib.Path]:
    """Options A, B and C (Table 3) as keras-tuner grid searches, one per seed, on the 45k/5k split."""
    rows = []
    for model in options.models:
        for seed in range(options.seeds):
            cfg = paper_config(model, options, seed=seed, name=_search_name(model, seed))
            print(f"[reproduce] shortcut search: {model}, seed {seed}", flush=True)
            result = tuning.search(cfg, tuner="grid", search=["shortcut"])
            for row in result.rows:
                if row["status"] == "COMPLETED":
                    rows.append(
                        {
                            "model": model,
                            "seed": seed,
                            "shortcut": row["shortcut"],
                            "params": row["params"],
                            "val_error": round(row["val_error"], 5),
                        }
                    )
    options.results.mkdir(parents=True, exist_ok=True)
    out = {"csv": _write_csv(options.results / "shortcuts.csv", rows)}
    summary = _shortcut_summary(rows)
    out["md"] = files.write_text(options.results / "shortcuts.md", summary)
    print(summary, flush=True)
    return out


def _search_name(model: str, seed: int) -> str:
    return f"{model}-shortcuts-seed{seed}"


def _fraction(percent: float | None) -> float | str:
    return "" if percent is None else round(percent / 100, 4)


def table6(options: Options) -> dict[str, pathlib.Path]:
    """Table 6: test error of the CIFAR-10 nets at the budget, beside the paper's and the reference's."""
    cfgs = [paper_config(m, options) for m in options.models]
    _train_all(cfgs, f"Table 6 at {options.budget:,} iterations")
    rows = []
    for cfg in cfgs:
        path = pathlib.Path(cfg.model_dir) / "summary.json"
        if path.exists():
            summary = json.loads(path.read_text())
            rows.append(
                {
                    "model": cfg.model,
                    "steps": summary["steps"],
                    "params": summary["params"],
                    # Fractions, as in the other experiments' CSVs; the tables quote percent.
                    "test_error": round(summary["test_error"], 4),
                    "paper": _fraction(PAPER_TABLE6.get(cfg.model)),
                    "reference_pytorch": _fraction(REFERENCE_TABLE6.get(cfg.model)),
                }
            )
    options.results.mkdir(parents=True, exist_ok=True)
    out = {"csv": _write_csv(options.results / f"table6-{options.budget_name}.csv", rows)}
    print(_table(rows), flush=True)
    return out


# ----------------------------------------------------------------------------- outputs


def _write_csv(path: pathlib.Path, rows: list[dict[str, Any]]) -> pathlib.Path:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return files.write_text(path, buffer.getvalue())


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no finished run yet)"
    keys = list(rows[0])
    lines = ["  ".join(f"{k:>12}" for k in keys)]
    lines += ["  ".join(f"{v!s:>12}" for v in r.values()) for r in rows]
    return "\n".join(lines)


def _shortcut_summary(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | shortcut | params | val error, mean ± std (%) | seeds | Table 3, ResNet-34 ImageNet |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        for option in specs.SHORTCUTS:
            errors = [100 * r["val_error"] for r in rows if r["model"] == model and r["shortcut"] == option]
            if not errors:
                continue
            params = next(r["params"] for r in rows if r["model"] == model and r["shortcut"] == option)
            spread = f" ± {np.std(errors, ddof=1):.2f}" if len(errors) > 1 else ""
            lines.append(
                f"| {model} | {option} | {params:,} | {np.mean(errors):.2f}{spread} | {len(errors)} | "
                f"{PAPER_TABLE3[option]:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _plot_degradation(curves: dict[str, list[dict]], path: pathlib.Path, budget: int) -> pathlib.Path:
    """Fig. 6's layout: plain nets left, residual right; training error dashed, test error bold."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True, layout="constrained")
    colors = {20: "tab:orange", 32: "tab:cyan", 44: "tab:green", 56: "tab:red", 110: "tab:purple"}
    for ax, kind in zip(axes, ("plain", "resnet"), strict=True):
        for model, rows in curves.items():
            if not model.startswith(kind):
                continue
            depth = specs.get_spec(model).depth
            steps = [int(r["step"]) for r in rows]
            color = colors.get(depth)
            ax.plot(steps, [100 * float(r["error"]) for r in rows], "--", color=color, lw=1)
            test = [(int(r["step"]), 100 * float(r["test_error"])) for r in rows if r.get("test_error")]
            ax.plot(*zip(*test, strict=True), "-", color=color, lw=2.2, label=f"{kind}-{depth}")
        ax.set(
            xlabel="iterations", title=f"{'plain' if kind == 'plain' else 'ResNet'} ({budget:,} iterations)"
        )
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[0].set_ylabel("error (%): training dashed, test bold")
    return files.save_figure(fig, path)


def _plot_responses(rows: list[dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
    """Fig. 7's layout: std by layer index (top) and sorted by magnitude (bottom)."""
    plt = plots.pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), layout="constrained")
    for model in dict.fromkeys(r["model"] for r in rows):
        stds = [r["std"] for r in rows if r["model"] == model]
        style = "--" if model.startswith("plain") else "-"
        top.plot(range(1, len(stds) + 1), stds, style, label=model)
        bottom.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), style, label=model)
    # Log scale: a net whose early BN scales grew (plain-56 after a blow-up) reaches std 20, and a
    # linear axis would flatten the differences around 1 that Fig. 7 is about.
    top.set(xlabel="layer index (original)", ylabel="std (log scale)", yscale="log")
    bottom.set(xlabel="layer index (sorted by magnitude)", ylabel="std (log scale)", yscale="log")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return files.save_figure(fig, path)


# ----------------------------------------------------------------------------- command line


RUNNERS = {"degradation": degradation, "responses": responses, "shortcuts": shortcuts, "table6": table6}


def parse(argv: Sequence[str] | None = None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m keras_resnet.reproduce", description=__doc__.split("\n")[0]
    )
    parser.add_argument("experiment", choices=EXPERIMENTS)
    parser.add_argument("--budget", default="cpu", help="iterations per run: cpu (4,000), 64k, or a number")
    parser.add_argument(
        "--models", default="", help="comma list, e.g. plain20,plain56,resnet20,resnet56,resnet110"
    )
    parser.add_argument("--seeds", type=int, default=3, help="shortcuts: seeds per option")
    parser.add_argument(
        "--dataset", default="cifar10", help="cifar10 (the paper), or digits for a quick look"
    )
    parser.add_argument("--data_dir", default="", help="TFDS data dir (as train.py --data_dir)")
    parser.add_argument("--out", default="runs/reproduction", help="where the runs live")
    parser.add_argument("--results", default="results/reproduction", help="where CSV and figures go")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--dry_run", action="store_true", help="print the runs and the estimated time only")
    args = parser.parse_args(argv)
    budget = BUDGETS.get(args.budget) or (int(args.budget) if args.budget.isdigit() else 0)
    if budget < 1:
        parser.error(f"--budget={args.budget!r}: expected cpu, 64k or a positive number of iterations")
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
        dataset=args.dataset,
        data_dir=args.data_dir,
        out=pathlib.Path(args.out),
        results=pathlib.Path(args.results),
        precision=args.precision,
    )
    return options, args.dry_run


def plan(options: Options) -> list[TrainConfig]:
    """The training runs an experiment makes (a search counts its three trials)."""
    if options.experiment == "shortcuts":
        return [
            dataclasses.replace(paper_config(m, options, seed=s, name=_search_name(m, s)), shortcut=o)
            for m in options.models
            for s in range(options.seeds)
            for o in specs.SHORTCUTS
        ]
    return [paper_config(m, options) for m in options.models]


def main(argv: Sequence[str] | None = None) -> int:
    from keras_resnet import runtime

    runtime.quiet()
    options, dry_run = parse(argv)
    cfgs = plan(options)
    print(
        f"[reproduce] {options.experiment}: {len(cfgs)} run(s) of {options.budget:,} iterations "
        f"({', '.join(dict.fromkeys(c.model for c in cfgs))}); estimated {duration(estimate_seconds(cfgs))} "
        f"of training left at this machine's float32 speed; runs in {options.out / options.budget_name}",
        flush=True,
    )
    if dry_run:
        for cfg in cfgs:
            built = models.build_model(
                cfg.model, shortcut=cfg.shortcut or None, family=cfg.family or None, padding=cfg.padding
            )
            macs = counting.count(built).macs
            done = steps_done(cfg)
            resumes = ", done" if done >= cfg.train_steps else f", resumes at step {done:,}" if done else ""
            print(f"  {cfg.model_dir}  ({macs / 1e6:.1f}M multiply-adds{resumes})")
        return 0
    try:
        outputs = RUNNERS[options.experiment](options)
    except ConfigError as err:
        print(f"reproduce: error: {err}", file=sys.stderr, flush=True)
        return 1
    except training.TrainingStopped as err:
        print(f"reproduce: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    print("[reproduce] wrote " + ", ".join(str(p) for p in outputs.values()), flush=True)
    return 0


if __name__ == "__main__":
    from keras_resnet import workarounds

    code = main()
    workarounds.exit_before_finalization(code)
    raise SystemExit(code)
