"""The steps every caller of a run shares: its data, its network, and where it starts or resumes.

`procedure.Run` takes them in order; the search (`tuning.searching`), the time budget
(`training.budget`), the experiments' plans and the bench scripts call them alike, so that what
they measure or score is what a run trains.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection

import keras
import tensorflow as tf

from keras_resnet import data, files, models, rundir
from keras_resnet.config import ConfigError, TrainConfig
from keras_resnet.console import percent
from keras_resnet.rundir import RunDir, Summary, check_model_dir, refuse_config_changes
from keras_resnet.training import carry, distribution, finetune
from keras_resnet.training.checkpoints import Checkpointer

log = logging.getLogger(__name__)


def load_data(cfg: TrainConfig, strategy: tf.distribute.Strategy, start_step: int = 0) -> data.Datasets:
    """The datasets of --dataset, sharded for this worker: infinite global batches from `start_step`
    on, validation, test."""
    try:
        return data.load_config(
            cfg.data,
            seed=cfg.run.seed,
            start_step=start_step,
            deterministic=cfg.run.deterministic,
            # Each worker reads its own shard; batches stay global (tf.distribute splits them).
            num_workers=distribution.num_workers(strategy),
            worker_index=distribution.worker_index(strategy),
            verbose=distribution.is_chief(strategy),
            # A network that carries its own input normalization (--weights) takes raw pixels.
            subtract_mean=not finetune.raw_pixels(cfg),
        )
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"--dataset={cfg.data.dataset}: {err}") from None


def build_model(cfg: TrainConfig, info: data.DataInfo, weights=None) -> keras.Model:
    """The network of --model for `info`'s classes and image size (call inside strategy.scope()),
    with `weights` as `models.build_model` takes them (`finetune.weights_for`)."""
    try:
        model = models.build_from_config(
            cfg.model,
            num_classes=info.num_classes,
            input_shape=(info.image_size, info.image_size, 3),
            weight_decay=cfg.optim.weight_decay,
            weights=weights,
        )
    except ValueError as err:  # weights that are not there or do not fit: one line
        raise ConfigError(f"--weights={cfg.model.weights}: {err}") from None
    if cfg.data.low_res_size:
        # The first --low_res_epochs feed smaller images. The weights take any size (convolutions
        # and global average pooling); only the declared input shape must not refuse them. The
        # relaxed check is not saved: the saved and exported model keeps its declared size.
        model.input_spec = keras.InputSpec(ndim=4, axes={-1: model.input_shape[-1]})
    return model


def resumes_at(model_dir: str | os.PathLike) -> int:
    """The step a run in `model_dir` resumes from: its newest checkpoint's (0 if it has none)."""
    newest = Checkpointer(RunDir(model_dir).checkpoints, verbose=False).candidates()
    return int(newest[0]["step"]) if newest else 0


def check_locations(cfg: TrainConfig, owned: Collection[str] = ()) -> None:
    """Every folder a run writes, before any work, whoever starts it: `rundir.check_locations`
    (--model_dir, --export_dir, their clashes; `owned`: names the caller wrote in --model_dir)
    and a --carry_dir holding carries only.

    Raises:
        ConfigError: one line naming the flag, a few of the files, and the fix.
    """
    rundir.check_locations(cfg, owned)
    if cfg.run.carry_dir:
        try:
            carry.refuse_foreign(cfg.run.carry_dir)
        except files.ForeignFiles as err:
            raise ConfigError(str(err)) from None


def finished_run(cfg: TrainConfig, again: bool = False) -> Summary | None:
    """The summary of the finished run in --model_dir; None if there is work to do (`again`: said
    already, asked again under the lock)."""
    if not check_model_dir(cfg):
        return None
    run = RunDir(cfg.run.model_dir)
    summary = run.read_summary()
    damage = run.model_damage()
    if damage is not None:  # finished, but its model is lost: the run is not done
        if not resumes_at(run.path):
            raise ConfigError(
                f"--model_dir: {run.model} is damaged ({damage}) and no checkpoint is left to rebuild it "
                "from: restore it from a backup, or move the folder away and train again."
            )
        if not again:
            log.info(f"{run.model} is damaged ({damage}): rebuilding it from the newest checkpoint.")
        return None
    log.info(
        f"{cfg.run.model_dir} holds a finished run of this configuration (test error "
        f"{percent(summary.test_error)}); nothing to do."
    )
    return summary


def restore_carry(cfg: TrainConfig, ignore: Collection[str] = ()) -> None:
    """Takes --carry_dir's state when it is ahead of --model_dir's (a run moved between machines);
    a carry of another configuration (but for the flags in `ignore`) is refused before any copy."""
    run = RunDir(cfg.run.model_dir)
    if run.finished():
        return
    reached = carry.reached(cfg.run.carry_dir)

    def check(saved: TrainConfig) -> None:
        changed = {k for k, v in saved.training_fields().items() if cfg.training_fields().get(k) != v}
        if reached is not None and reached.finished and changed - set(ignore):
            raise ConfigError(
                f"--carry_dir={cfg.run.carry_dir} holds the finished run ({reached.step:,} steps, no "
                f"checkpoint) of another configuration ({', '.join(sorted(changed))}): extend it where its "
                "run folder is, or give a new --carry_dir."
            )
        refuse_config_changes(saved, cfg, ignore)

    try:
        restored = carry.restore(run, cfg.run.carry_dir, local_step=resumes_at(run.path), check=check)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"--carry_dir={cfg.run.carry_dir}: {err}") from None
    if restored is not None:
        log.info(f"restored step {restored.step:,} from {restored.path} into {run.path}")


def check_schedule(cfg: TrainConfig, total_steps: int, chief: bool) -> None:
    """Says so when --lr_milestones lie beyond the run (a preset's 32k/48k with --train_steps=200):
    those decays never happen."""
    late = [m for m in cfg.optim.lr_milestones if m >= total_steps]
    if late and cfg.optim.lr_schedule == "step" and chief:
        log.info(
            f"note: --lr_milestones {','.join(map(str, late))} lie at or beyond this run's last step "
            f"({total_steps:,}): the learning rate does not drop there. Give milestones inside the run, "
            "or --lr_milestones= (empty) to decay at 50% and 75% of it."
        )


def check_tta(cfg: TrainConfig, datasets) -> None:
    """A test-time mirror is refused for a net that never saw a mirrored image (mirrored digits
    are other shapes: --tta=flip raised the digits' test error from 13.7% to 22.8%)."""
    if cfg.run.tta != "none" and not datasets.mirrored:
        raise ConfigError(
            f"--tta={cfg.run.tta} averages over mirrored test images, but this run trains without flips "
            f"(--flip=none, or {datasets.info.name}'s default): use --tta=none, or train with flips."
        )
