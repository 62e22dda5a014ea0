"""What a compiled `model.keras` refers to besides its layers: the error metric, the loss, the
learning-rate schedule and the SGD that `training.optimization` compiles a network with.

Keras only (no TensorFlow), every object registered: they live below every stage, so that
importing any of them (`models.register()`) lets a saved compiled model, optimizer state
included, load with `safe_mode=True`. Registered as "keras_resnet>ClassName", so model files
saved when they lived in `training.optimization` load the same.
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_resnet")
class TopKError(keras.metrics.SparseTopKCategoricalAccuracy):
    """Top-k error (1 - top-k accuracy), the paper's figure of merit."""

    def __init__(self, k: int = 1, name: str = "error", **kwargs):
        super().__init__(k=k, name=name, **kwargs)

    def result(self):
        return 1.0 - super().result()


@keras.saving.register_keras_serializable(package="keras_resnet")
class SmoothedCrossEntropy(keras.losses.Loss):
    """Cross-entropy of integer labels and predicted probabilities, with label smoothing.

    The target is `(1 - label_smoothing)` on the true class plus `label_smoothing / K` on every
    class (Szegedy et al., 2016), which is `(1 - s) * CE + s * mean_k(-log p_k)`. Keras' sparse
    cross-entropy has no smoothing argument.
    """

    def __init__(self, label_smoothing: float = 0.1, name: str = "smoothed_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        cross_entropy = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
        uniform = -ops.mean(ops.log(ops.clip(y_pred, keras.config.epsilon(), 1.0)), axis=-1)
        return (1.0 - self.label_smoothing) * cross_entropy + self.label_smoothing * uniform

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="keras_resnet")
class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate as a function of the iteration, times a `scale` that callbacks adjust.

    step: `learning_rate * decay ** (milestones passed)` (the paper); cosine: half-cosine to 0 and
    linear: straight line to 0, both over the steps after the warmup; plateau and constant:
    `learning_rate` (plateau decays through `scale`). `warmup_steps` ramps any of them linearly
    from 0 (one-cycle with `linear`). `scale` carries the paper's warmup factor and the plateau
    decays.
    """

    def __init__(
        self,
        kind: str,
        learning_rate: float,
        total_steps: int,
        milestones=(),
        decay: float = 0.1,
        warmup_steps: int = 0,
    ):
        self.kind, self.learning_rate, self.total_steps = kind, float(learning_rate), int(total_steps)
        self.milestones, self.decay = tuple(int(m) for m in milestones), float(decay)
        self.warmup_steps = int(warmup_steps)
        self.scale = keras.Variable(1.0, dtype="float32", trainable=False, name="lr_scale")

    def base(self, step):
        step = ops.cast(step, "float32")
        if self.kind == "step" and self.milestones:
            passed = ops.sum(ops.cast(step >= ops.convert_to_tensor(self.milestones, "float32"), "float32"))
            rate = self.learning_rate * ops.power(self.decay, passed)
        elif self.kind in ("cosine", "linear"):
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            if self.kind == "cosine":
                rate = 0.5 * self.learning_rate * (1.0 + ops.cos(math.pi * progress))
            else:
                rate = self.learning_rate * (1.0 - progress)
        else:
            rate = ops.convert_to_tensor(self.learning_rate, "float32")
        if self.warmup_steps:
            rate = rate * ops.minimum((step + 1.0) / self.warmup_steps, 1.0)
        return rate

    def __call__(self, step):
        return self.base(step) * self.scale

    def get_config(self):
        return {
            "kind": self.kind,
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "milestones": list(self.milestones),
            "decay": self.decay,
            "warmup_steps": self.warmup_steps,
        }


@keras.saving.register_keras_serializable(package="keras_resnet")
class ScaledRateSGD(keras.optimizers.SGD):
    """SGD where the variables of some names learn at a multiple of the learning rate.

    `lr_multipliers` maps a variable's name (the last part of its path: a batch norm's `gamma` and
    `beta`, a layer's `kernel`) to the factor of its learning rate; 0 leaves it as it is (not
    trained). The velocity accumulates `lr * gradient`, so a variable's every step, momentum and
    Nesterov included, is the factor times what plain SGD takes. Weight decay here is an L2 penalty
    on the kernels (part of their gradient), so it scales with their own factor only.
    """

    def __init__(self, learning_rate=0.01, lr_multipliers: dict[str, float] | None = None, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # Indexed as the optimizer's own slots (`_get_variable_index`): the update step receives
        # the backend's variable, whose name differs from the Keras variable's under a strategy.
        self._factors = [self.lr_multipliers.get(v.name, 1.0) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factors[self._get_variable_index(variable)]
        if factor == 0.0:
            return
        if factor != 1.0:
            learning_rate = ops.multiply(ops.cast(learning_rate, variable.dtype), factor)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "lr_multipliers": dict(self.lr_multipliers)}
