"""The four sections of a run's configuration, each a frozen dataclass whose fields are flags.

`ModelConfig` (the network), `DataConfig` (the images and their augmentation), `OptimConfig` (what is
minimised, for how long) and `RunConfig` (outputs, evaluation, devices), each with the check of its
own flags; `option` makes a field a flag (its help, choices, whether it is operational). The choices
and limits every flag shares are here too. `keras_resnet.config` composes them into `TrainConfig`.
Pure Python, like the rest of `config`.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

from keras_resnet.models import specs

SCHEDULES = ("step", "cosine", "linear", "plateau", "constant")
PRECISIONS = ("float32", "bfloat16", "auto")
DISTRIBUTIONS = ("auto", "mirrored", "multi_worker", "one_device")
FLIPS = ("", "random", "alternating", "none")
TTA = ("none", "flip", "flip_translate")
STEM_INITS = ("he", "pca")
MAX_STEPS = 100_000_000  # 1,500x the paper's 64k iterations: anything longer is a typo
SEED_RANGE = 2**32  # numpy's seeds
OUTPUT_FLAGS = ("model_dir", "export_dir", "carry_dir")  # where a run writes: never part of a recipe
# A decoded image costs 3 bytes per pixel as uint8 (12 as float32): 4096^2 pixels are 50 MB, enough
# for phone photos; a 373-byte PNG can declare 1x1,000,000 pixels and a 1.2 MB one 20000x20000.
# What a training image or a served request may declare (export.py --max_pixels for serving).
MAX_PIXELS = 4096 * 4096


class ConfigError(ValueError):
    """Bad flags or an unusable output location; raised before any heavy work starts."""


def option(default, help: str, choices: tuple[str, ...] | None = None, *, operational: bool = False, flag=""):
    """A config field. `operational` fields may change between runs sharing a --model_dir; `flag`
    names the command-line flag when it differs from the field's name."""
    meta = {"help": help, "choices": choices, "operational": operational, "flag": flag}
    if isinstance(default, list | tuple):
        return dataclasses.field(default_factory=lambda: tuple(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _fail(message: str):
    raise ConfigError(message)


def _check_choices(section) -> None:
    for f in dataclasses.fields(section):
        if choices := f.metadata.get("choices"):
            try:
                specs.check_choice(f"--{f.metadata['flag'] or f.name}", getattr(section, f.name), choices)
            except ValueError as err:
                _fail(str(err))


def _check_at_least(section, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(section, name) < minimum:
            _fail(f"--{name} must be >= {minimum}, got {getattr(section, name)}.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network (Table 1, section 4.2): handed to `models.build_model`."""

    name: str = option(
        "resnet20", "resnet<depth> or plain<depth>, e.g. resnet20, plain56, resnet50.", flag="model"
    )
    shortcut: str = option("", "Shortcut option A, B or C; empty: the paper's default for the family.")
    family: str = option("", "cifar or imagenet to override the family implied by the depth.")
    bottleneck_stride: str = option(
        specs.BOTTLENECK_STRIDES[0], "Where a bottleneck block strides.", specs.BOTTLENECK_STRIDES
    )
    zero_init_residual: bool = option(
        False, "Start each residual block's last BN scale at 0 (not the paper)."
    )
    padding: str = option(
        specs.PADDINGS[0],
        "Strided 3x3/7x7 convolutions and the max pool: symmetric as the paper's nets, or same "
        "(TensorFlow's bottom/right padding, which runs made before this flag used).",
        specs.PADDINGS,
    )
    stem_init: str = option(
        "he",
        "The first convolution's initial weights: he (the paper's He init), or pca: the whitening of "
        "the training images' patches (their top principal components over sqrt(eigenvalue)), "
        "computed at the start of a fresh run.",
        STEM_INITS,
    )
    sync_bn: bool = option(False, "Synchronized batch norm: statistics over the global batch.")
    bn_momentum: float = option(
        specs.BN_MOMENTUM,
        "Momentum of every batch norm's moving statistics (Keras' convention: 0.9 is PyTorch's 0.1).",
    )
    ghost_batch_size: int = option(
        0,
        "Ghost batch norm: in training, BN statistics over groups of N examples of each replica's "
        "batch (N must divide it); inference unchanged; 0: off.",
    )
    fused_bn: bool = option(
        True, "TensorFlow's fused batch-norm kernel in training (Keras' results, faster).", operational=True
    )
    weights: str = option(
        "",
        "Start from these weights: imagenet (resnet50/101/152), cifar10 (a shipped net), a finished run's "
        "--model_dir, or a .keras/.weights.h5 file; a new classifier where the classes differ.",
    )
    freeze: tuple[str, ...] = option(
        (), "Stages kept as they are, by the paper's names (conv1 is the stem), e.g. conv1,conv2."
    )

    def __post_init__(self):
        object.__setattr__(self, "shortcut", self.shortcut.strip().upper())
        object.__setattr__(self, "freeze", tuple(str(s).strip() for s in self.freeze if str(s).strip()))

    @property
    def spec(self) -> specs.ModelSpec:
        return specs.get_spec(self.name, self.family or None)

    @property
    def resolved_shortcut(self) -> str:
        return self.shortcut or specs.DEFAULT_SHORTCUT[self.spec.family]

    def check(self) -> None:
        try:
            specs.get_spec(self.name, self.family or None)
        except ValueError as err:
            _fail(f"--model: {err}")
        if self.shortcut:
            try:
                specs.check_shortcut(self.shortcut)
            except ValueError as err:
                _fail(f"--shortcut: {err}")
        if self.family and self.family not in specs.FAMILIES:
            _fail(f"--family={self.family!r}: expected one of {', '.join(specs.FAMILIES)}.")
        try:
            specs.check_bn_momentum(self.bn_momentum)
        except ValueError as err:
            _fail(f"--{err}")
        _check_at_least(self, 0, "ghost_batch_size")
        if self.ghost_batch_size and self.sync_bn:
            _fail(
                "--ghost_batch_size normalizes groups of each replica's batch, --sync_bn the global batch: "
                "give one of them."
            )
        _check_choices(self)
        if self.stem_init == "pca" and self.weights:
            _fail(
                f"--stem_init=pca with --weights={self.weights}: the stem comes from the weights; give one."
            )
        self._check_weights()

    def _check_weights(self) -> None:
        spec = self.spec
        stages = tuple(f"conv{i + 1}" for i in range(len(spec.stages) + 1))
        if unknown := [s for s in self.freeze if s not in stages]:
            _fail(f"--freeze={','.join(unknown)}: {spec.name}'s stages are {', '.join(stages)}.")
        w = self.weights
        if w == "imagenet" and not (spec.family == specs.IMAGENET and spec.depth in (50, 101, 152)):
            _fail(f"--weights=imagenet exists for resnet50, resnet101 and resnet152, not {spec.name}.")
        elif w == "cifar10" and spec.family != specs.CIFAR:
            _fail(f"--weights=cifar10 is for the CIFAR nets; {spec.name} is an ImageNet net.")
        elif w not in ("", "imagenet", "cifar10"):
            path = pathlib.Path(w).expanduser()
            if not (
                (path / "model.keras").is_file() or (path.is_file() and w.endswith((".keras", ".weights.h5")))
            ):
                _fail(
                    f"--weights={w}: no finished run (with model.keras) or .keras/.weights.h5 file there; "
                    "give one, or imagenet or cifar10."
                )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The images and their augmentation: handed to `data.load_config`."""

    dataset: str = option("cifar10", "cifar10, cifar100, imagenette, imagenet2012, digits or folder:<root>.")
    data_dir: str = option(
        "",
        "TFDS data dir; default $KERAS_RESNET_DATA/tensorflow_datasets if set, else TFDS's own "
        "($TFDS_DATA_DIR or ~/tensorflow_datasets).",
        operational=True,
    )
    download: bool = option(
        True, "Download and prepare a missing TFDS dataset (--nodownload: fail instead).", operational=True
    )
    validation_split: bool = option(False, "Hold out 10% of the training images (CIFAR: 45k/5k).")
    image_size: int = option(0, "Model input side; 0: the dataset's default.")
    batch_size: int = option(128, "Global batch size, split across all replicas.")
    eval_batch_size: int = option(0, "Evaluation batch size; 0: --batch_size.", operational=True)
    color_augmentation: bool = option(False, "Colour augmentation (imagenet recipe).")
    flip: str = option("", "Horizontal flips; empty: random, or none for digits.", FLIPS)
    translate: int = option(4, "cifar recipe: random translation by up to N pixels (the paper: 4).")
    cutout: int = option(0, "cifar recipe: zero a random N x N square of each image; 0: off.")
    low_res_size: int = option(
        0,
        "cifar recipe: train the first --low_res_epochs on images resized to N px (fewer "
        "multiply-adds per image, the same net); 0: off.",
    )
    low_res_epochs: int = option(0, "How many epochs --low_res_size applies to, from the start.")
    skip_corrupt: bool = option(
        False, "Image folders: leave corrupt or unreadable files out (with a warning) instead of stopping."
    )

    def check(self, spec: specs.ModelSpec) -> None:
        if self.batch_size <= 0:
            _fail(f"--batch_size must be a positive integer, got {self.batch_size}.")
        _check_at_least(self, 0, "eval_batch_size", "translate", "cutout", "low_res_size", "low_res_epochs")
        stride = specs.total_stride(spec)
        if self.image_size < 0 or 0 < self.image_size < stride:
            _fail(
                f"--image_size={self.image_size} is smaller than {spec.name}'s total stride of {stride} px: "
                f"use at least {stride}, or 0 for the dataset's default."
            )
        if bool(self.low_res_size) != bool(self.low_res_epochs):
            _fail(
                f"--low_res_size={self.low_res_size} and --low_res_epochs={self.low_res_epochs}: give both "
                "(e.g. --low_res_size=24 --low_res_epochs=12) or neither."
            )
        if 0 < self.low_res_size < stride:
            _fail(f"--low_res_size={self.low_res_size} is below {spec.name}'s total stride ({stride} px).")
        _check_choices(self)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """What is minimised and how, for how long: handed to `training.optimization`."""

    train_steps: int = option(
        0, "Training iterations (the paper's CIFAR-10 nets: 64000); 0: use --epochs. A run needs one of them."
    )
    epochs: int = option(0, "Passes over the training set, when --train_steps is 0.")
    learning_rate: float = option(0.1, "Initial (peak, with --lr_warmup_steps) learning rate.")
    lr_schedule: str = option("step", "Learning-rate schedule.", SCHEDULES)
    lr_milestones: tuple[int, ...] = option((), "Step schedule iterations; empty: 50% and 75% of the run.")
    lr_decay: float = option(0.1, "Factor at each milestone or plateau.")
    lr_warmup_steps: int = option(0, "Linear warmup from 0 to --learning_rate over N steps (any schedule).")
    plateau_patience: int = option(3, "plateau: evaluations without improvement before decaying.")
    momentum: float = option(0.9, "SGD momentum.")
    nesterov: bool = option(False, "Nesterov momentum.")
    weight_decay: float = option(1e-4, "Weight decay (L2 on convolution and classifier kernels only).")
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy loss.")
    bn_lr_multiplier: float = option(
        1.0, "Learning rate of the batch norms' offsets (beta) and scales (gamma), in --learning_rate's."
    )
    freeze_bn_scale: bool = option(False, "Keep every batch norm's scale (gamma) at its initial value.")
    ema_decay: float = option(
        0.0,
        "Exponential moving average of the weights (BN statistics included) for evaluation, "
        "saving and export, e.g. 0.999; 0: off.",
    )
    warmup: bool = option(False, "Paper's ResNet-110 trick: lr 0.01 until training error < 80%.")
    warmup_learning_rate: float = option(0.01, "Learning rate during --warmup.")
    warmup_max_steps: int = option(400, "Warmup ends after this many steps even if error stays high.")

    def __post_init__(self):
        object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))

    def check(self) -> None:
        _check_at_least(self, 0, "train_steps", "epochs", "lr_warmup_steps")
        _check_at_least(self, 1, "plateau_patience", "warmup_max_steps")
        if self.train_steps and self.epochs:
            _fail(f"Give --train_steps ({self.train_steps}) or --epochs ({self.epochs}), not both.")
        if not self.train_steps and not self.epochs:
            _fail("Give the length of the run: --train_steps (iterations, e.g. 64000) or --epochs.")
        if self.train_steps > MAX_STEPS or self.epochs > MAX_STEPS // 10:
            _fail(f"--train_steps must be at most {MAX_STEPS:,} (--epochs {MAX_STEPS // 10:,}): a typo?")
        finite = {k: getattr(self, k) for k in ("learning_rate", "warmup_learning_rate", "weight_decay")}
        if not all(math.isfinite(v) for v in finite.values()):
            _fail(f"--learning_rate, --warmup_learning_rate and --weight_decay must be finite, got {finite}.")
        if not (self.learning_rate > 0 and self.warmup_learning_rate > 0):
            _fail("--learning_rate and --warmup_learning_rate must be > 0.")
        if not 0 < self.lr_decay <= 1:
            _fail(f"--lr_decay must be in (0, 1], got {self.lr_decay}.")
        if not self.weight_decay >= 0 or not 0 <= self.momentum < 1:
            _fail("--weight_decay must be >= 0 and --momentum in [0, 1).")
        if not 0 <= self.label_smoothing < 1:
            _fail(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if not (math.isfinite(self.bn_lr_multiplier) and self.bn_lr_multiplier > 0):
            _fail(f"--bn_lr_multiplier must be > 0 (1: the paper's), got {self.bn_lr_multiplier}.")
        if not 0 <= self.ema_decay < 1:
            _fail(f"--ema_decay must be in [0, 1) (e.g. 0.999; 0 turns it off), got {self.ema_decay}.")
        ms = list(self.lr_milestones)
        if any(m <= 0 for m in ms) or ms != sorted(ms):
            _fail(f"--lr_milestones must be increasing positive iterations, got {ms}.")
        _check_choices(self)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where the outputs go, how the run evaluates and on what it runs: the run procedure's."""

    model_dir: str = option("", "Where every output goes (checkpoints, history, model).", operational=True)
    export_dir: str = option("", "Also export the final model for TF Serving here.", operational=True)
    carry_dir: str = option(
        "",
        "Also keep the newest resumable state here (small: commit it to move the run to another "
        "machine); restored when ahead of --model_dir, removed when the run finishes.",
        operational=True,
    )
    checkpoint_steps: int = option(0, "Evaluate, log and checkpoint every N steps; 0: every epoch.")
    eval_test: bool = option(
        True, "Evaluate the test set at checkpoints (the paper's curves).", operational=True
    )
    eval_test_every: int = option(
        1, "Evaluate the test set at every N-th checkpoint (and the last).", operational=True
    )
    tta: str = option("none", "Test-time augmentation of evaluation and export: mean over views.", TTA)
    distribution: str = option("auto", "tf.distribute strategy.", DISTRIBUTIONS, operational=True)
    cpu_devices: int = option(0, "Split the CPU into N logical devices (N replicas).", operational=True)
    precision: str = option(
        "float32",
        "float32, bfloat16 mixed precision, or auto: bfloat16 where the CPU/GPU measures faster in it.",
        PRECISIONS,
    )
    seed: int = option(0, f"Random seed (weights, shuffling, augmentation), 0 to {SEED_RANGE - 1}.")
    deterministic: bool = option(False, "Deterministic ops and input order (slower).")
    allow_config_change: bool = option(
        False, "Continue a --model_dir whose saved configuration differs.", operational=True
    )
    allow_data_change: bool = option(
        False,
        "Resume a run on data that differs from its data_info.json (noted in the run).",
        operational=True,
    )

    def check(self) -> None:
        if not self.model_dir:
            _fail("--model_dir is required: the directory for checkpoints, history and the final model.")
        _check_at_least(self, 0, "checkpoint_steps", "cpu_devices")
        _check_at_least(self, 1, "eval_test_every")
        if not 0 <= self.seed < SEED_RANGE:
            _fail(f"--seed must be in [0, {SEED_RANGE - 1}], got {self.seed}.")
        _check_choices(self)
