"""What a run trained on: the data a resumed run loads, checked against the run's `data_info.json`.

A run's `data_info.json` is written when it starts and says what its weights were trained on
(fingerprint, examples, classes, mean). A resumed run whose data differs (a folder with an image
added between a SIGTERM and the same command again) is refused in one line, unless
--allow_data_change; then `data_changes.json` records each change with the step it happened at,
and `data_info.json` describes the data trained on since (its mean is the one the model now
expects). The fingerprint itself is `data.splits.fingerprint`'s, unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from keras_resnet import files
from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.data.info import DataInfo
from keras_resnet.rundir import RunDir

CHANGES = RunDir.DATA_CHANGES


@dataclasses.dataclass(frozen=True)
class DataIdentity:
    """What a change compares of a run's data: its name, files, examples and classes."""

    name: str
    data_sha256: str
    train_examples: int
    class_names: tuple[str, ...]

    @classmethod
    def of(cls, info: DataInfo) -> DataIdentity:
        return cls(info.name, info.data_sha256, info.train_examples, tuple(info.class_names))

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "class_names": list(self.class_names)}


@dataclasses.dataclass(frozen=True)
class DataChange:
    """One change of a run's data that the user allowed: at which step, from what (None: the record
    was unreadable) to what."""

    step: int
    time: str
    before: DataIdentity | None
    after: DataIdentity
    differences: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The entry of `data_changes.json` (an unreadable record's `before` is `{}`)."""
        return {
            "step": self.step,
            "time": self.time,
            "before": self.before.to_json() if self.before else {},
            "after": self.after.to_json(),
            "differences": list(self.differences),
        }


def differences(saved: DataInfo, loaded: DataInfo) -> list[str]:
    """What differs between the data a run recorded and the data loaded now: files (the
    fingerprint), examples, classes. A record without a fingerprint (before 0.4) compares the rest."""
    found = []
    if saved.data_sha256 and saved.data_sha256 != loaded.data_sha256:
        found.append(f"files: fingerprint {saved.data_sha256} -> {loaded.data_sha256 or 'none'}")
    if saved.train_examples != loaded.train_examples:
        found.append(f"examples: {saved.train_examples:,} -> {loaded.train_examples:,}")
    if tuple(saved.class_names) != tuple(loaded.class_names):
        old, new = set(saved.class_names), set(loaded.class_names)
        parts = [f"+{c}" for c in sorted(new - old)] + [f"-{c}" for c in sorted(old - new)]
        found.append(
            f"classes: {len(saved.class_names)} -> {len(loaded.class_names)} "
            f"({', '.join(parts) or 'the same names in another order'})"
        )
    return found


def check(cfg: TrainConfig, loaded: DataInfo, step: int) -> DataChange | None:
    """Refuses data that differs from what the run in --model_dir trained on (unless
    --allow_data_change); returns the change to record, or None when there is none.

    A run that trained no step yet (`step` 0) may take any data: nothing was trained on the old.

    Raises:
        ConfigError: the data differs (or the record is unreadable), without --allow_data_change.
    """
    run = RunDir(cfg.run.model_dir)
    if not step or not run.data_info.is_file():
        return None
    try:
        saved = DataInfo.load(run.path)
    except ValueError as err:
        if cfg.run.allow_data_change:
            return DataChange(step, _now(), None, DataIdentity.of(loaded), (f"{run.DATA_INFO} unreadable",))
        raise ConfigError(
            f"--model_dir: {err} Or pass --allow_data_change to record the data loaded now."
        ) from None
    found = differences(saved, loaded)
    if not found:
        return None
    # The same files split otherwise (--validation_split changed with --allow_config_change).
    resplit = all(f.startswith("examples:") for f in found) and cfg.run.allow_config_change
    if not (cfg.run.allow_data_change or resplit):
        raise ConfigError(
            f"--dataset={cfg.data.dataset} differs from the data the run in --model_dir={cfg.run.model_dir} "
            f"trained on until step {step} ({'; '.join(found)}): restore that data, use a new --model_dir, "
            f"or pass --allow_data_change to go on with this data (recorded in {CHANGES})."
        )
    return DataChange(step, _now(), DataIdentity.of(saved), DataIdentity.of(loaded), tuple(found))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def record(run: RunDir, loaded: DataInfo, change: DataChange | None, step: int) -> None:
    """Writes `data_info.json` for a run at step 0 (nothing trained on the record yet), or after
    an allowed change (noted in `data_changes.json` first); a run resumed on its own data leaves
    its record as it is."""
    if change is not None:
        path = run.path / CHANGES
        try:
            earlier = json.loads(path.read_text()) if path.is_file() else []
        except (OSError, ValueError):
            earlier = []
        earlier = earlier if isinstance(earlier, list) else []
        files.write_json(path, [*earlier, change.to_json()])
    elif run.data_info.is_file() and step:
        return
    loaded.save(run.path)
