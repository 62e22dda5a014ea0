"""The callbacks of a training run, and `make_callbacks`, which puts them in their order.

Steps are iterations as the paper counts them (one global batch each). Keras "epochs" are chunks
of `--checkpoint_steps` iterations: each ends with an evaluation, a history row and a checkpoint.

- `StopAtStep`: ends the run at exactly `total_steps`, whatever the chunk boundaries.
- `WeightAverage`: an exponential moving average of every weight, BN statistics included.
- `Evaluation`: validation (every chunk) and test (every `--eval_test_every` chunks) errors.
- `LearningRateControl`: the paper's warmup and plateau decays; logs the learning rate.
- `Progress`: whole-run progress and ETA on stdout.
- `HistoryCSV`: `history.csv` and `curves.png`.
- `Checkpointer`: verified checkpoints, written atomically, and resume from the newest sound one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import pathlib
import re
import time
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from keras_resnet import files, plots
from keras_resnet.config import TrainConfig
from keras_resnet.optimization import LearningRate

log = logging.getLogger(__name__)


def global_step(model: keras.Model) -> int:
    """Iterations the model's optimizer has run (a strategy-wrapped variable)."""
    return int(ops.convert_to_numpy(model.optimizer.iterations))


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
    ):
        super().__init__()
        self.evaluated, self.validation, self.test = model, validation, test
        self.total_steps, self.test_every = total_steps, max(int(test_every), 1)
        self.step = 0  # at the previous chunk end (or where the run resumed)

    def on_train_begin(self, logs=None):
        self.step = global_step(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not math.isfinite(logs.get("loss", 0.0)):
            return
        if self.validation is not None:
            results = self.evaluated.evaluate(self.validation, verbose=0, return_dict=True)
            logs.update({f"val_{k}": float(v) for k, v in results.items()})
        step, previous = global_step(self.model), self.step
        self.step = step
        period = self.test_every * (self.params.get("steps") or 1)  # Keras' steps per chunk
        due = step // period > previous // period or step >= self.total_steps
        if self.test is not None and due:
            results = self.evaluated.evaluate(self.test, verbose=0, return_dict=True)
            logs.update({f"test_{k}": float(v) for k, v in results.items()})


class LearningRateControl(keras.callbacks.Callback):
    """Warmup (lr 0.01 until the training error < 80%, section 4.2) and decay on plateau.

    Both act through `LearningRate.scale`; the state travels with the checkpoints. Puts the
    current learning rate into the logs as `lr`, and keeps the exact steps at which the rate
    jumped (milestones, end of warmup, plateau decays) for the history (`pop_changes`).
    """

    def __init__(self, cfg: TrainConfig, schedule: LearningRate, verbose: bool = True):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose
        self.warming = cfg.warmup
        self.warmup_scale = cfg.warmup_learning_rate / cfg.learning_rate
        self.warmup_max_steps = cfg.warmup_max_steps
        self.plateau = cfg.lr_schedule == "plateau"
        self.patience, self.decay = cfg.plateau_patience, cfg.lr_decay
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
                    print(
                        f"\nwarmup over at step {self.step} (running training error {error:.1%})", flush=True
                    )

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
                            print(f"\nplateau: learning rate x{self.decay} at step {self.step}", flush=True)
        if self.schedule.kind == "step":
            # Iteration m (0-based) is the first at the new rate, i.e. after m steps.
            self.changes += [m for m in self.schedule.milestones if self.logged_step < m <= self.step]
        self.logged_step = self.step
        logs["lr"] = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))


def duration(seconds: float) -> str:
    """`1h02m`, `12m05s`, `42s`."""
    seconds = max(int(round(seconds)), 0)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress(keras.callbacks.Callback):
    """Whole-run progress: global step, errors, training images/s and the ETA of the whole run.

    Prints one line per epoch; without a terminal (no progress bar) also every `every_s`. The ETA
    comes from this process's wall time per step, evaluations included; `cheap_steps` (n, c) says
    that the run's first n steps cost c of a later one (low-resolution epochs), so that the ETA
    of a run in those steps counts the dearer ones to come.
    """

    def __init__(
        self,
        total_steps: int,
        batch_size: int,
        every_s: float = 60.0,
        intra_epoch: bool = False,
        quiet: bool = False,
        cheap_steps: tuple[int, float] = (0, 1.0),
    ):
        super().__init__()
        self.quiet, self.cheap_steps = quiet, cheap_steps
        self.total, self.batch_size = total_steps, batch_size
        self.every_s, self.intra_epoch = every_s, intra_epoch
        self.step = self.start_step = 0
        self.epoch_steps, self.epoch_time = 0, 0.0
        self.train_time = 0.0  # seconds inside training steps, this process
        self.steady_steps, self.steady_time = 0, 0.0  # excluding the first steps (tracing)

    def on_train_begin(self, logs=None):
        self.step = self.start_step = global_step(self.model)
        self.began = self.last_print = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_steps, self.epoch_time = 0, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        dt = now - self.t0
        self.step += 1
        self.epoch_steps += 1
        self.epoch_time += dt
        self.train_time += dt
        if self.step - self.start_step > 5:
            self.steady_steps += 1
            self.steady_time += dt
        if self.intra_epoch and not self.quiet and now - self.last_print >= self.every_s:
            self.last_print = now
            loss = float(logs["loss"]) if logs and "loss" in logs else float("nan")
            print(
                f"{self._where()} loss {loss:.4f} {self.images_per_sec():.0f} img/s ETA {self.eta()}",
                flush=True,
            )

    def _where(self) -> str:
        return f"step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%)"

    def eta(self) -> str:
        done = self.step - self.start_step
        if not done:
            return "?"
        per_step = (time.perf_counter() - self.began) / self._cost(self.start_step, self.step)
        return duration(self._cost(self.step, self.total) * per_step)

    def _cost(self, first: int, end: int) -> float:
        """Steps first..end-1 in later steps' cost."""
        n, c = self.cheap_steps
        cheap = max(0, min(end, n) - first)
        return end - first - (1 - c) * cheap

    def images_per_sec(self) -> float:
        steps, secs = (
            (self.steady_steps, self.steady_time)
            if self.steady_steps
            else (self.epoch_steps, self.epoch_time)
        )
        return steps * self.batch_size / secs if secs else 0.0

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["step"] = self.step
        logs["images_per_sec"] = (
            self.epoch_steps * self.batch_size / self.epoch_time if self.epoch_time else 0.0
        )
        parts = [self._where()]
        for key in ("loss", "error", "val_loss", "val_error", "test_loss", "test_error"):
            if key in logs:
                parts.append(f"{key} {logs[key]:.4f}" if "loss" in key else f"{key} {logs[key]:.2%}")
        if "lr" in logs:
            parts.append(f"lr {logs['lr']:.4g}")
        parts.append(f"{logs['images_per_sec']:.0f} img/s ETA {self.eta()}")
        if not self.quiet:
            # Beside Keras' progress bar (a terminal), start a line of our own.
            print(("" if self.intra_epoch else "\n") + "  ".join(parts), flush=True)
        self.last_print = time.perf_counter()


class HistoryCSV(keras.callbacks.Callback):
    """One row per epoch in `history.csv` (and its plot `curves.png`), rewritten atomically.

    Its `epoch` column counts passes over the training data (`step / steps_per_epoch`, two
    decimals) when `steps_per_epoch` is given: Keras' epoch index restarts its count after a resume
    from the middle of an epoch, and is a --checkpoint_steps chunk rather than a pass. Rows past
    the step a run resumed from are dropped. `columns`, called at every epoch end, adds
    columns that are not metrics (so they stay out of Keras' logs, which TensorBoard plots). A
    plot that fails is reported once and never stops training.
    """

    def __init__(
        self,
        path: pathlib.Path,
        columns: Callable[[], dict[str, Any]] | None = None,
        steps_per_epoch: int | None = None,
    ):
        super().__init__()
        self.path = pathlib.Path(path)
        self.columns = columns
        self.steps_per_epoch = steps_per_epoch
        self.rows: list[dict] = []
        self.plot_failed = False

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
        try:
            plots.plot_history(self.path, self.path.with_name("curves.png"), title=self.model.name)
        except Exception as err:  # a figure is never worth a training run
            if not self.plot_failed:
                log.warning(
                    "Could not draw %s (%s: %s); training goes on.", "curves.png", type(err).__name__, err
                )
            self.plot_failed = True


# ----------------------------------------------------------------------------- checkpoints


_CKPT = re.compile(r"^ckpt-(\d+)\.json$")


class Checkpointer(keras.callbacks.Callback):
    """Checkpoints every epoch (--checkpoint_steps), on Ctrl-C/SIGTERM, and resumes from the newest sound one.

    A checkpoint of step N is `ckpt-N.weights.h5` (model and optimizer variables), with
    `ckpt-N.average.weights.h5` when weights are averaged, and the manifest `ckpt-N.json`: the
    size and SHA-256 of each file, and the callbacks' state. Each file is written under a
    temporary name and renamed, and is hashed from disk once written; the manifest comes last, so
    a checkpoint exists only once complete. `state.json` names the newest manifest (for humans
    and older readers); the previous checkpoint is kept. On resume, checkpoints are tried from the
    newest: one whose files are missing, truncated, altered or unloadable is skipped with a line
    saying why; `state.json` itself is not needed. A NaN loss stops training without saving, so
    the last good checkpoint survives. Non-chief workers save into a temporary directory (saving
    may involve collectives every worker must join) and restore from the chief's.
    """

    def __init__(
        self,
        directory: pathlib.Path,
        write_dir: pathlib.Path | None = None,
        stateful=(),
        average: keras.Model | None = None,
        verbose: bool = True,
    ):
        super().__init__()
        self.read_dir = pathlib.Path(directory)
        self.write_dir = pathlib.Path(write_dir or directory)
        self.stateful = list(stateful)
        self.average = average
        self.verbose = verbose
        self.epoch = 0
        self.restored_step = 0
        self.nan_step: int | None = None
        self.interrupted = False
        self.last_saved_step: int | None = None
        self.skipped: list[str] = []
        # Asked after every step: a stop request (Ctrl-C, SIGTERM) checkpoints, then stops.
        self.stop_requested: Callable[[], bool] = lambda: False

    # -- reading

    def state(self) -> dict | None:
        """The newest checkpoint's manifest by `state.json` (None if there is none, or it is unreadable)."""
        try:
            return json.loads((self.read_dir / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def candidates(self) -> list[dict]:
        """Manifests of the checkpoints present, newest first (older runs' `state.json` included)."""
        found = {}
        for path in self.read_dir.glob("ckpt-*.json"):
            if _CKPT.match(path.name):
                try:
                    manifest = json.loads(path.read_text())
                    found[int(manifest["step"])] = manifest
                except (OSError, ValueError, KeyError, TypeError) as err:
                    self._skip(f"{path.name} is unreadable ({type(err).__name__}); ignored")
        legacy = self.state()
        if legacy and "files" not in legacy and isinstance(legacy.get("step"), int):
            found.setdefault(legacy["step"], legacy)  # written before manifests existed: unverified
        elif (self.read_dir / "state.json").exists() and legacy is None and found:
            self._skip("state.json is unreadable; rebuilt from the checkpoint files present")
        return [found[s] for s in sorted(found, reverse=True)]

    def _skip(self, why: str) -> None:
        self.skipped.append(why)
        if self.verbose:
            print(f"checkpoints: {why}", flush=True)

    def _verify(self, manifest: dict) -> str | None:
        """Why the checkpoint cannot be used, or None."""
        names = [manifest.get("weights")] + ([manifest["average"]] if manifest.get("average") else [])
        if (self.average is not None) != bool(manifest.get("average")) and "files" in manifest:
            return "it was written with a different --ema_decay setting"
        for name in names:
            if not name or not (self.read_dir / name).is_file():
                return f"{name or 'its weights file'} is missing"
            recorded = manifest.get("files", {}).get(name)
            if recorded:
                size = (self.read_dir / name).stat().st_size
                if size != recorded["size"]:
                    return f"{name} has {size} bytes, {recorded['size']} were written (truncated or replaced)"
                if files.sha256(self.read_dir / name) != recorded["sha256"]:
                    return f"{name} does not match its recorded SHA-256 (damaged)"
        return None

    def restore(self, model: keras.Model) -> int:
        """Loads the newest sound checkpoint into `model` (compiled); returns the epoch to resume at.

        Raises:
            RuntimeError: checkpoints exist but none can be used (one line saying so).
        """
        candidates = self.candidates()
        if not candidates:
            if self.skipped:
                raise RuntimeError(f"no usable checkpoint in {self.read_dir}: {'; '.join(self.skipped)}")
            return 0
        # Built as they were when saved (under a distribution strategy Keras builds even the
        # evaluation-only optimizer of the average at its first evaluation), or Keras skips their
        # variables with a warning at every resume.
        for built in (model, self.average):
            if built is not None and built.optimizer is not None and not built.optimizer.built:
                built.optimizer.build(built.trainable_variables)
        for manifest in candidates:
            step = int(manifest["step"])
            reason = self._verify(manifest)
            if reason is None:
                loads = [(model, manifest["weights"])]
                if self.average is not None and manifest.get("average"):
                    loads.append((self.average, manifest["average"]))
                for target, name in loads:
                    try:
                        target.load_weights(self.read_dir / name)
                    except Exception as err:  # h5py raises OSError, Keras ValueError for a wrong layout
                        reason = f"{name} cannot be loaded ({type(err).__name__}: {str(err)[:120]})"
                        break
            if reason is None and global_step(model) != step:
                reason = f"{manifest['weights']} holds step {global_step(model)}, not {step}"
            if reason is not None:
                self._skip(f"skipping the checkpoint of step {step}: {reason}")
                continue
            for cb in self.stateful:
                cb.set_state(manifest.get("callbacks", {}).get(type(cb).__name__, {}))
            self.restored_step = self.last_saved_step = step
            return int(manifest["epoch"])
        raise RuntimeError(
            f"no usable checkpoint in {self.read_dir} ({'; '.join(self.skipped)}): move the folder away to "
            "start over, or restore it from a backup."
        )

    # -- writing

    def save(self, epoch: int) -> None:
        self.write_dir.mkdir(parents=True, exist_ok=True)
        step = global_step(self.model)
        manifest: dict[str, Any] = {"epoch": epoch, "step": step, "weights": f"ckpt-{step}.weights.h5"}
        written = [(manifest["weights"], self.model)]
        if self.average is not None:
            manifest["average"] = f"ckpt-{step}.average.weights.h5"
            written.append((manifest["average"], self.average))
        manifest["files"] = {}
        for name, source in written:
            with files.replacing(self.write_dir / name) as tmp:
                source.save_weights(tmp)
            path = self.write_dir / name
            manifest["files"][name] = {"size": path.stat().st_size, "sha256": files.sha256(path)}
        manifest["callbacks"] = {type(cb).__name__: cb.get_state() for cb in self.stateful}
        manifest["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        files.write_json(self.write_dir / f"ckpt-{step}.json", manifest)
        files.write_json(self.write_dir / "state.json", manifest)
        keep = {step, self.last_saved_step}
        for path in self.write_dir.glob("ckpt-*"):
            found = re.match(r"ckpt-(\d+)\.", path.name)
            if found and int(found.group(1)) not in keep:
                path.unlink(missing_ok=True)
        self.last_saved_step = step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs and not math.isfinite(float(logs["loss"])):
            self.nan_step = global_step(self.model)
            self.model.stop_training = True
            return
        if self.model.stop_training and not self.interrupted:
            return  # the run's last step (StopAtStep, called first): saved at the epoch's end as usual
        if self.interrupted or self.stop_requested():
            self.interrupted = True
            # Resuming restarts this epoch's count, so the epoch boundaries shift; steps stay exact.
            self.save(self.epoch)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_step is None and not self.interrupted:
            self.save(epoch + 1)


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
    tensorboard: keras.callbacks.TensorBoard
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
    evaluated: keras.Model,
    validation: tf.data.Dataset | None,
    test: tf.data.Dataset | None,
    average: WeightAverage | None = None,
    scratch_dir: pathlib.Path | None = None,
    verbose: bool = True,
    intra_epoch_log: bool = False,
    extra: tuple[keras.callbacks.Callback, ...] = (),
    steps_per_epoch: int | None = None,
) -> RunCallbacks:
    """The callbacks of a run of `cfg`; `evaluated` is the model the evaluations score.

    `steps_per_epoch` (one pass over the training data) numbers the history's epochs.

    Workers other than the chief pass a `scratch_dir` to write into (they still restore from
    --model_dir). `test` is None when the test set must not be seen (tuning trials).
    """
    model_dir = pathlib.Path(cfg.model_dir)
    out = pathlib.Path(scratch_dir or model_dir)
    lr = LearningRateControl(cfg, model.optimizer._learning_rate, verbose=verbose)
    return RunCallbacks(
        stop=StopAtStep(total_steps),
        average=average,
        evaluation=Evaluation(
            evaluated, validation, test if cfg.eval_test else None, total_steps, cfg.eval_test_every
        ),
        learning_rate=lr,
        progress=Progress(
            total_steps,
            cfg.batch_size,
            intra_epoch=intra_epoch_log,
            quiet=not verbose,
            cheap_steps=(
                cfg.low_res_epochs * (steps_per_epoch or 0),
                (cfg.low_res_size / model.input_shape[1]) ** 2 if cfg.low_res_size else 1.0,
            ),
        ),
        history=HistoryCSV(out / "history.csv", columns=lr.pop_changes, steps_per_epoch=steps_per_epoch),
        tensorboard=keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False, profile_batch=0),
        checkpointer=Checkpointer(
            model_dir / "checkpoints",
            out / "checkpoints",
            stateful=[lr],
            average=average.average if average else None,
            verbose=verbose,
        ),
        extra=tuple(extra),
    )
