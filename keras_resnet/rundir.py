"""A run's folder (`--model_dir`) and its summary, as types: every file name in one place.

    run = RunDir("runs/resnet20")
    run.config, run.history, run.model, run.checkpoints        # paths
    summary = run.read_summary()                              # a `Summary`, or None if unfinished

`summary.json` is written last, as the mark of a finished run; `Summary` is its schema, read back
by the tuner and the experiments through `RunDir.read_summary`. `claimed` holds the folder for a
run: proved writable, locked against a second writer. It stands on `config` alone, below serving
and training, which both read run folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
from collections.abc import Collection, Iterator
from typing import Any

from keras_resnet import files
from keras_resnet.config import ConfigError, TrainConfig


class RunDir:
    """The files of a run folder. Names are class attributes, paths properties."""

    CONFIG = "config.json"
    FLAGS = "flags.cfg"
    DATA_INFO = "data_info.json"
    SUMMARY = "summary.json"
    HISTORY = "history.csv"
    CURVES = "curves.png"
    MODEL = "model.keras"
    CHECKPOINTS = "checkpoints"
    LOGS = "logs"
    BUDGET = "budget.json"
    TRAIN_ERROR = "train_error.json"
    TUNING = "tuning"

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config(self) -> pathlib.Path:
        return self.path / self.CONFIG

    @property
    def flags(self) -> pathlib.Path:
        return self.path / self.FLAGS

    @property
    def data_info(self) -> pathlib.Path:
        return self.path / self.DATA_INFO

    @property
    def summary(self) -> pathlib.Path:
        return self.path / self.SUMMARY

    @property
    def history(self) -> pathlib.Path:
        return self.path / self.HISTORY

    @property
    def curves(self) -> pathlib.Path:
        return self.path / self.CURVES

    @property
    def model(self) -> pathlib.Path:
        return self.path / self.MODEL

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.path / self.CHECKPOINTS

    @property
    def logs(self) -> pathlib.Path:
        return self.path / self.LOGS

    @property
    def budget(self) -> pathlib.Path:
        return self.path / self.BUDGET

    @property
    def train_error(self) -> pathlib.Path:
        return self.path / self.TRAIN_ERROR

    @property
    def tuning(self) -> pathlib.Path:
        return self.path / self.TUNING

    def finished(self) -> bool:
        return self.summary.is_file()

    def read_config(self) -> TrainConfig | None:
        """The configuration saved here (None if none was saved yet)."""
        if not self.config.exists():
            return None
        try:
            return TrainConfig.from_json(json.loads(self.config.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise ConfigError(
                f"--model_dir: {self.config} is damaged ({type(err).__name__}: {str(err)[:80]}); restore it "
                f"from {self.flags} (python train.py --flagfile=...) or use a new --model_dir."
            ) from None

    def read_summary(self) -> Summary | None:
        """The finished run's summary (None if the run has not finished)."""
        if not self.summary.exists():
            return None
        try:
            return Summary.from_json(json.loads(self.summary.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise ConfigError(
                f"--model_dir: {self.summary} is damaged ({type(err).__name__}: {str(err)[:80]}): delete it "
                "and run the same command again, which evaluates and saves the finished run anew."
            ) from None

    def write_summary(self, summary: Summary) -> pathlib.Path:
        return files.write_json(self.summary, summary.to_json())


@dataclasses.dataclass(frozen=True)
class Summary:
    """What a finished run reports (`summary.json`). Errors are fractions; times in seconds."""

    model: str
    dataset: str
    steps: int
    total_steps: int
    test_error: float | None = None
    test_loss: float | None = None
    test_top5_error: float | None = None
    val_error: float | None = None
    train_error: float | None = None  # running mean over the last chunk's augmented batches
    shortcut: str | None = None
    params: int = 0
    macs: int = 0
    batch_size: int = 0
    epochs: float = 0.0
    train_examples: int = 0
    test_examples: int = 0
    data_sha256: str = ""  # of the training split's files, `data.fingerprint`
    weight_average: bool = False
    tta: str = "none"
    wall_time_s: float = 0.0  # the whole run: every command that trained it, each to its last checkpoint
    command_time_s: float = 0.0  # the command that finished it (a resumed run: since it resumed)
    train_time_s: float = 0.0  # inside training steps, every invocation of the run
    images_per_sec: float = 0.0
    resumed_from_step: int = 0
    replicas: int = 1
    workers: int = 1
    precision: str = "float32"
    tensorflow: str = ""
    keras: str = ""
    export_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # Keys that do not apply stay out, as before (top-5 below 11 classes, no export).
        return {k: v for k, v in d.items() if not (k in ("test_top5_error", "export_path") and v is None)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Summary:
        if not isinstance(d, dict):
            raise TypeError(f"a summary is a JSON object, not {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def check_model_dir(cfg: TrainConfig) -> bool:
    """Checks --model_dir against the configuration saved there; True if that run already finished."""
    run = RunDir(cfg.run.model_dir)
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError(f"--model_dir={cfg.run.model_dir} exists and is not a directory.")
    saved = run.read_config()
    if saved is None:
        return False
    diff = refuse_config_changes(saved, cfg)
    return not diff and run.finished()


def refuse_config_changes(saved: TrainConfig, cfg: TrainConfig, ignore: Collection[str] = ()) -> list[str]:
    """`config_changes` from the run saved in --model_dir to `cfg` but for the flags in `ignore`
    (what --time_budget re-plans); refused unless --allow_config_change.

    Raises:
        ConfigError: a change, without --allow_config_change.
    """
    diff = config_changes(saved, cfg, ignore)
    if diff and not cfg.run.allow_config_change:
        raise ConfigError(
            f"--model_dir={cfg.run.model_dir} holds a run with a different configuration "
            f"({'; '.join(diff)}): "
            "use a new --model_dir, or pass --allow_config_change to continue it."
        )
    return diff


def config_changes(old: TrainConfig, new: TrainConfig, ignore: Collection[str] = ()) -> list[str]:
    """`--flag: old -> new` for every run-defining flag that differs (but those in `ignore`)."""
    before, after = old.training_fields(), new.training_fields()
    return [
        f"--{k}: {before.get(k)!r} -> {after[k]!r}"
        for k in after
        if before.get(k) != after[k] and k not in ignore
    ]


@contextlib.contextmanager
def claimed(cfg: TrainConfig, writes: bool) -> Iterator[None]:
    """Proves --model_dir and --export_dir writable and holds --model_dir's lock for the block.

    A --model_dir this call created is removed again if the run stops before writing into it.
    """
    if not writes:
        yield
        return
    model_dir = pathlib.Path(cfg.run.model_dir)
    created = not model_dir.exists()
    try:
        files.check_writable(model_dir, "--model_dir")
        if cfg.run.export_dir:
            files.check_writable(cfg.run.export_dir, "--export_dir")
        if cfg.run.carry_dir:
            files.check_writable(cfg.run.carry_dir, "--carry_dir")
        lock = files.DirLock(model_dir, purpose="train.py run").acquire()
    except (files.NotWritable, files.Locked) as err:
        raise ConfigError(str(err)) from None
    try:
        yield
    except BaseException:
        if created and {p.name for p in model_dir.iterdir()} <= {files.LOCK_FILE}:
            shutil.rmtree(model_dir, ignore_errors=True)
        raise
    finally:
        lock.release()
