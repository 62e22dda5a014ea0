"""A run fitted to a wall-clock budget: this machine's speed measured, then the run's length planned.

    cfg = budget.plan(cfg, minutes=30, started=start_of_the_command)   # then procedure.run(cfg)

`train.py --time_budget=30` does this before training. Two probe runs of 25 steps (the model,
data and precision of `cfg`, through `training.run` in a scratch directory) measure the images/s
at the low and at the full resolution (wall clock, the gaps between steps included) and what a
checkpoint and a run's start-up cost; the plan is then the most epochs whose predicted time fits
what is left of the budget: the start-up and the probes already spent, a run's own start-up and
saving (measured by the probes), the epochs at their measured speeds, and the evaluations. It keeps
the proportions the flags give (the share of epochs at --low_res_size, the warmup's share of the
steps) and evaluates the test set once, at the end: each evaluation costs seconds of the budget.

The plan is written to `<model_dir>/budget.json`; running the same command again resumes that
plan instead of measuring anew, so an interrupted run continues where it was.

Measured on 2 Intel Xeon cores (ResNet-20, batch 256, the fast preset, `--time_budget=60`): the
probes took 52 s and planned 57 epochs to end at 56.0 min; the command ended at 54.0 min with
89.46% test accuracy (results/README.md: `budget60b`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import tempfile
import time
from typing import Any

import keras

from keras_resnet import files, models
from keras_resnet.config import ConfigError, TrainConfig, run_length
from keras_resnet.training import distribution, procedure
from keras_resnet.training.rundir import RunDir, Summary

# A probe: 5 steps of tracing, then 20 steady ones with a checkpoint after the 15th, so that the
# time between steps and a checkpoint's own cost (its validation included) are measured too.
WARMUP_STEPS, PROBE_CHUNK, PROBE_STEPS = 5, 15, 25
# Kept free: a short probe runs faster than a long run's 32 px epochs (680-700 img/s against a mean of
# 620-660 in the 30-minute runs on the Intel Xeon), and the machine's spread is about +-5%.
MARGIN = 0.06
# An evaluation image (one view, forward only) costs at most half a training image: measured
# 1,300-2,000 test views/s against 680 training images/s at 32 px on the Intel Xeon.
EVAL_SPEEDUP = 2.0
PLANNED = ("epochs", "train_steps", "low_res_epochs", "lr_warmup_steps", "eval_test_every", "precision")


@dataclasses.dataclass(frozen=True)
class Speeds:
    """What the probes measured on this machine: wall-clock rates, gaps between steps included."""

    low_res_images_per_sec: float  # at --low_res_size (= full_images_per_sec without it)
    full_images_per_sec: float
    checkpoint_s: float  # one checkpoint's cost (with the held-out split's evaluation, if any)
    run_overhead_s: float  # the rest of a run: data, build, tracing, the last checkpoint, saving
    train_examples: int
    test_examples: int
    precision: str  # as --precision=auto resolved it for the probes


def epochs_at_low_res(cfg: TrainConfig, epochs: int, steps_per_epoch: int) -> int:
    """The flags' share of low-resolution epochs, applied to `epochs` (rounded up, as 27 -> 14)."""
    if not cfg.data.low_res_size:
        return 0
    flagged_epochs = cfg.optim.epochs or cfg.optim.train_steps / steps_per_epoch
    return min(epochs, math.ceil(epochs * cfg.data.low_res_epochs / flagged_epochs - 1e-9))


def _checkpoints(cfg: TrainConfig, epochs: int, steps_per_epoch: int) -> int:
    """How many checkpoints (Keras epochs) a run of `cfg` cut to `epochs` makes: `run_length`'s count."""
    return run_length(cfg.replace(epochs=epochs, train_steps=0), steps_per_epoch)[2]


def predicted_seconds(cfg: TrainConfig, epochs: int, speeds: Speeds) -> float:
    """The predicted wall time of a run of `cfg` cut to `epochs`, from its start to summary.json."""
    steps_per_epoch = speeds.train_examples // cfg.data.batch_size
    images = steps_per_epoch * cfg.data.batch_size
    low = epochs_at_low_res(cfg, epochs, steps_per_epoch)
    train = images * (low / speeds.low_res_images_per_sec + (epochs - low) / speeds.full_images_per_sec)
    checkpoints = _checkpoints(cfg, epochs, steps_per_epoch)
    test = len(models.TTA_VIEWS[cfg.run.tta]) * speeds.test_examples * cfg.run.eval_test  # once, at the end
    return (
        speeds.run_overhead_s
        + train
        + (checkpoints - 1) * speeds.checkpoint_s  # the last one is in the overhead
        + test / (EVAL_SPEEDUP * speeds.full_images_per_sec)
    )


def _one_epoch_budget(cfg: TrainConfig, speeds: Speeds) -> float:
    """The seconds a budget needs for a run of one epoch: its predicted time and MARGIN kept free."""
    return predicted_seconds(cfg, 1, speeds) / (1 - MARGIN)


def fit(cfg: TrainConfig, seconds: float, speeds: Speeds) -> dict[str, Any]:
    """The fields of the longest run of `cfg` predicted to end within `seconds` (MARGIN kept free).

    Raises:
        ConfigError: not even one epoch fits.
    """
    if speeds.train_examples < cfg.data.batch_size:
        raise ConfigError(
            f"--batch_size={cfg.data.batch_size} is larger than the {speeds.train_examples} training images."
        )
    usable = seconds * (1 - MARGIN)
    epochs = 0
    while predicted_seconds(cfg, epochs + 1, speeds) <= usable:
        epochs += 1
    if not epochs:
        raise ConfigError(
            f"--time_budget: {seconds / 60:.1f} minutes are left, and a run of one epoch takes "
            f"{_one_epoch_budget(cfg, speeds) / 60:.1f} here "
            f"(its start-up and {MARGIN:.0%} kept free included)."
        )
    steps_per_epoch = speeds.train_examples // cfg.data.batch_size
    flagged_steps = run_length(cfg, steps_per_epoch)[0]
    steps = epochs * steps_per_epoch
    return {
        "epochs": epochs,
        "train_steps": 0,
        "low_res_epochs": epochs_at_low_res(cfg, epochs, steps_per_epoch),
        "lr_warmup_steps": round(cfg.optim.lr_warmup_steps * steps / flagged_steps),
        # The test set once, after the last step: --eval_test_every counts checkpoints.
        "eval_test_every": _checkpoints(cfg, epochs, steps_per_epoch),
        "precision": speeds.precision,
    }


class _StepEnds(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def _probe(cfg: TrainConfig, low_res: bool, precision: str) -> tuple[Summary, float, float, float]:
    """(summary, seconds per steady step, seconds per checkpoint, the rest of the run's seconds) of a
    PROBE_STEPS run of `cfg`, all at --low_res_size or all at full size."""
    with tempfile.TemporaryDirectory(prefix="keras_resnet_probe_") as model_dir:
        probe = cfg.replace(
            model_dir=model_dir,
            export_dir="",
            train_steps=PROBE_STEPS,
            epochs=0,
            checkpoint_steps=PROBE_CHUNK,
            low_res_size=cfg.data.low_res_size if low_res else 0,
            low_res_epochs=1 if low_res else 0,  # one epoch is longer than the probe
            lr_warmup_steps=0,
            eval_test=False,
            precision=precision,
        )
        timer = _StepEnds()
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the probe's header is not the run's
            try:
                summary = procedure.run(probe, verbose=0, callbacks=[timer])
            except procedure.TrainingStopped as err:
                raise procedure.TrainingStopped(
                    "Interrupted while measuring this machine's speed (--time_budget); nothing was trained.",
                    exit_code=err.exit_code,
                ) from None
        wall = time.perf_counter() - start
    ends = timer.ends
    if len(ends) != PROBE_STEPS:
        raise RuntimeError(f"--time_budget: the probe ran {len(ends)} steps, not {PROBE_STEPS}.")
    # ends[i] is the end of step i + 1; the checkpoint comes between steps PROBE_CHUNK and + 1.
    steady = [ends[i] - ends[i - 1] for i in range(WARMUP_STEPS, PROBE_STEPS) if i != PROBE_CHUNK]
    step_s = sum(steady) / len(steady)  # the mean: a long run pays its hiccups too
    checkpoint_s = max(0.0, ends[PROBE_CHUNK] - ends[PROBE_CHUNK - 1] - step_s)
    return summary, step_s, checkpoint_s, wall - (ends[-1] - ends[WARMUP_STEPS - 1])


def measure(cfg: TrainConfig) -> Speeds:
    """Times a PROBE_STEPS run of `cfg` at --low_res_size (if set) and one at full size."""
    low = _probe(cfg, low_res=True, precision=cfg.run.precision) if cfg.data.low_res_size else None
    full = _probe(cfg, low_res=False, precision=low[0].precision if low else cfg.run.precision)
    summary, step_s, checkpoint_s, overhead = full
    return Speeds(
        low_res_images_per_sec=cfg.data.batch_size / (low or full)[1],
        full_images_per_sec=cfg.data.batch_size / step_s,
        checkpoint_s=checkpoint_s,
        # A run traces its step once per resolution: the full-size probe's rest, plus half of the
        # low-resolution one's (its tracing, not its data loading and saving a second time).
        run_overhead_s=overhead + (low[3] / 2 if low else 0.0),
        train_examples=summary.train_examples,
        test_examples=summary.test_examples,
        precision=summary.precision,
    )


def plan(cfg: TrainConfig, minutes: float, *, started: float) -> TrainConfig:
    """`cfg` with its length planned to end within `minutes` of `started` (a time.time()).

    Raises:
        ConfigError: bad flags, a multi-worker run, a budget too small for one epoch.
    """
    cfg.check()
    if not minutes > 0:
        raise ConfigError(f"--time_budget must be > 0 minutes, got {minutes}.")
    if cfg.run.distribution == "multi_worker" or distribution.cluster_size() > 1:
        raise ConfigError(
            "--time_budget plans a run on one machine: for a cluster (TF_CONFIG) give --epochs."
        )
    if cfg.optim.lr_milestones:
        raise ConfigError(
            "--time_budget plans the run's length, which fixed --lr_milestones would not follow: "
            "leave them out (the step schedule then decays at 50% and 75% of the run)."
        )
    saved_path = RunDir(cfg.run.model_dir).budget
    if not saved_path.exists() and RunDir(cfg.run.model_dir).config.exists():
        raise ConfigError(
            f"--model_dir={cfg.run.model_dir} holds a run that --time_budget did not plan: continue it "
            "without --time_budget, or use a new --model_dir."
        )
    if saved_path.exists():
        try:
            saved = json.loads(saved_path.read_text())
            fields = {k: saved["plan"][k] for k in PLANNED}
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"--model_dir: {saved_path} is not a plan this version wrote; use a new --model_dir."
            ) from None
        if saved.get("minutes") != minutes:
            raise ConfigError(
                f"--model_dir={cfg.run.model_dir} holds a run planned for "
                f"--time_budget={saved.get('minutes')}: "
                "give that budget to continue it, or use a new --model_dir."
            )
        print(f"--time_budget: continuing the plan in {saved_path}: {_describe(cfg, fields)}", flush=True)
        return cfg.replace(**fields)

    print(f"--time_budget={minutes:g}: measuring this machine's speed ({PROBE_STEPS}-step runs)", flush=True)
    probe_start = time.time()
    speeds = measure(cfg)
    spent = time.time() - started
    left = minutes * 60 - spent
    try:
        fields = fit(cfg, left, speeds)
    except ConfigError as err:
        least = math.ceil((spent + _one_epoch_budget(cfg, speeds)) / 60)
        raise ConfigError(f"{err} Give at least --time_budget={least}, or --epochs.") from None
    planned = cfg.replace(**fields)
    expected = time.time() - started + predicted_seconds(planned, fields["epochs"], speeds)
    rates = f"{speeds.full_images_per_sec:.0f} img/s"
    if cfg.data.low_res_size:
        low = f"{speeds.low_res_images_per_sec:.0f} img/s at {cfg.data.low_res_size} px"
        rates = f"{low} and {rates} at full size"
    print(
        f"--time_budget={minutes:g}: measured {rates} ({time.time() - probe_start:.0f} s); "
        f"{_describe(cfg, fields)}; predicted to end at {expected / 60:.1f} min",
        flush=True,
    )
    try:
        saved_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--model_dir={cfg.run.model_dir}: cannot create it ({err.strerror}).") from None
    files.write_json(
        saved_path,
        {
            "minutes": minutes,
            "plan": fields,
            "measured": dataclasses.asdict(speeds),
            "seconds_left_at_plan": round(left, 1),
            "predicted_end_s": round(expected, 1),
        },
    )
    return planned


def _describe(cfg: TrainConfig, fields: dict[str, Any]) -> str:
    low = f" ({fields['low_res_epochs']} at {cfg.data.low_res_size} px)" if cfg.data.low_res_size else ""
    warmup = f", warmup {fields['lr_warmup_steps']} steps" if fields["lr_warmup_steps"] else ""
    test = ", the test set evaluated at the end" if cfg.run.eval_test else ""
    return f"{fields['epochs']} epochs{low}{warmup}{test}"
