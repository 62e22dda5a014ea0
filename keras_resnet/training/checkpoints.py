"""Verified checkpoints: written atomically with a manifest, and resumed from the newest sound one."""

from __future__ import annotations

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

from keras_resnet import files
from keras_resnet.training.optimization import global_step

log = logging.getLogger(__name__)

_CKPT = re.compile(r"^ckpt-(\d+)\.json$")
_WEIGHTS = re.compile(r"^ckpt-(\d+)\.weights\.h5$")


# Cross-entropy at chance is ln(classes): 2.3 for CIFAR-10, 6.9 for ImageNet. A loss a thousand is
# logits that have blown up, whatever the net (an lr of 1e3 reached 6e29 without ever a NaN).
DIVERGED_LOSS = 1e3


def non_finite_variable(model: keras.Model) -> str | None:
    """The path of the first variable (weights, BN moving statistics) that is not finite, if any."""
    for variable in model.variables:
        if not bool(tf.reduce_all(tf.math.is_finite(tf.cast(variable.value, tf.float32)))):
            return variable.path
    return None


class Checkpointer(keras.callbacks.Callback):
    """Checkpoints every epoch (--checkpoint_steps), on Ctrl-C/SIGTERM, and resumes from the newest sound one.

    A checkpoint of step N is `ckpt-N.weights.h5` (model and optimizer variables), with
    `ckpt-N.average.weights.h5` when weights are averaged, and the manifest `ckpt-N.json`: the
    size and SHA-256 of each file, and the callbacks' state. Each file is written under a
    temporary name and renamed, and is hashed from disk once written; the manifest comes last, so
    a checkpoint exists only once complete. `state.json` names the newest manifest (for humans
    and older readers); the previous checkpoint is kept. On resume, checkpoints are tried from the
    newest: one whose files are missing, truncated, altered or unloadable is skipped with a line
    saying why; `state.json` itself is not needed. A diverged run (a loss that is not finite or
    above `DIVERGED_LOSS`, or weights and BN statistics that are not finite when a checkpoint is
    due) stops without saving, so the last good checkpoint survives. Non-chief workers save into
    a temporary directory (saving may involve collectives every worker must join) and restore
    from the chief's.
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
        self.diverged: tuple[int, str] | None = None  # (step, what was seen)
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
        self._without_manifest(found)
        legacy = self.state()
        if legacy and "files" not in legacy and isinstance(legacy.get("step"), int):
            found.setdefault(legacy["step"], legacy)  # written before manifests existed: unverified
        elif (self.read_dir / "state.json").exists() and legacy is None and found:
            self._skip("state.json is unreadable; rebuilt from the checkpoint files present")
        return [found[s] for s in sorted(found, reverse=True)]

    def _without_manifest(self, found: dict[int, dict]) -> None:
        """Adds, unverified, the weights files whose manifest is missing or unreadable: the
        manifest is an aid, not a single point of failure. Each file was complete when renamed
        into place; loading it still checks its layout and its step. Callback state (timings,
        plateau decays) restarts from zero for such a checkpoint."""
        for path in self.read_dir.glob("ckpt-*.weights.h5"):
            match = _WEIGHTS.match(path.name)
            step = int(match.group(1)) if match else None
            if step is None or step in found:
                continue
            manifest: dict[str, Any] = {"step": step, "epoch": 0, "weights": path.name}
            average = path.with_name(f"ckpt-{step}.average.weights.h5")
            if average.is_file():
                manifest["average"] = average.name
            elif self.average is not None:
                continue  # the weight average would start over: not the run it was
            self._skip(f"ckpt-{step}.json is missing or unreadable; trying {path.name} unverified")
            found[step] = manifest

    def _skip(self, why: str) -> None:
        self.skipped.append(why)
        if self.verbose:
            log.info(f"checkpoints: {why}")

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
            return int(manifest.get("epoch") or 0)
        raise RuntimeError(
            f"no usable checkpoint in {self.read_dir} ({'; '.join(self.skipped)}): move the folder away to "
            "start over, or restore it from a backup."
        )

    # -- writing

    def _write(self, epoch: int) -> None:
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
        loss = float(logs["loss"]) if logs and "loss" in logs else 0.0
        if not math.isfinite(loss) or loss > DIVERGED_LOSS:
            self.diverged = (global_step(self.model), f"the loss reached {loss:.3g}")
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
        if self.diverged is None and not self.interrupted:
            self.save(epoch + 1)

    def save(self, epoch: int) -> None:
        """Writes the checkpoint of this step, unless a variable is no longer finite (then: diverged)."""
        bad = non_finite_variable(self.model)
        if bad is not None:
            self.diverged = (global_step(self.model), f"{bad} is not finite")
            self.model.stop_training = True
            return
        self._write(epoch)
