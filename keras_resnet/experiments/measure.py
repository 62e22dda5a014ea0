"""What the experiments measure on a trained net: its training error in evaluation mode (Fig. 6's
curves end there) and the standard deviation of its 3x3 layers' responses (Fig. 7)."""

from __future__ import annotations

import json
import math

import keras
import numpy as np

from keras_resnet import data, files
from keras_resnet.config import TrainConfig
from keras_resnet.rundir import RunDir
from keras_resnet.training.precision import precision_policy


def train_error(cfg: TrainConfig) -> float:
    """Top-1 error of the run's final model on its whole training set, in evaluation mode (no
    augmentation), as Fig. 6's curves end; cached in `<model_dir>/train_error.json`."""
    run = RunDir(cfg.run.model_dir)
    if run.train_error.exists():
        return float(json.loads(run.train_error.read_text())["train_error"])
    ds = data.load(cfg.data.dataset, data_dir=cfg.data.data_dir or None, eval_batch_size=1000, verbose=False)
    with precision_policy(cfg.run.precision):
        model = run.load_model()
        result = model.evaluate(ds.train_evaluation(), verbose=0, return_dict=True)
    files.write_json(run.train_error, {"train_error": float(result["error"])})
    return float(result["error"])


def response_layers(model) -> list[str]:
    """The BN layers right after a 3x3 convolution, in network order: the "responses" of Fig. 7."""
    names = []
    for layer in model.layers:
        if layer.name.endswith("_bn"):
            conv = model.get_layer(layer.name[: -len("_bn")] + "_conv")
            if tuple(conv.kernel_size) == (3, 3):
                names.append(layer.name)
    return names


def response_stds(model, batches) -> dict[str, float]:
    """Standard deviation of every 3x3 layer's response (after BN, before ReLU or addition) over
    every element of every image of `batches`, in evaluation mode."""
    names = response_layers(model)
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    sums = np.zeros(len(names))
    squares = np.zeros(len(names))
    counts = np.zeros(len(names))
    for x, _ in batches:
        outputs = probe(x, training=False)
        for i, out in enumerate(outputs):
            out = np.asarray(out, np.float64)
            sums[i] += out.sum()
            squares[i] += np.square(out).sum()
            counts[i] += out.size
    means = sums / counts
    return {
        n: float(math.sqrt(max(q / c - m * m, 0.0)))
        for n, q, c, m in zip(names, squares, counts, means, strict=True)
    }
