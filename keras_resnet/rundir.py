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
import zipfile
from collections.abc import Collection, Iterator
from typing import Any

from keras_resnet import files
from keras_resnet.config import ConfigError, TrainConfig


class RunDir:
    """The files of a run folder. Names are class attributes, paths properties."""

    CONFIG = "config.json"
    FLAGS = "flags.cfg"
    DATA_INFO = "data_info.json"
    DATA_CHANGES = "data_changes.json"  # `datarecord`: the changes of data a run was allowed
    SUMMARY = "summary.json"
    HISTORY = "history.csv"
    CURVES = "curves.png"
    MODEL = "model.keras"
    CHECKPOINTS = "checkpoints"
    LOGS = "logs"
    BUDGET = "budget.json"
    TRAIN_ERROR = "train_error.json"
    TUNING = "tuning"
    TRIAL = "trial.json"  # keras-tuner's record of a search's trial, in the trial's run folder
    # Every name a run writes at the top of its folder: anything else there is the user's. Before
    # its config.json (written before any other record) only these may be there: the rest is not ours.
    BEFORE_CONFIG = frozenset((BUDGET, LOGS, TUNING, TRIAL))
    OWN = frozenset(
        (CONFIG, FLAGS, DATA_INFO, DATA_CHANGES, SUMMARY, HISTORY, CURVES, MODEL, CHECKPOINTS, TRAIN_ERROR)
        + tuple(BEFORE_CONFIG)
    )

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

    def model_damage(self) -> str | None:
        """Why `model.keras` cannot be read (missing, not a whole archive, a member failing its
        CRC), or None when it is sound. Keras says "File not found" for a cut archive."""
        try:
            size = self.model.stat().st_size
            if not zipfile.is_zipfile(self.model):
                return f"{size:,} bytes that are not a complete .keras archive (cut short or overwritten)"
            with zipfile.ZipFile(self.model) as archive:
                bad = archive.testzip()
        except FileNotFoundError:
            return "it is missing"
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
            return f"{type(err).__name__}: {str(err)[:80]}"
        return f"{bad} inside it does not match its checksum" if bad else None

    def load_model(self, **kwargs: Any):
        """The saved `keras.Model` (keyword arguments go to `keras.saving.load_model`).

        Raises:
            DamagedFile: model.keras is missing or damaged; the message names the way out.
        """
        self.check_model()
        import keras

        return keras.saving.load_model(self.model, **{"safe_mode": True, **kwargs})

    def check_model(self) -> None:
        """Raises `DamagedFile` (naming the way out) unless model.keras is sound."""
        damage = self.model_damage()
        if damage is not None:
            raise DamagedFile(f"{self.model} is damaged ({damage}): {self.rebuild_hint()}")

    def rebuild_hint(self) -> str:
        """How to get a sound model.keras back: the run's own command rebuilds it from a checkpoint."""
        if self.flags.is_file() and self.checkpoints.is_dir():
            return (
                f"run its training command again (python train.py --flagfile={self.flags}), which rebuilds "
                "it from the run's newest checkpoint, or restore it from a backup."
            )
        return "restore it from a backup, or train the run again."


class DamagedFile(ValueError):
    """A file a command reads from a run is there but cannot be read; the message says what to do."""


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
    cpu: str = ""  # `runtime.cpu_description()` of the machine that finished it
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


def among_run_files(path: str | os.PathLike, model_dir: str | os.PathLike) -> bool:
    """Whether `path` is the run folder `model_dir` or lies inside one of its run files."""
    path, model_dir = (pathlib.Path(p).expanduser().absolute() for p in (path, model_dir))
    return path == model_dir or (
        path.is_relative_to(model_dir) and path.relative_to(model_dir).parts[0] in RunDir.OWN
    )


def check_locations(cfg: TrainConfig, owned: Collection[str] = ()) -> None:
    """Refuses, before any work, a --model_dir or --export_dir holding files this project did not
    write there (but the names in `owned`, which the caller wrote there first: the checkpoints a
    Hyperband trial continues), and an --export_dir that is --model_dir or one of its run files.

    Raises:
        ConfigError: one line naming the flag, a few of the files, and the fix.
    """
    model_dir = pathlib.Path(cfg.run.model_dir).expanduser().absolute()
    export = pathlib.Path(cfg.run.export_dir).expanduser().absolute() if cfg.run.export_dir else None
    beside = set()
    if export is not None:
        inside = export.is_relative_to(model_dir) and export != model_dir
        if among_run_files(export, model_dir):
            raise ConfigError(
                f"--export_dir={cfg.run.export_dir} is --model_dir={cfg.run.model_dir} or one of its run "
                f"files: export beside the run, e.g. --export_dir={model_dir / 'export'}."
            )
        if model_dir.is_relative_to(export):
            raise ConfigError(
                f"--model_dir={cfg.run.model_dir} lies inside --export_dir={cfg.run.export_dir}, whose "
                "folders TF Serving reads as versions: put them side by side."
            )
        beside = {export.relative_to(model_dir).parts[0]} if inside else set()
    if cfg.run.carry_dir:
        carried = pathlib.Path(cfg.run.carry_dir).expanduser().absolute()
        for flag, where in (("--model_dir", model_dir), ("--export_dir", export)):
            if where is not None and (carried.is_relative_to(where) or where.is_relative_to(carried)):
                raise ConfigError(
                    f"--carry_dir={cfg.run.carry_dir} overlaps {flag}={where}: a carry is what survives "
                    "the run folder, so keep it apart (e.g. in the checkout's carry/)."
                )
    ours = (RunDir.OWN if RunDir(model_dir).config.is_file() else RunDir.BEFORE_CONFIG) | set(owned)

    def run_file(name: str) -> bool:  # an earlier --export_dir beside the run is the run's too
        return name in ours or name in beside or _export_base(model_dir / name)

    try:
        files.refuse_foreign(model_dir, "--model_dir", run_file)
        if export is not None:
            refuse_foreign_export(export, "--export_dir")
    except files.ForeignFiles as err:
        raise ConfigError(str(err)) from None


def check_space(cfg: TrainConfig, state_bytes: int, export_bytes: int = 0) -> None:
    """Refuses, before training, a --model_dir whose device cannot hold what the run must write:
    a checkpoint of `state_bytes` beside the kept ones and the final model (two states for a new
    run; a resumed one reuses its checkpoints' room), and an --export_dir without `export_bytes`
    free for the export at the end. A disk filling later still ends in one line.

    Raises:
        ConfigError: too little space, with how much is free and needed.
    """
    run = RunDir(cfg.run.model_dir)
    present = (
        sum(p.stat().st_size for p in run.checkpoints.glob("ckpt-*.h5")) if run.checkpoints.is_dir() else 0
    )
    need = max(2 * state_bytes - present, state_bytes)
    try:
        files.check_room(
            cfg.run.model_dir,
            need,
            "--model_dir",
            "this run",
            f" (checkpoints of {state_bytes / 1e6:.1f} MB and the final model)",
            " Nothing was trained.",
        )
        if cfg.run.export_dir and export_bytes:
            # On the run's own device the export comes after the run's checkpoints: room for both.
            shared = os.stat(cfg.run.export_dir).st_dev == os.stat(cfg.run.model_dir).st_dev
            what, fix = "the export at the end", " Nothing was trained."
            detail = " beside this run's checkpoints, on the same device" if shared else ""
            files.check_room(
                cfg.run.export_dir, export_bytes + shared * need, "--export_dir", what, detail, fix
            )
    except files.NoRoom as err:
        raise ConfigError(str(err)) from None


def refuse_foreign_export(base: str | os.PathLike, flag: str) -> None:
    """Refuses an export base holding anything but versions (TF Serving reads every numeric folder
    as one): `files.ForeignFiles`, naming a few of the user's files."""
    files.refuse_foreign(base, flag, str.isdigit)


def _export_base(path: pathlib.Path) -> bool:
    """A folder of TF Serving versions only (hidden names aside): an export this project wrote."""
    try:
        return path.is_dir() and all(name.isdigit() or name.startswith(".") for name in os.listdir(path))
    except OSError:
        return False


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
            # An export writing there now would refuse this run's export at its end: say so first.
            files.DirLock(cfg.run.export_dir, purpose="export").acquire().release()
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
