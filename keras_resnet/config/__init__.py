"""The configuration of a training run: `TrainConfig`, four sections that flow one way.

    cfg = TrainConfig.of(model="resnet20", dataset="cifar10", train_steps=64000, model_dir="runs/r20")
    cfg.model.name, cfg.data.batch_size, cfg.optim.learning_rate, cfg.run.model_dir
    cfg.replace(model_dir="runs/other")      # a new config; sections are frozen

Every field is a flag of `train.py` (its name, or the `flag` its metadata gives), so the sections
are the single list of flags. Each section is handed whole to its stage: `ModelConfig` to the
model builder, `DataConfig` to `data.load_config`, `OptimConfig` to the optimizer and schedule,
`RunConfig` to the run procedure. Nothing downstream changes a config. Pure Python (no
TensorFlow), so that bad flags are refused before TensorFlow starts. A run's `config.json` holds
the flags flat, as every version wrote it, so old run folders still resume. The four sections,
their checks and the choices they offer live in `config.sections`; this module composes them.

The defaults are the paper's CIFAR-10 procedure (section 4.2): batch 128, SGD with momentum 0.9,
weight decay 1e-4, learning rate 0.1 divided by 10 at 50% and 75% of the run. Every lever of the
fast recipe (`configs/cifar10_resnet20_fast.cfg`) is off by default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

from keras_resnet.config.sections import (
    DISTRIBUTIONS,
    FLIPS,
    MAX_PIXELS,
    MAX_STEPS,
    OUTPUT_FLAGS,
    PRECISIONS,
    SCHEDULES,
    SEED_RANGE,
    STEM_INITS,
    TTA,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    option,
)
from keras_resnet.models import specs

__all__ = [
    "ConfigError",
    "DISTRIBUTIONS",
    "DataConfig",
    "FLIPS",
    "MAX_PIXELS",
    "MAX_STEPS",
    "ModelConfig",
    "OUTPUT_FLAGS",
    "OptimConfig",
    "PRECISIONS",
    "RunConfig",
    "SCHEDULES",
    "SECTIONS",
    "SEED_RANGE",
    "STEM_INITS",
    "TTA",
    "TrainConfig",
    "define_absl_flags",
    "flag_fields",
    "from_absl_flags",
    "milestones",
    "option",
    "run_length",
]

SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}


def _flag_name(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or f.name


def flag_fields() -> Iterator[tuple[str, str, dataclasses.Field]]:
    """(flag name, section name, field) of every flag, in the sections' order."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield _flag_name(f), section, f


_WHERE = {flag: (section, f.name) for flag, section, f in flag_fields()}


def define_absl_flags() -> None:
    """One absl flag per config field, so the config's sections are the single list of flags."""
    from absl import flags

    for name, _, f in flag_fields():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text, choices = f.metadata["help"], f.metadata.get("choices")
        if choices:
            flags.DEFINE_enum(name, default, list(choices), help_text)
        elif isinstance(default, bool):
            flags.DEFINE_bool(name, default, help_text)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, help_text)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_text)
        elif isinstance(default, tuple):
            flags.DEFINE_list(name, [str(v) for v in default], help_text)
        else:
            flags.DEFINE_string(name, default, help_text)


def from_absl_flags(parsed: Any) -> TrainConfig:
    """The config of absl's parsed flags (`define_absl_flags`); bad milestones are a `ConfigError`."""
    values = {name: parsed[name].value for name, _, _ in flag_fields()}
    try:
        values["lr_milestones"] = tuple(int(v) for v in values["lr_milestones"])
    except ValueError:
        raise ConfigError(
            f"--lr_milestones must be integers, got {','.join(values['lr_milestones'])}."
        ) from None
    return TrainConfig.of(**values)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run: its network, data, optimisation and run settings."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    @classmethod
    def of(cls, **flags: Any) -> TrainConfig:
        """The config of these flags (`model="resnet56", batch_size=64, ...`), defaults elsewhere."""
        return cls().replace(**flags)

    def replace(self, **flags: Any) -> TrainConfig:
        """This config with some flags changed, each routed to its section."""
        unknown = sorted(set(flags) - set(_WHERE))
        if unknown:
            raise TypeError(f"unknown flag(s) {', '.join(unknown)}")
        changes: dict[str, dict[str, Any]] = {}
        for flag, value in flags.items():
            section, name = _WHERE[flag]
            changes.setdefault(section, {})[name] = value
        return dataclasses.replace(
            self, **{s: dataclasses.replace(getattr(self, s), **c) for s, c in changes.items()}
        )

    def flags(self) -> dict[str, Any]:
        """Every flag and its value, flat."""
        return {flag: getattr(getattr(self, section), f.name) for flag, section, f in flag_fields()}

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.flags().items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        """A saved configuration (flat flags). One saved before `padding` existed was built with "same"."""
        if not isinstance(d, dict):
            raise TypeError(f"a configuration is a JSON object of flags, not {type(d).__name__}")
        return cls.of(**{"padding": "same", **{k: v for k, v in d.items() if k in _WHERE}})

    def to_flags(self, outputs: bool = True) -> str:
        """The configuration as an absl flag file (`train.py --flagfile=...`); without `outputs`, a
        recipe: no --model_dir or --export_dir (the user says where it writes)."""
        lines = [flag_line(f, v) for f, v in self.flags().items() if outputs or f not in OUTPUT_FLAGS]
        return "\n".join(lines) + "\n"

    def training_fields(self) -> dict[str, Any]:
        """The flags that define the run (a --model_dir may not silently change them)."""
        operational = {flag for flag, _, f in flag_fields() if f.metadata["operational"]}
        return {k: v for k, v in self.to_json().items() if k not in operational}

    def check(self) -> None:
        """Raises ConfigError naming the flag and the fix for every cheap-to-detect mistake."""
        self.model.check()
        self.data.check(self.model.spec)
        self.optim.check()
        self.run.check()
        self._check_batch_norm()

    def _check_batch_norm(self) -> None:
        """The batch-norm levers that span sections. The ghost batch must divide each replica's
        share of the batch: checked here for --cpu_devices, and where the strategy is known."""
        ghost, batch = self.model.ghost_batch_size, self.data.batch_size
        replicas = self.run.cpu_devices if self.run.distribution != "one_device" else 1
        per_replica = batch // replicas if replicas > 1 and batch % replicas == 0 else batch
        try:
            specs.check_ghost_batch(ghost, batch, batch // per_replica)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.optim.freeze_bn_scale and self.model.zero_init_residual:
            raise ConfigError(
                "--freeze_bn_scale with --zero_init_residual keeps each block's last BN scale at 0 (every "
                "residual branch off for good): give one of them."
            )


def flag_line(flag: str, value: Any) -> str:
    """One flag as train.py takes it: `--flag=value`, `--flag` / `--noflag`, lists joined by commas."""
    if isinstance(value, bool):
        return f"--{'' if value else 'no'}{flag}"
    if isinstance(value, (tuple, list)):
        return f"--{flag}={','.join(map(str, value))}"
    return f"--{flag}={value}"


def run_length(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int, int]:
    """(total_steps, steps per Keras epoch, Keras epochs) of a run over `steps_per_epoch`-step passes.

    Keras epochs are chunks of --checkpoint_steps iterations (default: one pass over the data);
    the last one is cut short so the run ends at exactly `total_steps`.
    """
    total_steps = cfg.optim.train_steps or cfg.optim.epochs * steps_per_epoch
    chunk = cfg.run.checkpoint_steps or steps_per_epoch
    return total_steps, chunk, math.ceil(total_steps / chunk)


def milestones(optim: OptimConfig, total_steps: int) -> tuple[int, ...]:
    """--lr_milestones, or the paper's 32k/48k of 64k scaled to the run: 50% and 75%."""
    return optim.lr_milestones or (total_steps // 2, total_steps * 3 // 4)
