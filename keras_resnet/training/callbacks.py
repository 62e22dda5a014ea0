"""The callbacks of a training run, and `make_callbacks`, which puts them in their order.

Steps are iterations as the paper counts them (one global batch each). Keras "epochs" are chunks
of `--checkpoint_steps` iterations: each ends with an evaluation, a history row and a checkpoint.

- `StopAtStep`: ends the run at exactly `total_steps`, whatever the chunk boundaries.
- `WeightAverage`: an exponential moving average of every weight, BN statistics included.
- `Evaluation`: validation (every chunk) and test (every `--eval_test_every` chunks) errors.
- `LearningRateControl`: the paper's warmup and plateau decays; logs the learning rate.
- `HistoryCSV`: `history.csv` and `curves.png`.
- `Scalars`: the same curves for TensorBoard, on the iteration axis, train and test overlaid.
- Progress (`progress.Progress`) and checkpoints (`checkpoints.Checkpointer`): modules of their own.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from keras_resnet import files, plots
from keras_resnet.config import OptimConfig, TrainConfig
from keras_resnet.models.compiled import LearningRate
from keras_resnet.rundir import RunDir
from keras_resnet.training.checkpoints import Checkpointer
from keras_resnet.training.optimization import global_step
from keras_resnet.training.progress import Progress

log = logging.getLogger(__name__)


class StopAtStep(keras.callbacks.Callback):
    """Ends training at exactly `total_steps` global iterations, whatever the epoch boundaries."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if global_step(self.model) >= self.total_steps:
            self.model.stop_training = True


class WeightAverage(keras.callbacks.Callback):
    """An exponential moving average of the model's weights, BN moving statistics included.

    `average` is a copy of the model (build it inside the strategy's scope) whose weights follow
    `a <- d a + (1 - d) w` after every step, with `d = min(decay, (1 + t) / (10 + t))` at global
    step t so that the first steps are not dominated by the initial weights (as TensorFlow's
    `ExponentialMovingAverage(num_updates=...)`). Averaging the BN statistics too keeps them
    consistent with the averaged weights.
    """

    def __init__(self, model: keras.Model, decay: float):
        super().__init__()
        self.decay = float(decay)
        self.average = keras.models.clone_model(model)
        self.average.set_weights(model.get_weights())
        pairs = list(zip(self.average.weights, model.weights, strict=True))
        if any(a.shape != w.shape for a, w in pairs):
            raise ValueError("The averaged copy's weights do not line up with the model's.")

        @tf.function
        def update(decay):
            for a, w in pairs:
                a.assign(decay * a + (1.0 - decay) * tf.cast(w, a.dtype))

        self._update = update

    def on_train_batch_end(self, batch, logs=None):
        t = global_step(self.model)
        self._update(tf.constant(min(self.decay, (1.0 + t) / (10.0 + t)), tf.float32))


class Evaluation(keras.callbacks.Callback):
    """Adds `val_loss`, `val_error` (every chunk) and `test_loss`, `test_error` (every
    `test_every` chunks and at the last step) to the epoch's logs, as the paper's curves show them.

    `model` is what is evaluated: the trained model, its weight average, or either averaged over
    test-time views; it must be compiled with the loss and metrics. "Every `test_every` chunks"
    is counted in global steps (the first chunk end at or past each multiple of `test_every`
    chunks' steps), so a resumed run tests where the uninterrupted run would, not `test_every`
    chunks after the resume.
    """

    def __init__(
        self,
        model: keras.Model,
        validation: tf.data.Dataset | None,
        test: tf.data.Dataset | None,
        total_steps: int,
        test_every: int = 1,
        progress: Progress | None = None,
    ):
        super().__init__()
        self.evaluated, self.validation, self.test, self.progress = model, validation, test, progress
        self.total_steps, self.test_every = total_steps, max(int(test_every), 1)
        self.step = 0  # at the previous chunk end (or where the run resumed)

    def on_train_begin(self, logs=None):
        self.step = global_step(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not math.isfinite(logs.get("loss", 0.0)):
            return
        if self.validation is not None:
            logs.update(self._evaluate(self.validation, "val", "the validation set"))
        step, previous = global_step(self.model), self.step
        self.step = step
        period = self.test_every * (self.params.get("steps") or 1)  # Keras' steps per chunk
        due = step // period > previous // period or step >= self.total_steps
        if self.test is not None and due:
            logs.update(self._evaluate(self.test, "test", "the test set"))

    def _evaluate(self, data: tf.data.Dataset, prefix: str, what: str) -> dict[str, float]:
        if self.progress:
            self.progress.phase(f"evaluating {what}")
        began = time.perf_counter()
        results = self.evaluated.evaluate(data, verbose=0, return_dict=True)
        if self.progress:
            self.progress.took(time.perf_counter() - began)
        return {f"{prefix}_{k}": float(v) for k, v in results.items()}


class LearningRateControl(keras.callbacks.Callback):
    """Warmup (lr 0.01 until the training error < 80%, section 4.2) and decay on plateau.

    Both act through `LearningRate.scale`; the state travels with the checkpoints. Puts the
    current learning rate into the logs as `lr`, and keeps the exact steps at which the rate
    jumped (milestones, end of warmup, plateau decays) for the history (`pop_changes`).
    """

    def __init__(self, optim: OptimConfig, schedule: LearningRate, verbose: bool = True):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose
        self.warming = optim.warmup
        self.warmup_scale = optim.warmup_learning_rate / optim.learning_rate
        self.warmup_max_steps = optim.warmup_max_steps
        self.plateau = optim.lr_schedule == "plateau"
        self.patience, self.decay = optim.plateau_patience, optim.lr_decay
        self.plateau_scale, self.best, self.wait = 1.0, math.inf, 0
        self.step = self.logged_step = 0
        self.changes: list[int] = []  # steps after which the rate jumped, since the last pop

    def get_state(self) -> dict:
        return {
            "warming": self.warming,
            "plateau_scale": self.plateau_scale,
            "best": self.best,
            "wait": self.wait,
        }

    def set_state(self, state: dict) -> None:
        self.warming = state.get("warming", self.warming)
        self.plateau_scale = state.get("plateau_scale", 1.0)
        self.best, self.wait = state.get("best", math.inf), state.get("wait", 0)

    def _apply(self):
        self.schedule.scale.assign(self.plateau_scale * (self.warmup_scale if self.warming else 1.0))

    def pop_changes(self) -> dict[str, str]:
        """{"lr_changes": the steps after which the rate jumped since the last call, space-separated}."""
        changes, self.changes = sorted(self.changes), []
        return {"lr_changes": " ".join(map(str, changes))}

    def on_train_begin(self, logs=None):
        self.step = self.logged_step = global_step(self.model)
        if self.warming and self.step >= self.warmup_max_steps:  # e.g. a lowered --warmup_max_steps
            self.warming = False
            self.changes.append(self.step)
        self._apply()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.warming and logs and "error" in logs:
            error = float(logs["error"])
            if error < 0.8 or self.step >= self.warmup_max_steps:
                self.warming = False
                self._apply()
                self.changes.append(self.step)
                if self.verbose:
                    log.info(f"\nwarmup over at step {self.step} (running training error {error:.1%})")

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self.plateau:
            # The paper decays when the error plateaus; never on the test set.
            value = logs.get("val_error", logs.get("error"))
            if value is not None and math.isfinite(value):
                if value < self.best - 1e-4:
                    self.best, self.wait = float(value), 0
                else:
                    self.wait += 1
                    if self.wait >= self.patience:
                        self.plateau_scale *= self.decay
                        self.wait = 0
                        self._apply()
                        self.changes.append(self.step)
                        if self.verbose:
                            log.info(f"\nplateau: learning rate x{self.decay} at step {self.step}")
        if self.schedule.kind == "step":
            # Iteration m (0-based) is the first at the new rate, i.e. after m steps.
            self.changes += [m for m in self.schedule.milestones if self.logged_step < m <= self.step]
        self.logged_step = self.step
        logs["lr"] = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))


class HistoryCSV(keras.callbacks.Callback):
    """One row per epoch in `history.csv` (and its plot `curves.png`), rewritten atomically.

    Its `epoch` column counts passes over the training data (`step / steps_per_epoch`, two
    decimals) when `steps_per_epoch` is given: Keras' epoch index restarts its count after a resume
    from the middle of an epoch, and is a --checkpoint_steps chunk rather than a pass. Rows past
    the step a run resumed from are dropped. `columns`, called at every epoch end, adds
    columns that are not metrics (so they stay out of Keras' logs, which TensorBoard plots). The
    plot is redrawn at most every PLOT_EVERY_S seconds, and at the end of training (drawing it
    takes ~0.6 s: at every chunk end, a quarter of a short search's time). A plot that fails is
    reported once and never stops training.
    """

    PLOT_EVERY_S = 30.0

    def __init__(
        self,
        path: pathlib.Path,
        columns: Callable[[], dict[str, Any]] | None = None,
        steps_per_epoch: int | None = None,
        title: str = "",
    ):
        super().__init__()
        self.path, self.title = pathlib.Path(path), title
        self.columns = columns
        self.steps_per_epoch = steps_per_epoch
        self.rows: list[dict] = []
        self.plot_failed = False
        self.plotted_at, self.plotted_rows = -math.inf, 0

    def on_train_begin(self, logs=None):
        step = global_step(self.model)
        if self.path.exists():
            with self.path.open() as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
            for row in self.rows:  # rows written before the column counted passes
                row["epoch"] = self._epoch(int(row["step"]), row["epoch"])
            if self.rows and "lr" in self.rows[0] and "lr_changes" not in self.rows[0]:
                # A file from before the lr_changes column: carry its inferred changes over, or the
                # rewritten file (with the column) would lose them.
                inferred = set(plots.lr_change_steps(self.rows))
                for prev, row in zip([None, *self.rows], self.rows, strict=False):
                    row["lr_changes"] = prev["step"] if prev and int(prev["step"]) in inferred else ""

    def _epoch(self, step: int, keras_epoch):
        """Passes over the data at `step` when `steps_per_epoch` is known, else Keras' epoch."""
        return round(step / self.steps_per_epoch, 2) if self.steps_per_epoch else keras_epoch

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        extra = self.columns() if self.columns else {}
        passes = self._epoch(int(logs["step"]), epoch + 1) if "step" in logs else epoch + 1
        self.rows.append({"epoch": passes, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **logs, **extra})
        keys: list[str] = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        with files.replacing(self.path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        if time.monotonic() - self.plotted_at >= self.PLOT_EVERY_S:
            self._plot()

    def on_train_end(self, logs=None):
        if self.plotted_rows < len(self.rows):
            self._plot()

    def _plot(self) -> None:
        self.plotted_at, self.plotted_rows = time.monotonic(), len(self.rows)
        try:
            title = self.title or self.model.name
            plots.plot_history(self.path, self.path.with_name(RunDir.CURVES), title=title)
        except Exception as err:  # a figure is never worth a training run
            if not self.plot_failed:
                log.warning(
                    "Could not draw %s (%s: %s); training goes on.", "curves.png", type(err).__name__, err
                )
            self.plot_failed = True


class Scalars(keras.callbacks.Callback):
    """TensorBoard's view of the history: `loss` and `error` under `logs/train`, `logs/validation`
    and `logs/test` (one chart per quantity, the sets overlaid as runs, as the paper's Fig. 6),
    and `learning_rate` under `logs/train`, all against the global iteration, at every chunk end.

    Keras' own TensorBoard callback puts test metrics inside the train run as `epoch_test_*`,
    on an epoch-index axis, with the learning rate twice.
    """

    SETS = {"train": "", "validation": "val_", "test": "test_"}

    def __init__(self, logs_dir: pathlib.Path):
        super().__init__()
        self.logs_dir = pathlib.Path(logs_dir)
        self.writers: dict[str, Any] = {}

    def _writer(self, name: str):
        if name not in self.writers:
            self.writers[name] = tf.summary.create_file_writer(str(self.logs_dir / name))
        return self.writers[name]

    def on_epoch_end(self, epoch, logs=None):
        if not logs or "step" not in logs:
            return
        step = int(logs["step"])
        for name, prefix in self.SETS.items():
            values = {q: logs[prefix + q] for q in ("loss", "error") if prefix + q in logs}
            if name == "train" and "lr" in logs:
                values["learning_rate"] = logs["lr"]
            if values:
                with self._writer(name).as_default(step=step):
                    for tag, value in values.items():
                        tf.summary.scalar(tag, float(value))
                self._writer(name).flush()

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


# ----------------------------------------------------------------------------- all of them


@dataclasses.dataclass
class RunCallbacks:
    """A run's callbacks by name; `ordered()` is the order they must run in.

    Order matters: the weight average is updated before it is evaluated; the evaluation and the
    learning-rate control fill the logs that the progress line, the history and TensorBoard
    record; the checkpoint is written last.
    """

    stop: StopAtStep
    average: WeightAverage | None
    evaluation: Evaluation
    learning_rate: LearningRateControl
    progress: Progress
    history: HistoryCSV
    tensorboard: Scalars
    checkpointer: Checkpointer
    extra: tuple[keras.callbacks.Callback, ...] = ()

    def ordered(self) -> list[keras.callbacks.Callback]:
        found = [
            self.stop,
            self.average,
            self.evaluation,
            self.learning_rate,
            self.progress,
            self.history,
            self.tensorboard,
            self.checkpointer,
            *self.extra,
        ]
        return [cb for cb in found if cb is not None]


def make_callbacks(
    cfg: TrainConfig,
    model: keras.Model,
    *,
    total_steps: int,
    rate: LearningRate,
    evaluated: keras.Model,
    validation: tf.data.Dataset | None,
    test: tf.data.Dataset | None,
    average: WeightAverage | None = None,
    scratch_dir: pathlib.Path | None = None,
    verbose: bool = True,
    intra_epoch_log: bool = False,
    extra: tuple[keras.callbacks.Callback, ...] = (),
    steps_per_epoch: int | None = None,
    live: bool = False,
) -> RunCallbacks:
    """The callbacks of a run of `cfg`; `rate` is the schedule `model` was compiled with
    (`optimization.compile_model`), `evaluated` the model the evaluations score.

    `steps_per_epoch` (one pass over the training data) numbers the history's epochs.

    Workers other than the chief pass a `scratch_dir` to write into (they still restore from
    --model_dir). `test` is None when the test set must not be seen (tuning trials).
    """
    run_dir = RunDir(cfg.run.model_dir)
    out = RunDir(scratch_dir) if scratch_dir else run_dir
    lr = LearningRateControl(cfg.optim, rate, verbose=verbose)
    low_res = cfg.data.low_res_size
    progress = Progress(
        total_steps,
        cfg.data.batch_size,
        intra_epoch=intra_epoch_log,
        quiet=not verbose,
        live=live,
        cheap_steps=(
            cfg.data.low_res_epochs * (steps_per_epoch or 0),
            (low_res / model.input_shape[1]) ** 2 if low_res else 1.0,
        ),
    )
    return RunCallbacks(
        stop=StopAtStep(total_steps),
        average=average,
        evaluation=Evaluation(
            evaluated,
            validation,
            test if cfg.run.eval_test else None,
            total_steps,
            cfg.run.eval_test_every,
            progress=progress,
        ),
        learning_rate=lr,
        progress=progress,
        history=HistoryCSV(
            out.history, columns=lr.pop_changes, steps_per_epoch=steps_per_epoch, title=_title(cfg)
        ),
        tensorboard=Scalars(out.logs),
        checkpointer=Checkpointer(
            run_dir.checkpoints,
            out.checkpoints,
            stateful=[lr, progress],  # their state travels with the checkpoints
            average=average.average if average else None,
            verbose=verbose,
        ),
        extra=tuple(extra),
    )


def _title(cfg: TrainConfig) -> str:
    """`resnet20 on cifar10`: the net and its data (a folder by its name), for the curves."""
    dataset = cfg.data.dataset
    if dataset.startswith("folder:"):
        dataset = pathlib.Path(dataset.split(":", 1)[1]).name or dataset
    return f"{cfg.model.name} on {dataset}"
