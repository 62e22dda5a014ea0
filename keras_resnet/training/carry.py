"""A run's carry: its newest resumable state, small enough to commit and move to another machine.

    python train.py ... --model_dir=$HOME/runs/r20 --carry_dir=carry/r20   # carries at every checkpoint
    rm -rf $HOME/runs/r20 && python train.py ... (the same command)         # resumes at the carried step

A carry is a folder `--carry_dir/step-N/` holding what an exact resume needs and nothing more:
the newest checkpoint (weights, optimizer slots, step, the callbacks' state in its manifest, the
weight average if any) and the run's records (`config.json`, `flags.cfg`, `data_info.json`,
`history.csv`, `budget.json`), with `carry.json` listing each file's size and SHA-256. Each
`step-N` is written under a hidden name and renamed into place, then the older ones are removed:
a carry is complete or absent. A run restores its carry when the carry is ahead of its own
folder (the folder missing, or left behind on another machine).

A finished run replaces its carry with `final-N/`: its records, `summary.json` and `model.keras`,
no checkpoint. The same command on a machine without the run folder then finds the run finished
(nothing is trained again) and what reads its results (tables, figures, Fig. 7's responses) has
the model. Delete the carry folder in the commit that records those results. Only the chief
writes or restores (the checkpoints are the chief's).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil
from collections.abc import Callable

import keras

from keras_resnet import files
from keras_resnet.config import TrainConfig
from keras_resnet.rundir import RunDir
from keras_resnet.training.checkpoints import Checkpointer

MANIFEST = "carry.json"
# The run's records that travel with its checkpoint (the others are rebuilt or not needed).
RECORDS = (RunDir.CONFIG, RunDir.FLAGS, RunDir.DATA_INFO, RunDir.DATA_CHANGES, RunDir.HISTORY, RunDir.BUDGET)
# What a finished run keeps (`final-N/`): the records, the final model, and last its summary.
FINAL = (*RECORDS, RunDir.MODEL, RunDir.SUMMARY)
_STEP_DIR = re.compile(r"^step-(\d+)$")
_FINAL_DIR = re.compile(r"^final-(\d+)$")
_CHECKPOINT_FILE = re.compile(rf"^{RunDir.CHECKPOINTS}/ckpt-\d+(\.average)?\.(weights\.h5|json)$")


@dataclasses.dataclass(frozen=True)
class Carry:
    """One complete carry: its folder and the step it resumes at."""

    path: pathlib.Path
    step: int

    @property
    def finished(self) -> bool:
        """A finished run's carry (`final-N/`: its model and records, no checkpoint)."""
        return bool(_FINAL_DIR.match(self.path.name))


def newest(carry_dir: str | pathlib.Path, pattern: re.Pattern = _STEP_DIR) -> Carry | None:
    """The newest complete carry in `carry_dir` (None if there is none)."""
    found = []
    root = pathlib.Path(carry_dir)
    if root.is_dir():
        for path in root.iterdir():
            match = pattern.match(path.name)
            if match and (path / MANIFEST).is_file():
                found.append(Carry(path, int(match.group(1))))
    return max(found, key=lambda c: c.step, default=None)


def reached(carry_dir: str | pathlib.Path) -> Carry | None:
    """The carry a run would restore: the finished run's, else the newest step's."""
    return newest(carry_dir, _FINAL_DIR) or newest(carry_dir)


def _newest_checkpoint(run: RunDir) -> dict | None:
    candidates = Checkpointer(run.checkpoints, verbose=False).candidates()
    return next((m for m in candidates if "files" in m), None)


def save(run: RunDir, carry_dir: str | pathlib.Path) -> Carry | None:
    """Carries the run's newest checkpoint (a no-op if the carry is already at its step)."""
    manifest = _newest_checkpoint(run)
    if manifest is None:
        return None
    step, root = int(manifest["step"]), pathlib.Path(carry_dir)
    files.remove_stale_temporaries(root)  # a save killed mid-copy (the caller holds the run's lock)
    current = newest(root)
    if current is not None and current.step == step:
        return current
    names = [f"{RunDir.CHECKPOINTS}/{name}" for name in (*manifest["files"], f"ckpt-{step}.json")]
    names += [name for name in RECORDS if (run.path / name).is_file()]
    return _write(run, names, root / f"step-{step}", step)


def finish(run: RunDir, carry_dir: str | pathlib.Path) -> Carry | None:
    """Replaces the carry of the run, now finished, by its final model and records (`final-N/`)."""
    summary = run.read_summary()
    if summary is None:
        return None
    root = pathlib.Path(carry_dir)
    files.remove_stale_temporaries(root)
    current = newest(root, _FINAL_DIR)
    if current is not None and current.step == summary.steps:
        return current
    return _write(
        run,
        [name for name in FINAL if (run.path / name).is_file()],
        root / f"final-{summary.steps}",
        summary.steps,
    )


def _write(run: RunDir, names: list[str], target: pathlib.Path, step: int) -> Carry:
    """`target` holding the run's files `names` and their manifest, staged; the other carries removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with files.staging_dir(target) as tmp:
        listed = {}
        for name in names:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run.path / name, tmp / name)
            listed[name] = {"size": (tmp / name).stat().st_size, "sha256": files.sha256(tmp / name)}
        files.write_json(tmp / MANIFEST, {"step": step, "files": listed})
    for path in target.parent.iterdir():  # the older carries, now that this one is complete
        if (_STEP_DIR.match(path.name) or _FINAL_DIR.match(path.name)) and path != target:
            shutil.rmtree(path, ignore_errors=True)
    return Carry(target, step)


def _listed(carry: Carry) -> dict[str, dict]:
    """The carry's files by name, each checked against its manifest; only names a run folder
    holds (a pulled manifest must not write elsewhere)."""
    listed = json.loads((carry.path / MANIFEST).read_text())["files"]
    for name, recorded in listed.items():
        if name not in FINAL and not _CHECKPOINT_FILE.match(name):
            raise ValueError(f"{carry.path / MANIFEST} names {name!r}, not a file of a run folder")
        path = carry.path / name
        if not path.is_file() or files.sha256(path) != recorded["sha256"]:
            raise ValueError(f"{path} is missing or damaged (its SHA-256 differs from {MANIFEST})")
    return listed


def _copy_order(name: str) -> tuple[int, str]:
    """config.json first (a folder with it is the run's), the checkpoint's manifest or the summary
    last (a checkpoint exists once its manifest does, a run is finished once its summary does): a
    restore cut short is redone by the next one."""
    last = name == RunDir.SUMMARY or (name.endswith(".json") and "/" in name)
    return (0 if name == RunDir.CONFIG else 3 if last else 1), name


def restore(
    run: RunDir,
    carry_dir: str | pathlib.Path,
    local_step: int,
    check: Callable[[TrainConfig], object] = lambda saved: None,
) -> Carry | None:
    """Copies the newest carry into the run folder, which is not finished, when it is ahead of
    `local_step`, the step the folder resumes at, or at that step but not all there, or when it is
    the finished run's; returns it (None if nothing was copied). `check` sees the carried
    configuration first and raises to refuse it.

    Raises:
        ValueError: the carry's files do not match its manifest (one line naming the file).
    """
    carry = reached(carry_dir)
    if carry is None or carry.step < local_step:
        return None
    listed = _listed(carry)
    if (
        carry.step == local_step
        and RunDir.SUMMARY not in listed
        and all(
            (run.path / n).is_file() and files.sha256(run.path / n) == r["sha256"]
            for n, r in listed.items()
            if n.startswith(RunDir.CHECKPOINTS)
        )
    ):
        return None
    check(TrainConfig.from_json(json.loads((carry.path / RunDir.CONFIG).read_text())))
    for name in sorted(listed, key=_copy_order):
        (run.path / name).parent.mkdir(parents=True, exist_ok=True)
        with files.replacing(run.path / name) as tmp:
            shutil.copyfile(carry.path / name, tmp)
    return carry


def refuse_foreign(carry_dir: str | pathlib.Path) -> None:
    """Refuses a --carry_dir holding anything but carries (`step-N`, a finished run's `final-N`).

    Raises:
        files.ForeignFiles: one line naming a few of the user's files.
    """
    files.refuse_foreign(
        carry_dir, "--carry_dir", lambda name: bool(_STEP_DIR.match(name) or _FINAL_DIR.match(name))
    )


class Carrier(keras.callbacks.Callback):
    """Carries the run after each checkpoint; runs after the `Checkpointer`."""

    def __init__(self, run: RunDir, carry_dir: str | pathlib.Path):
        super().__init__()
        self.run, self.carry_dir = run, pathlib.Path(carry_dir)

    def on_epoch_end(self, epoch, logs=None):
        save(self.run, self.carry_dir)

    def on_train_end(self, logs=None):
        save(self.run, self.carry_dir)  # a stop mid-chunk checkpoints at its step
