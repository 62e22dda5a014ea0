"""The training procedure of He et al. (2015) on tf.distribute (TensorFlow-specific).

Composable pieces around one `TrainConfig`, used by `train.py` and by the tuning code:

    cfg = TrainConfig(model="resnet20", model_dir="/tmp/run", train_steps=64000)
    summary = run(cfg)

or piece by piece: `make_strategy(cfg)`, `load_data(cfg, strategy)`, `build_model(cfg, info)`,
`compile_model(model, cfg, steps_per_epoch)`, `make_callbacks(...)`.

Steps are iterations as the paper counts them (one global batch each). Keras "epochs" are
chunks of `--checkpoint_steps` iterations (default: one pass over the training set): each chunk
ends with validation/test evaluation, a history row and a checkpoint. The learning rate is a
function of the global iteration, so it is exact across resumes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from keras_resnet import counting, data, distribute, models, specs

SCHEDULES = ("step", "cosine", "plateau", "constant")
PRECISIONS = ("float32", "bfloat16")


class ConfigError(ValueError):
    """Bad flags or an unusable --model_dir; raised before any heavy work starts."""


class TrainingStopped(RuntimeError):
    """Training ended early (interrupted, or the loss diverged); the message says how to go on."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _field(default, help: str, choices: tuple[str, ...] | None = None, operational: bool = False):
    """A TrainConfig field; `operational` fields may change between runs sharing a --model_dir."""
    meta = {"help": help, "choices": choices, "operational": operational}
    if isinstance(default, list | tuple):
        return dataclasses.field(default_factory=lambda: tuple(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class TrainConfig:
    """Every training flag. `train.py` defines its absl flags from these fields."""

    model: str = _field("resnet20", "resnet<depth> or plain<depth>, e.g. resnet20, plain56, resnet50.")
    shortcut: str = _field("", "Shortcut option A, B or C; empty: the paper's default for the family.")
    family: str = _field("", "cifar or imagenet to override the family implied by the depth.")
    bottleneck_stride: str = _field("1x1", "Where a bottleneck block strides.", ("1x1", "3x3"))
    sync_bn: bool = _field(False, "Synchronized batch norm: statistics over the global batch.")
    fused_bn: bool = _field(
        True,
        "TensorFlow's fused batch-norm kernel in training: Keras' results, 1.4-1.65x faster on CPU.",
        operational=True,
    )
    dataset: str = _field("cifar10", "cifar10, imagenette or folder:<root>.")
    data_dir: str = _field(
        "",
        "TFDS data dir; default $KERAS_RESNET_DATA/tensorflow_datasets (../shared/data).",
        operational=True,
    )
    validation_split: bool = _field(False, "Hold out 5k of CIFAR's 50k training images (45k/5k).")
    image_size: int = _field(0, "Model input side; 0: the dataset's default.")
    color_augmentation: bool = _field(False, "Colour augmentation (imagenet recipe).")
    model_dir: str = _field("", "Where every output goes (checkpoints, history, model).", operational=True)
    batch_size: int = _field(128, "Global batch size, split across all replicas.")
    eval_batch_size: int = _field(0, "Evaluation batch size; 0: --batch_size.")
    train_steps: int = _field(0, "Training iterations; 0: use --epochs.")
    epochs: int = _field(0, "Passes over the training set, when --train_steps is 0.")
    checkpoint_steps: int = _field(0, "Evaluate, log and checkpoint every N steps; 0: every epoch.")
    learning_rate: float = _field(0.1, "Initial learning rate.")
    lr_schedule: str = _field("step", "Learning-rate schedule.", SCHEDULES)
    lr_milestones: tuple[int, ...] = _field((), "Step schedule iterations; empty: 50% and 75% of the run.")
    lr_decay: float = _field(0.1, "Factor at each milestone or plateau.")
    plateau_patience: int = _field(3, "plateau: evaluations without improvement before decaying.")
    momentum: float = _field(0.9, "SGD momentum.")
    weight_decay: float = _field(1e-4, "Weight decay (L2 on kernels).")
    warmup: bool = _field(False, "Paper's ResNet-110 trick: lr 0.01 until training error < 80%.")
    warmup_learning_rate: float = _field(0.01, "Learning rate during --warmup.")
    warmup_max_steps: int = _field(400, "Warmup ends after this many steps even if error stays high.")
    distribution: str = _field("auto", "tf.distribute strategy.", distribute.DISTRIBUTIONS, True)
    cpu_devices: int = _field(0, "Split the CPU into N logical devices (N replicas).", operational=True)
    precision: str = _field("float32", "float32, or bfloat16 mixed precision.", PRECISIONS)
    seed: int = _field(0, "Random seed (weights, shuffling, augmentation).")
    deterministic: bool = _field(False, "Deterministic ops and input order (slower).")
    eval_test: bool = _field(
        True, "Evaluate the test set at every checkpoint (the paper's curves).", operational=True
    )
    export_dir: str = _field("", "Also export the final model for TF Serving here.", operational=True)
    allow_config_change: bool = _field(
        False, "Continue a --model_dir whose saved configuration differs.", operational=True
    )

    def __post_init__(self):
        self.lr_milestones = tuple(int(m) for m in self.lr_milestones)
        self.shortcut = self.shortcut.strip().upper()

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_flags(self) -> str:
        """The configuration as an absl flag file (`train.py --flagfile=...`)."""
        lines = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                lines.append(f"--{'' if value else 'no'}{f.name}")
            elif isinstance(value, tuple):
                lines.append(f"--{f.name}={','.join(map(str, value))}")
            else:
                lines.append(f"--{f.name}={value}")
        return "\n".join(lines) + "\n"

    def training_fields(self) -> dict[str, Any]:
        """The fields that define the run (a --model_dir may not silently change them)."""
        ops_fields = {f.name for f in dataclasses.fields(self) if f.metadata.get("operational")}
        return {k: v for k, v in self.to_json().items() if k not in ops_fields}

    @property
    def spec(self) -> specs.ModelSpec:
        return specs.get_spec(self.model, self.family or None)

    @property
    def resolved_shortcut(self) -> str:
        return self.shortcut or specs.DEFAULT_SHORTCUT[self.spec.family]


def check_config(cfg: TrainConfig) -> None:
    """Raises ConfigError naming the flag and the fix for every cheap-to-detect mistake."""

    def fail(msg: str):
        raise ConfigError(msg)

    try:
        specs.get_spec(cfg.model, cfg.family or None)
    except ValueError as err:
        fail(f"--model: {err}")
    if cfg.shortcut:
        try:
            specs.check_shortcut(cfg.shortcut)
        except ValueError as err:
            fail(f"--shortcut: {err}")
    if not cfg.model_dir:
        fail("--model_dir is required: the directory for checkpoints, history and the final model.")
    if cfg.batch_size <= 0:
        fail(f"--batch_size must be a positive integer, got {cfg.batch_size}.")
    if cfg.eval_batch_size < 0:
        fail(f"--eval_batch_size must be >= 0, got {cfg.eval_batch_size}.")
    if cfg.train_steps < 0 or cfg.epochs < 0:
        fail("--train_steps and --epochs must be >= 0.")
    if cfg.train_steps and cfg.epochs:
        fail(f"Give --train_steps ({cfg.train_steps}) or --epochs ({cfg.epochs}), not both.")
    if not cfg.train_steps and not cfg.epochs:
        fail("Give the length of the run: --train_steps (iterations, e.g. 64000) or --epochs.")
    if cfg.checkpoint_steps < 0:
        fail(f"--checkpoint_steps must be >= 0, got {cfg.checkpoint_steps}.")
    if cfg.learning_rate <= 0 or cfg.warmup_learning_rate <= 0:
        fail("--learning_rate and --warmup_learning_rate must be > 0.")
    if not 0 < cfg.lr_decay <= 1:
        fail(f"--lr_decay must be in (0, 1], got {cfg.lr_decay}.")
    if cfg.weight_decay < 0 or not 0 <= cfg.momentum < 1:
        fail("--weight_decay must be >= 0 and --momentum in [0, 1).")
    if any(m <= 0 for m in cfg.lr_milestones) or list(cfg.lr_milestones) != sorted(cfg.lr_milestones):
        fail(f"--lr_milestones must be increasing positive iterations, got {list(cfg.lr_milestones)}.")
    for name, choices in (
        ("lr_schedule", SCHEDULES),
        ("precision", PRECISIONS),
        ("distribution", distribute.DISTRIBUTIONS),
        ("bottleneck_stride", ("1x1", "3x3")),
    ):
        if getattr(cfg, name) not in choices:
            fail(f"--{name}={getattr(cfg, name)!r}: expected one of {', '.join(choices)}.")
    if cfg.family and cfg.family not in specs.FAMILIES:
        fail(f"--family={cfg.family!r}: expected one of {', '.join(specs.FAMILIES)}.")


def check_model_dir(cfg: TrainConfig) -> bool:
    """Checks --model_dir against the configuration saved there; True if that run already finished."""
    path = pathlib.Path(cfg.model_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--model_dir={cfg.model_dir} exists and is not a directory.")
    saved_path = path / "config.json"
    if not saved_path.exists():
        return False
    try:
        saved = TrainConfig.from_json(json.loads(saved_path.read_text()))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--model_dir: cannot read {saved_path} ({err}); use a new --model_dir.") from None
    old, new = saved.training_fields(), cfg.training_fields()
    diff = [f"--{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    if diff and not cfg.allow_config_change:
        raise ConfigError(
            f"--model_dir={cfg.model_dir} holds a run with a different configuration ({'; '.join(diff)}): "
            "use a new --model_dir, or pass --allow_config_change to continue it."
        )
    return not diff and (path / "summary.json").exists()


def run_length(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int, int]:
    """(total_steps, steps per Keras epoch, Keras epochs) of a run over `steps_per_epoch`-step passes.

    Keras epochs are chunks of --checkpoint_steps iterations (default: one pass over the data);
    the last one is cut short by `StopAtStep` so the run ends at exactly `total_steps`.
    """
    total_steps = cfg.train_steps or cfg.epochs * steps_per_epoch
    chunk = cfg.checkpoint_steps or steps_per_epoch
    return total_steps, chunk, math.ceil(total_steps / chunk)


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Writes `text` to `path` through a temporary name, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ----------------------------------------------------------------------------- pieces


def make_strategy(cfg: TrainConfig) -> tf.distribute.Strategy:
    """The strategy for --distribution (after splitting the CPU for --cpu_devices)."""
    distribute.configure_cpu_devices(cfg.cpu_devices)
    try:
        strategy = distribute.make_strategy(cfg.distribution)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ConfigError(
            f"--batch_size={cfg.batch_size} does not divide across {replicas} replicas: use a multiple of "
            f"{replicas} (e.g. {max(replicas, cfg.batch_size // replicas * replicas)})."
        )
    return strategy


def load_data(cfg: TrainConfig, strategy: tf.distribute.Strategy) -> data.Datasets:
    """The datasets of --dataset, sharded for this worker: infinite global batches, validation, test."""
    try:
        ds = data.load(
            cfg.dataset,
            data_dir=cfg.data_dir or None,
            batch_size=cfg.batch_size,
            eval_batch_size=cfg.eval_batch_size or None,
            validation_split=cfg.validation_split,
            seed=cfg.seed,
            deterministic=cfg.deterministic,
            image_size=cfg.image_size or None,
            color_augmentation=cfg.color_augmentation,
            # Each worker reads its own shard; batches stay global (tf.distribute splits them).
            num_workers=distribute.num_workers(strategy),
            worker_index=distribute.worker_index(strategy),
            verbose=distribute.is_chief(strategy),
        )
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(
            f"--dataset={cfg.dataset} --data_dir={cfg.data_dir or '(default)'}: {err}"
        ) from None
    return ds


def build_model(cfg: TrainConfig, info: data.DataInfo) -> keras.Model:
    """The network of --model for `info`'s classes and image size (call inside strategy.scope())."""
    return models.build_model(
        cfg.model,
        shortcut=cfg.resolved_shortcut,
        num_classes=info.num_classes,
        input_shape=(info.image_size, info.image_size, 3),
        weight_decay=cfg.weight_decay,
        family=cfg.family or None,
        bottleneck_stride=cfg.bottleneck_stride,
        sync_bn=cfg.sync_bn,
        fused_bn=cfg.fused_bn,
    )


@keras.saving.register_keras_serializable(package="keras_resnet")
class TopKError(keras.metrics.SparseTopKCategoricalAccuracy):
    """Top-k error (1 - top-k accuracy), the paper's figure of merit."""

    def __init__(self, k: int = 1, name: str = "error", **kwargs):
        super().__init__(k=k, name=name, **kwargs)

    def result(self):
        return 1.0 - super().result()


@keras.saving.register_keras_serializable(package="keras_resnet")
class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate as a function of the iteration, times a `scale` that callbacks adjust.

    step: `learning_rate * decay ** (milestones passed)`; cosine: half-cosine to 0 over
    `total_steps`; plateau and constant: `learning_rate` (plateau decays through `scale`).
    `scale` carries the warmup factor and the plateau decays.
    """

    def __init__(self, kind: str, learning_rate: float, total_steps: int, milestones=(), decay: float = 0.1):
        self.kind, self.learning_rate, self.total_steps = kind, float(learning_rate), int(total_steps)
        self.milestones, self.decay = tuple(int(m) for m in milestones), float(decay)
        self.scale = keras.Variable(1.0, dtype="float32", trainable=False, name="lr_scale")

    def base(self, step):
        step = ops.cast(step, "float32")
        if self.kind == "step" and self.milestones:
            passed = ops.sum(ops.cast(step >= ops.convert_to_tensor(self.milestones, "float32"), "float32"))
            return self.learning_rate * ops.power(self.decay, passed)
        if self.kind == "cosine":
            progress = ops.minimum(step / max(self.total_steps, 1), 1.0)
            return 0.5 * self.learning_rate * (1.0 + ops.cos(math.pi * progress))
        return ops.convert_to_tensor(self.learning_rate, "float32")

    def __call__(self, step):
        return self.base(step) * self.scale

    def get_config(self):
        return {
            "kind": self.kind,
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "milestones": list(self.milestones),
            "decay": self.decay,
        }


def global_step(model: keras.Model) -> int:
    """Iterations the model's optimizer has run (a strategy-wrapped variable)."""
    return int(ops.convert_to_numpy(model.optimizer.iterations))


def milestones(cfg: TrainConfig, total_steps: int) -> tuple[int, ...]:
    """--lr_milestones, or the paper's 32k/48k of 64k scaled to the run: 50% and 75%."""
    return cfg.lr_milestones or (total_steps // 2, total_steps * 3 // 4)


def compile_model(model: keras.Model, cfg: TrainConfig, steps_per_epoch: int, total_steps: int | None = None):
    """SGD with momentum, the learning-rate schedule by iterations, cross-entropy and top-1 error.

    Call inside strategy.scope(). `total_steps` defaults to the run's length from `cfg`.
    """
    total = total_steps or cfg.train_steps or cfg.epochs * steps_per_epoch
    schedule = LearningRate(cfg.lr_schedule, cfg.learning_rate, total, milestones(cfg, total), cfg.lr_decay)
    metrics = [TopKError(1, name="error")]
    if model.output_shape[-1] > 10:
        metrics.append(TopKError(5, name="top5_error"))
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=cfg.momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=metrics,
    )
    return model


# ----------------------------------------------------------------------------- callbacks


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


class TestEvaluation(keras.callbacks.Callback):
    """Adds `test_loss`, `test_error` (...) to each epoch's logs, as the paper's curves show them."""

    def __init__(self, dataset: tf.data.Dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not math.isfinite(logs.get("loss", 0.0)):
            return
        results = self.model.evaluate(self.dataset, verbose=0, return_dict=True)
        logs.update({f"test_{k}": float(v) for k, v in results.items()})


class Progress(keras.callbacks.Callback):
    """Whole-run progress: global step, training images/s (evaluation excluded) and ETA.

    Prints one line per epoch; without a terminal (no progress bar) also every `every_s`.
    """

    def __init__(
        self,
        total_steps: int,
        batch_size: int,
        every_s: float = 60.0,
        intra_epoch: bool = False,
        quiet: bool = False,
    ):
        super().__init__()
        self.quiet = quiet
        self.total, self.batch_size = total_steps, batch_size
        self.every_s, self.intra_epoch = every_s, intra_epoch
        self.step = 0
        self.train_time = 0.0  # seconds inside training steps, this process
        self.steady_steps, self.steady_time = 0, 0.0  # excluding the first steps (tracing)

    def on_train_begin(self, logs=None):
        self.step = self.start_step = global_step(self.model)
        self.last_print = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_steps, self.epoch_time = 0, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        dt = time.perf_counter() - self.t0
        self.step += 1
        self.epoch_steps += 1
        self.epoch_time += dt
        self.train_time += dt
        if self.step - self.start_step > 5:
            self.steady_steps += 1
            self.steady_time += dt
        now = time.perf_counter()
        if self.intra_epoch and not self.quiet and now - self.last_print >= self.every_s:
            self.last_print = now
            loss = float(logs["loss"]) if logs and "loss" in logs else float("nan")
            print(
                f"step {self.step}/{self.total} loss {loss:.4f} {self._rate():.0f} img/s ETA {self._eta()}",
                flush=True,
            )

    def _rate(self) -> float:
        steps, secs = (
            (self.steady_steps, self.steady_time)
            if self.steady_steps
            else (self.epoch_steps, self.epoch_time)
        )
        return steps * self.batch_size / secs if secs else 0.0

    def _eta(self) -> str:
        rate = self._rate()
        seconds = (self.total - self.step) * self.batch_size / rate if rate else 0.0
        return (
            time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 3600:.0f}h"
        )

    def images_per_sec(self) -> float:
        return self.steady_steps * self.batch_size / self.steady_time if self.steady_time else 0.0

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["step"] = self.step
        logs["images_per_sec"] = (
            self.epoch_steps * self.batch_size / self.epoch_time if self.epoch_time else 0.0
        )
        parts = [f"step {self.step}/{self.total}"]
        for key in ("loss", "error", "val_loss", "val_error", "test_loss", "test_error"):
            if key in logs:
                parts.append(f"{key} {logs[key]:.4f}" if "loss" in key else f"{key} {logs[key]:.2%}")
        if "lr" in logs:
            parts.append(f"lr {logs['lr']:.4g}")
        parts.append(f"{logs['images_per_sec']:.0f} img/s ETA {self._eta()}")
        if not self.quiet:
            # Beside Keras' progress bar (a terminal), start a line of our own.
            print(("" if self.intra_epoch else "\n") + "  ".join(parts), flush=True)
        self.last_print = time.perf_counter()


class HistoryCSV(keras.callbacks.Callback):
    """One row per epoch in `history.csv` (and its plot `curves.png`), rewritten atomically.

    Rows past the step a run resumed from are dropped. `columns`, called at every epoch end, adds
    columns that are not metrics (so they stay out of Keras' logs, which TensorBoard plots).
    """

    def __init__(self, path: pathlib.Path, columns: Callable[[], dict[str, Any]] | None = None):
        super().__init__()
        self.path = pathlib.Path(path)
        self.columns = columns
        self.rows: list[dict] = []

    def on_train_begin(self, logs=None):
        step = global_step(self.model)
        if self.path.exists():
            with self.path.open() as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
            if self.rows and "lr" in self.rows[0] and "lr_changes" not in self.rows[0]:
                # A file from before the lr_changes column: carry its inferred changes over, or the
                # rewritten file (with the column) would lose them.
                inferred = set(lr_change_steps(self.rows))
                for prev, row in zip([None, *self.rows], self.rows, strict=False):
                    row["lr_changes"] = prev["step"] if prev and int(prev["step"]) in inferred else ""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        extra = self.columns() if self.columns else {}
        self.rows.append({"epoch": epoch + 1, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **logs, **extra})
        keys: list[str] = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)
        plot_history(self.path, self.path.with_name("curves.png"), title=self.model.name)


def lr_change_steps(rows: list[dict[str, str]]) -> list[int]:
    """The steps after which the learning rate jumped, from history rows.

    Exact where the run logged them (`lr_changes`); in older files, the last logged step before
    each jump of 1.5x or more (so a cosine schedule's gradual decay is not marked).
    """
    if rows and "lr_changes" in rows[0]:
        return [int(s) for r in rows for s in (r.get("lr_changes") or "").split()]
    logged = [(int(r["step"]), float(r["lr"])) for r in rows if r.get("lr") not in (None, "")]
    return [
        step
        for (step, prev), (_, cur) in zip(logged, logged[1:], strict=False)
        if min(prev, cur) > 0 and max(prev, cur) >= 1.5 * min(prev, cur)
    ]


def plot_history(history_csv: str | pathlib.Path, png: str | pathlib.Path, title: str = "") -> pathlib.Path:
    """Top-1 error (train, validation, test) and loss against iterations, as the paper's Fig. 6."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history_csv) as f:
        rows = list(csv.DictReader(f))

    def column(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for key, label, style in (
        ("error", "train", "--"),
        ("val_error", "validation", "-."),
        ("test_error", "test", "-"),
    ):
        steps, values = column(key)
        if steps:
            ax_err.plot(steps, [100 * v for v in values], style, label=label)
        steps, values = column(key.replace("error", "loss"))
        if steps:
            ax_loss.plot(steps, values, style, label=label)
    for step in lr_change_steps(rows):
        for ax in (ax_err, ax_loss):
            ax.axvline(step, color="grey", lw=0.6, ls=":")
    ax_err.set(xlabel="iterations", ylabel="top-1 error (%)", title=title or "error")
    ax_loss.set(xlabel="iterations", ylabel="loss", title="loss (incl. weight decay for train)")
    for ax in (ax_err, ax_loss):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    png = pathlib.Path(png)
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png)
    return png


class Checkpointer(keras.callbacks.Callback):
    """Checkpoints every epoch (--checkpoint_steps), on Ctrl-C/SIGTERM, and resumes.

    Keras' `BackupAndRestore` writes its weights and metadata in place (a kill while saving
    leaves a corrupt backup) and keeps no state beside the weights; here each checkpoint is a new
    `ckpt-<step>.weights.h5` (model and optimizer variables) committed by atomically replacing
    `state.json`, and the previous one is kept. A NaN loss stops training without saving, so the
    last good checkpoint survives. Non-chief workers save into a temporary directory (saving may
    involve collectives every worker must join) and restore from the chief's.
    """

    def __init__(self, directory: pathlib.Path, write_dir: pathlib.Path | None = None, stateful=()):
        super().__init__()
        self.read_dir = pathlib.Path(directory)
        self.write_dir = pathlib.Path(write_dir or directory)
        self.stateful = list(stateful)
        self.epoch = self.step = 0
        self.restored_step = 0
        self.nan_step: int | None = None
        self.interrupted = False
        self.last_saved_step: int | None = None

    def state(self) -> dict | None:
        path = self.read_dir / "state.json"
        return json.loads(path.read_text()) if path.exists() else None

    def restore(self, model: keras.Model) -> int:
        """Loads the latest checkpoint into `model` (compiled); returns the epoch to resume at."""
        state = self.state()
        if state is None:
            return 0
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.read_dir / state["weights"])
        for cb in self.stateful:
            cb.set_state(state.get("callbacks", {}).get(type(cb).__name__, {}))
        self.restored_step = self.last_saved_step = global_step(model)
        if self.restored_step != state["step"]:
            raise RuntimeError(
                f"{self.read_dir}: checkpoint of step {state['step']} holds step {self.restored_step}."
            )
        return int(state["epoch"])

    def save(self, epoch: int) -> None:
        self.write_dir.mkdir(parents=True, exist_ok=True)
        step = global_step(self.model)
        name = f"ckpt-{step}.weights.h5"
        self.model.save_weights(self.write_dir / name)
        state = {
            "epoch": epoch,
            "step": step,
            "weights": name,
            "callbacks": {type(cb).__name__: cb.get_state() for cb in self.stateful},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_text(self.write_dir / "state.json", json.dumps(state, indent=1))
        previous = self.last_saved_step
        for path in self.write_dir.glob("ckpt-*.weights.h5"):
            if path.name not in (name, f"ckpt-{previous}.weights.h5"):
                path.unlink(missing_ok=True)
        self.last_saved_step = step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs and not math.isfinite(float(logs["loss"])):
            self.nan_step = global_step(self.model)
            self.model.stop_training = True
            return
        if self.interrupted:
            # Resuming restarts this epoch's count, so the epoch boundaries shift; steps stay exact.
            self.save(self.epoch)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_step is None and not self.interrupted:
            self.save(epoch + 1)


class StopAtStep(keras.callbacks.Callback):
    """Ends training at exactly `total_steps` global iterations, whatever the epoch boundaries."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if global_step(self.model) >= self.total_steps:
            self.model.stop_training = True


def make_callbacks(
    cfg: TrainConfig,
    model: keras.Model,
    datasets: data.Datasets,
    total_steps: int,
    *,
    scratch_dir: pathlib.Path | None = None,
    verbose: bool = True,
    intra_epoch_log: bool = False,
) -> list[keras.callbacks.Callback]:
    """The training callbacks in the order they must run; the `Checkpointer` is the last one.

    Order matters: the learning-rate control and test evaluation fill the logs that history,
    TensorBoard and the progress line record; the checkpoint is written after them. Workers
    other than the chief pass a `scratch_dir` to write into (they still restore from --model_dir).
    """
    model_dir = pathlib.Path(cfg.model_dir)
    out = pathlib.Path(scratch_dir or model_dir)
    lr = LearningRateControl(cfg, model.optimizer._learning_rate, verbose=verbose)
    return [
        lr,
        StopAtStep(total_steps),
        *([TestEvaluation(datasets.test)] if cfg.eval_test else []),
        Progress(total_steps, cfg.batch_size, intra_epoch=intra_epoch_log, quiet=not verbose),
        HistoryCSV(out / "history.csv", columns=lr.pop_changes),
        keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False, profile_batch=0),
        Checkpointer(model_dir / "checkpoints", out / "checkpoints", stateful=[lr]),
    ]


# ----------------------------------------------------------------------------- run


def _save_model(model: keras.Model, path: pathlib.Path) -> None:
    tmp = path.with_name(path.stem + ".partial.keras")
    model.save(tmp)
    tmp.replace(path)


def _work_around_keras_multi_worker(model: keras.Model, dataset: tf.data.Dataset) -> None:
    """Makes Keras 3 `fit`/`evaluate` work under MultiWorkerMirroredStrategy (Keras 3.15, TF 2.21).

    Two bugs (tensorflow/tensorflow#72388): every fit/evaluate first builds the compiled metrics
    from a batch it averages across replicas with `strategy.reduce`, which fails on a PerReplica
    batch; then each step averages the scalar logs with `strategy.reduce("MEAN", v, axis=0)`,
    which fails on scalars ("Invalid reduction dimension 0"). Build once from a local batch (same
    shapes), and average the logs across workers with axis=None.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    model._symbolic_build(data_batch=next(iter(dataset.take(1))))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    original = tf_trainer.reduce_per_replica
    if getattr(original, "_keras_resnet_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._keras_resnet_patch = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def _install_interrupt_handler(checkpointer: Checkpointer):
    """First Ctrl-C/SIGTERM: checkpoint after the current step and stop; a second one kills."""
    if sys.platform == "win32" or not hasattr(signal, "SIGTERM"):
        return lambda: None
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        print(f"\n{signal.Signals(signum).name}: checkpointing after this step, then stopping...", flush=True)
        checkpointer.interrupted = True
        for s, h in previous.items():
            signal.signal(s, h)

    for s in previous:
        signal.signal(s, handler)

    def restore():
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


def run(cfg: TrainConfig, *, verbose: int | str = "auto") -> dict[str, Any]:
    """Trains (or resumes) the run `cfg` describes; returns the summary also written to summary.json.

    Raises:
        ConfigError: bad flags, or a --model_dir holding a different run (nothing was started).
        TrainingStopped: interrupted (checkpoint written) or diverged (last good checkpoint kept).
    """
    check_config(cfg)
    model_dir = pathlib.Path(cfg.model_dir)
    if check_model_dir(cfg):
        summary = json.loads((model_dir / "summary.json").read_text())
        print(
            f"{cfg.model_dir} holds a finished run of this configuration (test error "
            f"{summary['test_error']:.2%}); nothing to do.",
            flush=True,
        )
        return summary
    start = time.time()
    strategy = make_strategy(cfg)
    chief = distribute.is_chief(strategy)
    # Saving may involve collectives every worker must join, so the other workers write too: into
    # a scratch directory that goes away at the end.
    scratch = None if chief else pathlib.Path(tempfile.mkdtemp(prefix="keras_resnet_worker_"))
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 0
    if cfg.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(cfg.seed)
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        # A resumed run must not replay the batches (and augmentations) it started with.
        saved = Checkpointer(model_dir / "checkpoints").state()
        data_cfg = dataclasses.replace(cfg, seed=cfg.seed + saved["step"]) if saved else cfg
        datasets = load_data(data_cfg, strategy)
        info = datasets.info
        total_steps, steps_per_epoch, epochs = run_length(cfg, datasets.steps_per_epoch)
        if chief:
            model_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(model_dir / "config.json", json.dumps(cfg.to_json(), indent=1))
            atomic_write_text(model_dir / "flags.cfg", cfg.to_flags())
            info.save(model_dir)
        with strategy.scope():
            model = compile_model(build_model(cfg, info), cfg, datasets.steps_per_epoch, total_steps)
        counts = counting.count(model)
        callbacks = make_callbacks(
            cfg, model, datasets, total_steps, scratch_dir=scratch, verbose=chief, intra_epoch_log=not verbose
        )
        checkpointer, progress, history_csv = (
            next(cb for cb in callbacks if isinstance(cb, kind))
            for kind in (Checkpointer, Progress, HistoryCSV)
        )
        with strategy.scope():  # restoring may build the optimizer's variables
            initial_epoch = checkpointer.restore(model)
            if distribute.is_multi_worker(strategy):
                _work_around_keras_multi_worker(model, datasets.test)
        if chief:
            resumed = (
                f"resuming at step {checkpointer.restored_step}" if checkpointer.restored_step else "starting"
            )
            print(
                f"{model.name}: {counts.params:,} parameters, {counts.macs / 1e6:,.1f}M multiply-adds; "
                f"{strategy.num_replicas_in_sync} replica(s) x {distribute.num_workers(strategy)} worker(s); "
                f"{total_steps} steps of {cfg.batch_size} ({steps_per_epoch} per epoch); {resumed}.",
                flush=True,
            )
        restore_signals = _install_interrupt_handler(checkpointer)
        try:
            model.fit(
                datasets.train,
                epochs=epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch,
                validation_data=datasets.validation,
                shuffle=False,  # the dataset shuffles itself
                callbacks=callbacks,
                verbose=verbose if chief else 0,
            )
        finally:
            restore_signals()
        step = global_step(model)
        if checkpointer.nan_step is not None:
            kept = (
                f"the last good checkpoint (step {checkpointer.last_saved_step}) is kept in "
                f"{checkpointer.read_dir}"
                if checkpointer.last_saved_step is not None
                else "no checkpoint was written yet"
            )
            raise TrainingStopped(
                f"loss became NaN at step {checkpointer.nan_step}; {kept}. Lower --learning_rate or use "
                "--warmup, then run again with --allow_config_change.",
                exit_code=3,
            )
        if checkpointer.interrupted:
            raise TrainingStopped(
                f"interrupted at step {step}/{total_steps}; checkpoint saved in {checkpointer.read_dir}. "
                "Run the same command again to resume.",
                exit_code=130,
            )
        test = model.evaluate(datasets.test, verbose=0, return_dict=True)
        history = history_csv.rows
        last = history[-1] if history else {}
        summary = {
            "model": model.name,
            "dataset": info.name,
            "shortcut": cfg.resolved_shortcut if cfg.spec.residual else None,
            "test_error": float(test["error"]),
            "test_loss": float(test["loss"]),
            **({"test_top5_error": float(test["top5_error"])} if "top5_error" in test else {}),
            "val_error": float(last["val_error"]) if "val_error" in last else None,
            "train_error": float(last["error"]) if "error" in last else None,
            "params": counts.params,
            "macs": counts.macs,
            "steps": step,
            "total_steps": total_steps,
            "batch_size": cfg.batch_size,
            "epochs": step * cfg.batch_size / info.train_examples,
            "wall_time_s": time.time() - start,  # this invocation (a resumed run counts from its restart)
            "train_time_s": progress.train_time,
            "images_per_sec": progress.images_per_sec(),
            "resumed_from_step": checkpointer.restored_step,
            "replicas": strategy.num_replicas_in_sync,
            "workers": distribute.num_workers(strategy),
            "precision": cfg.precision,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        }
        _save_model(model, (scratch or model_dir) / "model.keras")
        if cfg.export_dir and chief:
            from keras_resnet import serving  # the TF Serving code is only needed here

            summary["export_path"] = str(serving.export(model, info, cfg.export_dir))
            print(f"exported to {summary['export_path']}", flush=True)
        if chief:
            # Written last: its presence marks a finished run.
            atomic_write_text(model_dir / "summary.json", json.dumps(summary, indent=1))
            print(
                f"done: test error {summary['test_error']:.2%} after {step} steps, "
                f"{summary['images_per_sec']:.0f} img/s; outputs in {model_dir}",
                flush=True,
            )
        return summary
    finally:
        keras.mixed_precision.set_global_policy("float32")
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


__all__ = [
    "ConfigError",
    "TrainConfig",
    "TrainingStopped",
    "build_model",
    "check_config",
    "compile_model",
    "load_data",
    "make_callbacks",
    "make_strategy",
    "run",
]
