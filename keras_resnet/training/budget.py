"""A run fitted to a wall-clock budget: its length planned from the speed of its own first steps.

    summary = budget.run(cfg, minutes=30, started=start_of_the_command)

`train.py --time_budget=30` trains this way. Nothing is measured beside the run: it trains its
first MEASURE_STEPS steps (at --low_res_size, where the flags give one), pauses there with a
checkpoint and plans its length from their speed, the full size's speed estimated from them
(PRIOR_FULL_OVER_LOW). With --low_res_size it pauses once more, after its first epoch at full
size, and plans its last steps from that epoch's measured speed; then it trains to the end. A
pause costs a restart (loading, building, tracing: 10-30 s), no step. A plan keeps the flags'
proportions (the share of epochs at --low_res_size, the warmup's share of the steps), is the
longest run predicted to end MARGIN before the budget (in whole epochs first, in steps last), and
evaluates the test set once, at the end: each evaluation costs seconds of the budget. The run's
own checkpoints, restarts and the final evaluation are in the prediction.

Re-planning moves the warmup and the decay of the steps still to come: 40 steps into a warmup of
~1,600 the learning rate changes by less than 0.01; halfway, a length 5% longer raises it by ~2%.

Each plan is written to `<model_dir>/budget.json` (`budgetrecord`: the plan, what it was planned
from) before the run goes on. Running the same command again continues the newest plan there (the
time an interruption cost is not known, so it is not re-planned), or measures again if it was
interrupted while measuring.

How close the runs end to their budget, and at what accuracy, on which CPU: results/README.md
(the time-budget table, with each run's command); the measurements behind the constants below are
in the commit messages that set them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import keras

from keras_resnet import files, models
from keras_resnet.config import ConfigError, TrainConfig, run_length
from keras_resnet.rundir import RunDir, Summary, claimed, refuse_config_changes
from keras_resnet.training import distribution, procedure, steps
from keras_resnet.training.budgetrecord import FINAL, MEASURING, PLANNED, PLANNED_STAGE, Measured, Plan, Saved
from keras_resnet.training.optimization import global_step
from keras_resnet.training.precision import resolve_precision

log = logging.getLogger(__name__)

# The first pause: steps of tracing and filling the input pipeline, then steady ones, none thrown
# away (a run's first few dozen steps are slower than the rest: too few measure a speed too low).
MEASURE_STEPS, WARMUP_STEPS = 100, 20
# Full-size over low-resolution images/s, for the first plan only (the second measures it).
PRIOR_FULL_OVER_LOW = 0.63
# Kept free of the budget: the last plan's speeds are measured over a whole epoch (+-2%), and the
# machine's spread is about +-5%.
MARGIN = 0.03
# An evaluation image (one view, forward only) costs at most half a training image.
EVAL_SPEEDUP = 2.0
# A checkpoint's own cost before one was timed (the first plan), in seconds; a held-out split's
# evaluation comes on top.
CHECKPOINT_S = 2.0


class Timeline(keras.callbacks.Callback):
    """When each step of a run ended (perf_counter), and the steps after which a chunk ended."""

    def __init__(self):
        super().__init__()
        self.first = 0  # the global step the run started from
        self.ends: list[float] = []  # ends[i]: the end of global step first + i + 1
        self.chunk_ends: set[int] = set()

    def on_train_begin(self, logs=None):
        self.first, self.ends, self.chunk_ends = global_step(self.model), [], set()

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self.chunk_ends.add(self.first + len(self.ends))

    def step_seconds(self, low_res_steps: int, low_res: bool) -> float | None:
        """The mean seconds of a step at one image size (None if none was timed), leaving out the
        first WARMUP_STEPS of the run and of the full size (tracing) and the steps after a chunk."""
        times = []
        for i in range(WARMUP_STEPS, len(self.ends)):
            step = self.first + i + 1
            if (step <= low_res_steps) != low_res or low_res_steps < step <= low_res_steps + WARMUP_STEPS:
                continue
            if step - 1 not in self.chunk_ends:
                times.append(self.ends[i] - self.ends[i - 1])
        return sum(times) / len(times) if times else None

    def checkpoint_seconds(self, step_s: float, low_res_steps: int) -> float | None:
        """The mean cost of a chunk's end (its checkpoint, any validation), where a step followed it."""
        costs = [
            self.ends[end - self.first] - self.ends[end - self.first - 1] - step_s
            for end in self.chunk_ends
            if self.first < end < self.first + len(self.ends) and end != low_res_steps
        ]
        return max(0.0, sum(costs) / len(costs)) if costs else None


def _steps_per_epoch(cfg: TrainConfig, measured: Measured) -> int:
    return measured.train_examples // cfg.data.batch_size


def _low_res_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    return cfg.data.low_res_epochs * steps_per_epoch if cfg.data.low_res_size else 0


def seconds_left(cfg: TrainConfig, measured: Measured, *, from_step: int, restarts: int) -> float:
    """The predicted wall seconds of the run `cfg` from `from_step` to its end, with `restarts`
    starts still to come (each also stands for an end: the last checkpoint or saving)."""
    steps_per_epoch = _steps_per_epoch(cfg, measured)
    total, chunk, _ = run_length(cfg, steps_per_epoch)
    low_end = min(total, _low_res_steps(cfg, steps_per_epoch))
    low = max(0, low_end - from_step)
    full = max(0, total - max(from_step, low_end))
    checkpoints = max(0, math.ceil((total - from_step) / chunk) - 1)
    test = len(models.TTA_VIEWS[cfg.run.tta]) * measured.test_examples * cfg.run.eval_test
    full_speed = measured.full_images_per_sec
    return (
        restarts * measured.restart_s
        + cfg.data.batch_size * (low / measured.low_res_images_per_sec + full / full_speed)
        + checkpoints * measured.checkpoint_s
        + test / (EVAL_SPEEDUP * full_speed)
    )


def epochs_at_low_res(cfg: TrainConfig, epochs: int, steps_per_epoch: int) -> int:
    """The flags' share of low-resolution epochs, applied to `epochs` (rounded up, as 27 -> 14)."""
    if not cfg.data.low_res_size:
        return 0
    flagged_epochs = cfg.optim.epochs or cfg.optim.train_steps / steps_per_epoch
    return min(epochs, math.ceil(epochs * cfg.data.low_res_epochs / flagged_epochs - 1e-9))


def epochs_plan(cfg: TrainConfig, epochs: int, steps_per_epoch: int, precision: str) -> Plan:
    """`cfg` cut to `epochs` in the flags' proportions."""
    flagged_steps = run_length(cfg, steps_per_epoch)[0]
    steps = epochs * steps_per_epoch
    return Plan(
        epochs=epochs,
        train_steps=0,
        low_res_epochs=epochs_at_low_res(cfg, epochs, steps_per_epoch),
        lr_warmup_steps=round(cfg.optim.lr_warmup_steps * steps / flagged_steps),
        eval_test_every=_checkpoints(cfg, steps, steps_per_epoch),  # the test set once, at the end
        precision=precision,
    )


def steps_plan(planned: Plan, steps: int) -> Plan:
    """`planned` ending after exactly `steps` (its low-resolution epochs and warmup kept); the test
    set evaluated at the end only (there are at most `steps` checkpoints)."""
    return dataclasses.replace(planned, epochs=0, train_steps=steps, eval_test_every=max(1, steps))


def _checkpoints(cfg: TrainConfig, steps: int, steps_per_epoch: int) -> int:
    return math.ceil(steps / (cfg.run.checkpoint_steps or steps_per_epoch))


def second_pause(cfg: TrainConfig, plan: Plan, measured: Measured) -> int:
    """Where a run planned from low-resolution steps alone pauses again: after its first epoch at
    full size (0: it does not, as it measured the full size already or ends before)."""
    if not cfg.data.low_res_size or measured.full_size_measured:
        return 0
    planned, steps_per_epoch = plan.applied_to(cfg), _steps_per_epoch(cfg, measured)
    second = max(_low_res_steps(planned, steps_per_epoch), measured.at_step) + steps_per_epoch
    return second if second < run_length(planned, steps_per_epoch)[0] else 0


def first_plan(cfg: TrainConfig, seconds: float, measured: Measured) -> Plan:
    """The most whole epochs of `cfg` predicted to take at most `seconds` from the step measured.

    Raises:
        ConfigError: not even the epoch under way fits.
    """
    steps_per_epoch, from_step = _steps_per_epoch(cfg, measured), measured.at_step
    if steps_per_epoch < 1:
        raise ConfigError(
            f"--batch_size={cfg.data.batch_size} is larger than the "
            f"{measured.train_examples} training images."
        )
    least = max(1, math.ceil((from_step + 1) / steps_per_epoch))

    def fits(epochs: int) -> bool:
        plan = epochs_plan(cfg, epochs, steps_per_epoch, measured.precision)
        restarts = 1 + bool(second_pause(cfg, plan, measured))
        planned = plan.applied_to(cfg)
        return seconds_left(planned, measured, from_step=from_step, restarts=restarts) <= seconds

    if not fits(least):
        raise ConfigError(
            f"--time_budget: {seconds / 60:.1f} minutes are left, and {least} epoch(s) take longer here."
        )
    epochs = least
    while fits(epochs + 1):
        epochs += 1
    return epochs_plan(cfg, epochs, steps_per_epoch, measured.precision)


def last_plan(cfg: TrainConfig, plan: Plan, seconds: float, measured: Measured) -> Plan:
    """`plan` ending at the most steps predicted to take at most `seconds` from the step measured
    (that step itself when none fits: the run then ends at once)."""
    from_step = measured.at_step

    def fits(steps: int) -> bool:
        done = steps_plan(plan, steps).applied_to(cfg)
        return seconds_left(done, measured, from_step=from_step, restarts=1) <= seconds

    low, high = from_step, from_step + 1
    while fits(high):
        low, high = high, from_step + 2 * (high - from_step)
    while high - low > 1:  # fits(low), not fits(high)
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return steps_plan(plan, low)


# ----------------------------------------------------------------------------- the run


def run(cfg: TrainConfig, minutes: float, *, started: float) -> Summary:
    """Trains `cfg` with its length planned to end within `minutes` of `started` (a time.time()).

    Raises:
        ConfigError: bad flags, a multi-worker run, a budget too small, a --model_dir holding
            another run (nothing more was trained).
        procedure.TrainingStopped: as `procedure.run`.
    """
    _check(cfg, minutes)
    steps.check_locations(cfg)  # before budget.json or a carry is written: whoever starts the run
    if cfg.run.carry_dir:  # a carried run brings its plan (budget.json): restored before it is read
        with claimed(cfg, writes=True):
            steps.restore_carry(cfg, ignore=PLANNED)
    saved = _saved(cfg, minutes)
    if saved is not None and saved.stage != MEASURING:
        log.info(
            f"--time_budget: continuing the plan in {RunDir(cfg.run.model_dir).budget}: "
            f"{_describe(cfg, saved.plan, saved.measured)}"
        )
        return _segment(cfg, saved.plan, started=started)[0]

    def left() -> float:
        return minutes * 60 * (1 - MARGIN) - (time.time() - started)

    # The first steps, at the flags' own length (the first plan replaces it), measured.
    plan = dataclasses.replace(
        Plan.of(cfg.flags()),
        precision=resolve_precision(cfg.run.precision),
        eval_test_every=10**9,  # no test set before the end
    )
    _save(cfg, minutes, MEASURING, plan, None)
    log.info(f"--time_budget={minutes:g}: measuring this machine's speed on the run's first steps")
    until = steps.resumes_at(cfg.run.model_dir) + MEASURE_STEPS
    paused, timeline, wall = _segment(cfg, plan, until, started=started)
    if isinstance(paused, Summary):  # a run shorter than the measurement
        return paused
    measured = _measured(cfg, plan, paused, timeline, wall)
    try:
        plan = first_plan(cfg, left(), measured)
    except ConfigError as err:
        steps_per_epoch = _steps_per_epoch(cfg, measured)
        one = epochs_plan(
            cfg, math.ceil((paused.step + 1) / steps_per_epoch), steps_per_epoch, plan.precision
        )
        need = seconds_left(one.applied_to(cfg), measured, from_step=paused.step, restarts=1)
        least = math.ceil((time.time() - started + need) / 60 / (1 - MARGIN))
        _save(cfg, minutes, MEASURING, plan, measured)  # what was measured, for whoever asks why
        raise ConfigError(f"{err} Give at least --time_budget={least}, or --epochs.") from None
    second = second_pause(cfg, plan, measured)
    _announce(cfg, minutes, PLANNED_STAGE if second else FINAL, plan, measured, started)
    if not second:
        return _segment(cfg, plan, started=started)[0]

    # The first epoch at full size, measured; the last plan.
    paused, timeline, wall = _segment(cfg, plan, second, started=started)
    if isinstance(paused, Summary):
        return paused
    measured = dataclasses.replace(_measured(cfg, plan, paused, timeline, wall), restart_s=measured.restart_s)
    plan = last_plan(cfg, plan, left(), measured)
    _announce(cfg, minutes, FINAL, plan, measured, started)
    return _segment(cfg, plan, started=started)[0]


def _segment(
    cfg: TrainConfig, plan: Plan, until: int = 0, *, started: float
) -> tuple[Summary | procedure.Paused, Timeline, float]:
    """`procedure.run` of `cfg` with `plan`, paused at `until` (0: to the end), with its timeline and
    wall seconds. A new plan is recorded as the run's configuration first (`_saved` has refused
    any other change), so the run continues under it; each segment is part of the command that
    began at `started` (a re-plan is no resume)."""
    timeline = Timeline()
    began = time.perf_counter()
    planned = plan.applied_to(cfg)
    run_dir = RunDir(cfg.run.model_dir)
    if run_dir.config.exists() and not run_dir.finished():
        files.write_json(run_dir.config, planned.to_json())
        files.write_text(run_dir.flags, planned.to_flags())
    result = procedure.run(planned, callbacks=[timeline], until_step=until, started=started)
    return result, timeline, time.perf_counter() - began


def _measured(
    cfg: TrainConfig, plan: Plan, paused: procedure.Paused, timeline: Timeline, wall: float
) -> Measured:
    """What a paused segment measured: images/s at each size (the full size's from the low one's
    where it ran no full-size step), a checkpoint's and a restart's cost."""
    planned = plan.applied_to(cfg)
    steps_per_epoch = paused.train_examples // cfg.data.batch_size
    low_steps = _low_res_steps(planned, steps_per_epoch)
    low_s = timeline.step_seconds(low_steps, low_res=True)
    full_s = timeline.step_seconds(low_steps, low_res=False)
    low_s = low_s or full_s  # no --low_res_size: one size
    if low_s is None:
        raise RuntimeError(f"--time_budget: the run's {len(timeline.ends)} steps left none to time.")
    full_s_or_prior = full_s or low_s / PRIOR_FULL_OVER_LOW
    checkpoint_s = timeline.checkpoint_seconds(full_s or low_s, low_steps)
    inner = sum(1 for end in timeline.chunk_ends if end < paused.step)
    if checkpoint_s is None:  # none timed: the prior, and the held-out split's evaluation
        views = len(models.TTA_VIEWS[cfg.run.tta]) * paused.validation_examples
        checkpoint_s = CHECKPOINT_S + views * full_s_or_prior / cfg.data.batch_size / EVAL_SPEEDUP
    steps = [timeline.first + i + 1 for i in range(len(timeline.ends))]
    trained = sum(low_s if s <= low_steps else full_s_or_prior for s in steps)
    return Measured(
        low_res_images_per_sec=cfg.data.batch_size / low_s,
        full_images_per_sec=cfg.data.batch_size / full_s_or_prior,
        full_size_measured=full_s is not None,
        checkpoint_s=checkpoint_s,
        # The rest of the segment: starting, tracing, the checkpoint it paused with (and a first
        # evaluation's tracing): what each restart costs again.
        restart_s=max(0.0, wall - trained - inner * checkpoint_s),
        train_examples=paused.train_examples,
        test_examples=paused.test_examples,
        precision=plan.precision,
        at_step=paused.step,
    )


def _check(cfg: TrainConfig, minutes: float) -> None:
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


def _saved(cfg: TrainConfig, minutes: float) -> Saved | None:
    """--model_dir's budget.json if it holds a plan of this run for `minutes` (None: a new run).

    Raises:
        ConfigError: --model_dir holds another run, one --time_budget did not plan, or one planned
            for another budget.
    """
    run_dir = RunDir(cfg.run.model_dir)
    saved_config = run_dir.read_config()
    if not run_dir.budget.exists():
        if saved_config is not None:
            raise ConfigError(
                f"--model_dir={cfg.run.model_dir} holds a run that --time_budget did not plan: continue it "
                "without --time_budget, or use a new --model_dir."
            )
        return None
    try:
        saved = Saved.read(run_dir.budget)
    except ValueError:
        raise ConfigError(
            f"--model_dir: {run_dir.budget} is not a plan this version wrote; use a new --model_dir."
        ) from None
    if saved.minutes != minutes and saved.stage != MEASURING:  # measuring: nothing planned
        raise ConfigError(
            f"--model_dir={cfg.run.model_dir} holds a run planned for --time_budget={saved.minutes}: "
            "give that budget to continue it, or use a new --model_dir."
        )
    if saved_config is not None:
        refuse_config_changes(saved_config, cfg, ignore=PLANNED)
    return saved


def _save(
    cfg: TrainConfig,
    minutes: float,
    stage: str,
    plan: Plan,
    measured: Measured | None,
    predicted_end_s: float | None = None,
) -> None:
    path = RunDir(cfg.run.model_dir).budget
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--model_dir={cfg.run.model_dir}: cannot create it ({err.strerror}).") from None
    Saved(minutes, stage, plan, measured, predicted_end_s).write(path)


def _announce(
    cfg: TrainConfig, minutes: float, stage: str, plan: Plan, measured: Measured, started: float
) -> None:
    """Saves the plan (before the run goes on: a rerun continues it) and says it in one line."""
    restarts = 2 if stage == PLANNED_STAGE else 1
    predicted = (
        time.time()
        - started
        + seconds_left(plan.applied_to(cfg), measured, from_step=measured.at_step, restarts=restarts)
    )
    _save(cfg, minutes, stage, plan, measured, predicted_end_s=round(predicted, 1))
    low = (
        f"{measured.low_res_images_per_sec:.0f} img/s at {cfg.data.low_res_size} px, "
        if (cfg.data.low_res_size and not measured.full_size_measured)
        else ""
    )
    full = f"{measured.full_images_per_sec:.0f} img/s at full size" + (
        "" if measured.full_size_measured else f" estimated (x{PRIOR_FULL_OVER_LOW})"
    )
    then = (
        "re-planned after the first epoch at full size"
        if stage == PLANNED_STAGE
        else f"predicted to end at {predicted / 60:.1f} min"
    )
    log.info(f"--time_budget={minutes:g}: {low}{full}; {_describe(cfg, plan, measured)}; {then}")


def _describe(cfg: TrainConfig, plan: Plan, measured: Measured | None) -> str:
    low = f"{plan.low_res_epochs} at {cfg.data.low_res_size} px" if cfg.data.low_res_size else ""
    if plan.train_steps:
        epochs = f", {plan.train_steps / _steps_per_epoch(cfg, measured):.1f} epochs" if measured else ""
        length = f"{plan.train_steps:,} steps ({low}{epochs})".replace("(, ", "(").replace(" ()", "")
    else:
        length = f"{plan.epochs} epochs" + (f" ({low})" if low else "")
    warmup = f", warmup {plan.lr_warmup_steps:,} steps" if plan.lr_warmup_steps else ""
    test = ", the test set evaluated at the end" if cfg.run.eval_test else ""
    return f"{length}{warmup}{test}"
