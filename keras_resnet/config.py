"""The configuration of a training run: `TrainConfig`, its checks, and the run's length.

One dataclass holds every flag; `train.py` defines its absl flags from its fields, the tuner
replaces a few fields per trial, and `reproduce` writes one per experiment run. Configuration
flows one way: from here into `training.run`, which never changes it. Pure Python (no
TensorFlow), so that bad flags are refused before TensorFlow starts.

The defaults are the paper's CIFAR-10 procedure (section 4.2): batch 128, SGD with momentum 0.9,
weight decay 1e-4, learning rate 0.1 divided by 10 at 50% and 75% of the run. Every lever of the
fast recipe (`configs/cifar10_resnet20_fast.cfg`) is off by default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

from keras_resnet import specs

SCHEDULES = ("step", "cosine", "linear", "plateau", "constant")
PRECISIONS = ("float32", "bfloat16", "auto")
DISTRIBUTIONS = ("auto", "mirrored", "multi_worker", "one_device")
FLIPS = ("", "random", "alternating", "none")
TTA = ("none", "flip", "flip_translate")
PADDINGS = ("symmetric", "same")


class ConfigError(ValueError):
    """Bad flags or an unusable output location; raised before any heavy work starts."""


def _field(default, help: str, choices: tuple[str, ...] | None = None, operational: bool = False):
    """A TrainConfig field; `operational` fields may change between runs sharing a --model_dir."""
    meta = {"help": help, "choices": choices, "operational": operational}
    if isinstance(default, list | tuple):
        return dataclasses.field(default_factory=lambda: tuple(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class TrainConfig:
    """Every training flag. `train.py` defines its absl flags from these fields."""

    # The network (Table 1, section 4.2).
    model: str = _field("resnet20", "resnet<depth> or plain<depth>, e.g. resnet20, plain56, resnet50.")
    shortcut: str = _field("", "Shortcut option A, B or C; empty: the paper's default for the family.")
    family: str = _field("", "cifar or imagenet to override the family implied by the depth.")
    bottleneck_stride: str = _field("1x1", "Where a bottleneck block strides.", ("1x1", "3x3"))
    zero_init_residual: bool = _field(
        False, "Start each residual block's last BN scale at 0 (not the paper)."
    )
    padding: str = _field(
        "symmetric",
        "Strided 3x3/7x7 convolutions and the max pool: symmetric as the paper's nets, or same "
        "(TensorFlow's bottom/right padding, which runs made before this flag used).",
        PADDINGS,
    )
    sync_bn: bool = _field(False, "Synchronized batch norm: statistics over the global batch.")
    fused_bn: bool = _field(
        True, "TensorFlow's fused batch-norm kernel in training (Keras' results, faster).", operational=True
    )
    # The data.
    dataset: str = _field("cifar10", "cifar10, cifar100, imagenette, imagenet2012, digits or folder:<root>.")
    data_dir: str = _field(
        "",
        "TFDS data dir; default $KERAS_RESNET_DATA/tensorflow_datasets if set, else TFDS's own "
        "($TFDS_DATA_DIR or ~/tensorflow_datasets).",
        operational=True,
    )
    download: bool = _field(
        True, "Download and prepare a missing TFDS dataset (--nodownload: fail instead).", operational=True
    )
    validation_split: bool = _field(False, "Hold out 10% of the training images (CIFAR: 45k/5k).")
    image_size: int = _field(0, "Model input side; 0: the dataset's default.")
    color_augmentation: bool = _field(False, "Colour augmentation (imagenet recipe).")
    flip: str = _field("", "Horizontal flips; empty: random, or none for digits.", FLIPS)
    translate: int = _field(4, "cifar recipe: random translation by up to N pixels (the paper: 4).")
    cutout: int = _field(0, "cifar recipe: zero a random N x N square of each image; 0: off.")
    low_res_size: int = _field(
        0,
        "cifar recipe: train the first --low_res_epochs on images resized to N px (fewer "
        "multiply-adds per image, the same net); 0: off.",
    )
    low_res_epochs: int = _field(0, "How many epochs --low_res_size applies to, from the start.")
    skip_corrupt: bool = _field(
        False, "Image folders: leave corrupt or unreadable files out (with a warning) instead of stopping."
    )
    # Outputs.
    model_dir: str = _field("", "Where every output goes (checkpoints, history, model).", operational=True)
    export_dir: str = _field("", "Also export the final model for TF Serving here.", operational=True)
    # The optimisation.
    batch_size: int = _field(128, "Global batch size, split across all replicas.")
    eval_batch_size: int = _field(0, "Evaluation batch size; 0: --batch_size.", operational=True)
    train_steps: int = _field(0, "Training iterations; 0: use --epochs.")
    epochs: int = _field(0, "Passes over the training set, when --train_steps is 0.")
    checkpoint_steps: int = _field(0, "Evaluate, log and checkpoint every N steps; 0: every epoch.")
    learning_rate: float = _field(0.1, "Initial (peak, with --lr_warmup_steps) learning rate.")
    lr_schedule: str = _field("step", "Learning-rate schedule.", SCHEDULES)
    lr_milestones: tuple[int, ...] = _field((), "Step schedule iterations; empty: 50% and 75% of the run.")
    lr_decay: float = _field(0.1, "Factor at each milestone or plateau.")
    lr_warmup_steps: int = _field(0, "Linear warmup from 0 to --learning_rate over N steps (any schedule).")
    plateau_patience: int = _field(3, "plateau: evaluations without improvement before decaying.")
    momentum: float = _field(0.9, "SGD momentum.")
    nesterov: bool = _field(False, "Nesterov momentum.")
    weight_decay: float = _field(1e-4, "Weight decay (L2 on convolution and classifier kernels only).")
    label_smoothing: float = _field(0.0, "Label smoothing of the cross-entropy loss.")
    ema_decay: float = _field(
        0.0,
        "Exponential moving average of the weights (BN statistics included) for evaluation, "
        "saving and export, e.g. 0.999; 0: off.",
    )
    warmup: bool = _field(False, "Paper's ResNet-110 trick: lr 0.01 until training error < 80%.")
    warmup_learning_rate: float = _field(0.01, "Learning rate during --warmup.")
    warmup_max_steps: int = _field(400, "Warmup ends after this many steps even if error stays high.")
    # Evaluation.
    eval_test: bool = _field(
        True, "Evaluate the test set at checkpoints (the paper's curves).", operational=True
    )
    eval_test_every: int = _field(
        1, "Evaluate the test set at every N-th checkpoint (and the last).", operational=True
    )
    tta: str = _field("none", "Test-time augmentation of evaluation and export: mean over views.", TTA)
    # How it runs.
    distribution: str = _field("auto", "tf.distribute strategy.", DISTRIBUTIONS, True)
    cpu_devices: int = _field(0, "Split the CPU into N logical devices (N replicas).", operational=True)
    precision: str = _field(
        "float32",
        "float32, bfloat16 mixed precision, or auto: bfloat16 where the CPU/GPU measures faster in it.",
        PRECISIONS,
    )
    seed: int = _field(0, "Random seed (weights, shuffling, augmentation).")
    deterministic: bool = _field(False, "Deterministic ops and input order (slower).")
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
        """A saved configuration. One saved before `padding` existed was built with "same"."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"padding": "same", **{k: v for k, v in d.items() if k in names}})

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
        spec = specs.get_spec(cfg.model, cfg.family or None)
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
    stride = specs.total_stride(spec)
    if cfg.image_size < 0 or 0 < cfg.image_size < stride:
        fail(
            f"--image_size={cfg.image_size} is smaller than {cfg.model}'s total stride of {stride} px: use "
            f"at least {stride}, or 0 for the dataset's default."
        )
    nonnegative = (
        "checkpoint_steps",
        "lr_warmup_steps",
        "translate",
        "cutout",
        "cpu_devices",
        "low_res_size",
        "low_res_epochs",
    )
    for name in nonnegative:
        if getattr(cfg, name) < 0:
            fail(f"--{name} must be >= 0, got {getattr(cfg, name)}.")
    if bool(cfg.low_res_size) != bool(cfg.low_res_epochs):
        fail(
            f"--low_res_size={cfg.low_res_size} and --low_res_epochs={cfg.low_res_epochs}: give both "
            "(e.g. --low_res_size=24 --low_res_epochs=12) or neither."
        )
    if 0 < cfg.low_res_size < stride:
        fail(f"--low_res_size={cfg.low_res_size} is smaller than {cfg.model}'s total stride of {stride} px.")
    if cfg.eval_test_every < 1:
        fail(f"--eval_test_every must be >= 1, got {cfg.eval_test_every}.")
    if not (cfg.learning_rate > 0 and cfg.warmup_learning_rate > 0):
        fail("--learning_rate and --warmup_learning_rate must be > 0.")
    if not 0 < cfg.lr_decay <= 1:
        fail(f"--lr_decay must be in (0, 1], got {cfg.lr_decay}.")
    if not cfg.weight_decay >= 0 or not 0 <= cfg.momentum < 1:
        fail("--weight_decay must be >= 0 and --momentum in [0, 1).")
    if not 0 <= cfg.label_smoothing < 1:
        fail(f"--label_smoothing must be in [0, 1), got {cfg.label_smoothing}.")
    if not 0 <= cfg.ema_decay < 1:
        fail(f"--ema_decay must be in [0, 1) (e.g. 0.999; 0 turns it off), got {cfg.ema_decay}.")
    if any(m <= 0 for m in cfg.lr_milestones) or list(cfg.lr_milestones) != sorted(cfg.lr_milestones):
        fail(f"--lr_milestones must be increasing positive iterations, got {list(cfg.lr_milestones)}.")
    for name, choices in (
        ("lr_schedule", SCHEDULES),
        ("precision", PRECISIONS),
        ("distribution", DISTRIBUTIONS),
        ("bottleneck_stride", ("1x1", "3x3")),
        ("flip", FLIPS),
        ("tta", TTA),
    ):
        if getattr(cfg, name) not in choices:
            valid = ", ".join(c or "(empty)" for c in choices)
            fail(f"--{name}={getattr(cfg, name)!r}: expected one of {valid}.")
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
    the last one is cut short so the run ends at exactly `total_steps`.
    """
    total_steps = cfg.train_steps or cfg.epochs * steps_per_epoch
    chunk = cfg.checkpoint_steps or steps_per_epoch
    return total_steps, chunk, math.ceil(total_steps / chunk)


def milestones(cfg: TrainConfig, total_steps: int) -> tuple[int, ...]:
    """--lr_milestones, or the paper's 32k/48k of 64k scaled to the run: 50% and 75%."""
    return cfg.lr_milestones or (total_steps // 2, total_steps * 3 // 4)
