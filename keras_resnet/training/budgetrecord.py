"""The records of a --time_budget run (`training.budget`): its plan, what it measured, and the
`<model_dir>/budget.json` that holds both, so that the same command again continues the plan.

budget.json keeps the layout it had when these records were dicts keyed by flag names, so that run
folders and carries written then continue (tests/test_budget.py writes one literally):

    {"minutes": 30, "stage": "planned", "plan": {"epochs": 27, ...}, "measured": {...},
     "predicted_end_s": 1712.3}

"measured" is {} while the first steps are measured, and a file written before the run measured
its own steps (no "stage": final) holds the probes' speeds there; neither is read as a `Measured`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from keras_resnet import files
from keras_resnet.config import TrainConfig

MEASURING, PLANNED_STAGE, FINAL = "measuring", "planned", "final"


@dataclasses.dataclass(frozen=True)
class Plan:
    """The flags a plan sets on the run's configuration; the command gives the rest."""

    epochs: int
    train_steps: int  # 0: `epochs` whole epochs; else the run ends after exactly this step
    low_res_epochs: int
    lr_warmup_steps: int
    eval_test_every: int
    precision: str  # as --precision=auto resolved it

    @classmethod
    def of(cls, flags: dict[str, Any]) -> Plan:
        """The plan's fields of `flags` (a configuration's flags, or budget.json's "plan")."""
        return cls(**{name: flags[name] for name in PLANNED})

    def flags(self) -> dict[str, Any]:
        """The plan as flag values (budget.json's "plan")."""
        return dataclasses.asdict(self)

    def applied_to(self, cfg: TrainConfig) -> TrainConfig:
        """The planned run: `cfg` with the plan's flags."""
        return cfg.replace(**self.flags())


# The flags a plan changes: a re-plan or a carry may differ from the saved configuration in these.
PLANNED = tuple(field.name for field in dataclasses.fields(Plan))


@dataclasses.dataclass(frozen=True)
class Measured:
    """What a paused segment measured on this machine, up to the step it paused at."""

    low_res_images_per_sec: float  # at --low_res_size (the full size's, without one)
    full_images_per_sec: float  # PRIOR_FULL_OVER_LOW x the low resolution's unless full_size_measured
    full_size_measured: bool
    checkpoint_s: float  # a chunk's end: its checkpoint and any held-out evaluation
    restart_s: float  # a pause's restart: loading, building, tracing, the checkpoint it paused with
    train_examples: int
    test_examples: int
    precision: str  # as --precision=auto resolved it
    at_step: int

    @classmethod
    def of(cls, saved: Any) -> Measured | None:
        """budget.json's "measured" (None: {} or another layout, which nothing plans from again)."""
        try:
            return cls(**{field.name: saved[field.name] for field in dataclasses.fields(cls)})
        except (KeyError, TypeError):
            return None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Saved:
    """budget.json: a run's plan for a budget of `minutes`, at a stage, and what it was planned from."""

    minutes: float | None  # None: a file without it (then no budget continues it)
    stage: str  # MEASURING, PLANNED_STAGE or FINAL
    plan: Plan
    measured: Measured | None
    predicted_end_s: float | None = None  # where the plan was announced (PLANNED_STAGE, FINAL)

    @classmethod
    def read(cls, path: pathlib.Path) -> Saved:
        """Raises:
        ValueError: the file is no budget.json (or not JSON).
        """
        try:
            saved = json.loads(path.read_text())
            return cls(
                minutes=saved.get("minutes"),
                stage=saved.get("stage", FINAL),
                plan=Plan.of(saved["plan"]),
                measured=Measured.of(saved.get("measured", {})),
                predicted_end_s=saved.get("predicted_end_s"),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is not a plan: {err!r}") from None

    def write(self, path: pathlib.Path) -> None:
        """Writes the record atomically, in the layout above."""
        more = {} if self.predicted_end_s is None else {"predicted_end_s": self.predicted_end_s}
        measured = self.measured.to_json() if self.measured else {}
        plan = self.plan.flags()
        files.write_json(
            path, {"minutes": self.minutes, "stage": self.stage, "plan": plan, "measured": measured, **more}
        )
