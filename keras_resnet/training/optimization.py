"""What training minimises and how: the loss, the error metrics, the learning-rate schedule, SGD
(with a multiple of the learning rate for the batch norms' scales and offsets, if asked), made
from a run's `OptimConfig`.

Keras only (no TensorFlow). The registered objects themselves live in `models.compiled`, below
every stage, so that a saved compiled model loads once any stage package is imported.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_resnet.config import OptimConfig, milestones
from keras_resnet.models.compiled import LearningRate, ScaledRateSGD, SmoothedCrossEntropy, TopKError


def bn_lr_multipliers(optim: OptimConfig) -> dict[str, float]:
    """{variable name: factor} of --bn_lr_multiplier and --freeze_bn_scale; empty for the paper's SGD."""
    gamma = 0.0 if optim.freeze_bn_scale else optim.bn_lr_multiplier
    return {k: v for k, v in (("beta", optim.bn_lr_multiplier), ("gamma", gamma)) if v != 1.0}


def optimizer(optim: OptimConfig, total_steps: int, rate: LearningRate | None = None) -> keras.optimizers.SGD:
    """SGD with momentum on `rate` (default: the schedule of `optim`); `ScaledRateSGD` when the BN
    parameters' learning rate differs (so that a default run saves the very optimizer it always did)."""
    rate = rate or schedule(optim, total_steps)
    multipliers = bn_lr_multipliers(optim)
    if not multipliers:
        return keras.optimizers.SGD(rate, momentum=optim.momentum, nesterov=optim.nesterov)
    return ScaledRateSGD(rate, multipliers, momentum=optim.momentum, nesterov=optim.nesterov)


def global_step(model: keras.Model) -> int:
    """Iterations the model's optimizer has run (a strategy-wrapped variable)."""
    return int(ops.convert_to_numpy(model.optimizer.iterations))


def schedule(optim: OptimConfig, total_steps: int) -> LearningRate:
    """The learning-rate schedule of `optim` for a run of `total_steps` iterations."""
    return LearningRate(
        optim.lr_schedule,
        optim.learning_rate,
        total_steps,
        milestones(optim, total_steps),
        optim.lr_decay,
        optim.lr_warmup_steps,
    )


def loss(optim: OptimConfig) -> keras.losses.Loss:
    if optim.label_smoothing:
        return SmoothedCrossEntropy(optim.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def metrics(num_classes: int) -> list[keras.metrics.Metric]:
    """Top-1 error, and top-5 error where there are more than 10 classes."""
    found = [TopKError(1, name="error")]
    if num_classes > 10:
        found.append(TopKError(5, name="top5_error"))
    return found


def compile_model(
    model: keras.Model, optim: OptimConfig, total_steps: int, rate: LearningRate | None = None
) -> keras.Model:
    """SGD with momentum (`optimizer`), the learning-rate schedule by iterations, cross-entropy and
    top-1 error. A caller that steers the rate (`callbacks.LearningRateControl`: warmup, plateau)
    passes the schedule `rate` it steers: Keras has no public getter for an optimizer's schedule.

    Call inside strategy.scope(). Weight decay is not here: it is an L2 penalty on the kernels,
    part of the model (`models.build_model(weight_decay=...)`).
    """
    model.compile(
        optimizer=optimizer(optim, total_steps, rate),
        loss=loss(optim),
        metrics=metrics(model.output_shape[-1]),
    )
    return model


def compile_for_evaluation(model: keras.Model, optim: OptimConfig) -> keras.Model:
    """Compiles a model that is only evaluated (the weight average, test-time augmentation)."""
    model.compile(loss=loss(optim), metrics=metrics(model.output_shape[-1]))
    return model
