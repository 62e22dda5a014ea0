"""Scoring and exporting a trained model: the steps every caller shares (a run, the tuner's
winner), and `train.py --model_dir=DIR --eval_only`, which scores a finished run again.

CIFAR recipe: the single original view (with the run's own --tta). ImageNet recipe: the paper's
10-crop testing (section 3.4: the 4 corners and the center of the shorter side resized to 256
S/224, and their flips, softmax averaged), beside the single center crop.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_resnet import data, models, workarounds
from keras_resnet.config import ConfigError
from keras_resnet.data.info import IMAGENET_RECIPE
from keras_resnet.rundir import DamagedFile, RunDir
from keras_resnet.training import optimization
from keras_resnet.training.precision import precision_policy

log = logging.getLogger(__name__)


def evaluate_model(model: keras.Model, batches: tf.data.Dataset) -> dict[str, float]:
    """`model`'s loss and metrics over `batches` (a compiled model, under its strategy)."""
    if model.distribute_strategy.num_replicas_in_sync > 1:
        workarounds.keras_build_from_a_global_batch(model, batches)
    return {k: float(v) for k, v in model.evaluate(batches, verbose=0, return_dict=True).items()}


def export_model(
    run_dir: str | os.PathLike,
    export_dir: str | os.PathLike,
    tta: str,
    example: tuple[Any, int] | None = None,
) -> pathlib.Path:
    """The next TF Serving version of the run saved in `run_dir` under `export_dir` (as
    export/export.py makes it), and a line of what it predicts for `example` (image, label)."""
    from keras_resnet.serving import exporting, warmup  # the TF Serving code is only needed here

    exported = exporting.export_run(run_dir, export_dir, tta=tta)
    log.info(f"exported for TF Serving: {exported}")
    if example is not None:
        image, label = example
        names = data.DataInfo.load(run_dir).class_names
        log.info(warmup.example_prediction(exported, image, names[label]))
    return exported


def evaluate_run(model_dir: str | os.PathLike) -> dict[str, float]:
    """Test metrics of the run saved in `model_dir` (printed, and returned)."""
    run = RunDir(model_dir)
    cfg = run.read_config() if str(model_dir) else None
    if cfg is None or not run.model.is_file():
        raise ConfigError(
            f"--eval_only needs --model_dir of a finished run (with {RunDir.CONFIG} and {RunDir.MODEL}); "
            f"{run.path} has {'neither' if cfg is None else f'no {RunDir.MODEL}'}."
        )
    try:
        run.check_model()  # before the data is loaded
    except DamagedFile as err:
        raise ConfigError(f"--model_dir: {err}") from None
    datasets = data.load_config(cfg.data)  # the same split and mean as the run trained with
    with precision_policy(cfg.run.precision):
        model = run.load_model()
        evaluated = models.with_test_time_augmentation(model, cfg.run.tta)
        if evaluated is not model:
            optimization.compile_for_evaluation(evaluated, cfg.optim)
        results = {f"test_{k}": v for k, v in evaluate_model(evaluated, datasets.test).items()}
        if datasets.info.recipe == IMAGENET_RECIPE:
            results.update(ten_crop_errors(model, datasets))
    views = f"--tta={cfg.run.tta}" if cfg.run.tta != "none" else "single view"
    line = f"{run.path}: test error {results['test_error']:.2%} ({views})"
    if "ten_crop_error" in results:
        line += f", 10-crop {results['ten_crop_error']:.2%}"
    if "ten_crop_top5_error" in results:
        line += f" (top-5 {results['ten_crop_top5_error']:.2%})"
    log.info(line + f" on {datasets.test_examples:,} images of {datasets.info.name}")
    return results


def ten_crop_errors(model: keras.Model, datasets: data.Datasets) -> dict[str, float]:
    """Top-1 (and top-5, with more than 10 classes) error of the 10-crop softmax average."""
    wrong1 = wrong5 = total = 0
    for views, labels in datasets.ten_crop_test():
        b, n = views.shape[0], views.shape[1]
        p = model.predict(np.reshape(views, (b * n, *views.shape[2:])), verbose=0)
        p = np.asarray(p, np.float64).reshape(b, n, -1).mean(axis=1)
        ranked = np.argsort(-p, axis=1)
        labels = np.asarray(labels)
        wrong1 += int(np.sum(ranked[:, 0] != labels))
        wrong5 += int(np.sum(~np.any(ranked[:, :5] == labels[:, None], axis=1)))
        total += b
    found = {"ten_crop_error": wrong1 / max(total, 1)}
    if datasets.info.num_classes > 10:
        found["ten_crop_top5_error"] = wrong5 / max(total, 1)
    return found
