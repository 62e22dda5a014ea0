"""A trained run as a Python object: raw images in, class probabilities out.

    clf = kr.load("runs/resnet20")                  # model.keras + data_info.json (+ its --tta)
    clf = kr.load("resnet20", weights="cifar10")    # a net this package ships
    clf.predict(images, batch_size=32, verbose=0)    # uint8 or float 0..255: an image, a batch, a list
    clf.top_k(images, k=3)                           # [[("cat", 0.91), ("dog", 0.05), ...], ...]
    clf.predict(images01, value_range=(0, 1))        # float pixels in 0..1
    clf.predict_files(["a.jpg", "b.png"])

Images are taken as Keras users hold them (`serving.pixels`: [H, W] grayscale or 1, 3 or 4
channels last, a batch or a list of sizes); anything else is one line naming the expected shape.

Each image goes through the export's own steps (`serving.decode.decode_checked` for files, the
recipe's evaluation view, the run's test-time views), so `predict` answers what the SavedModel's
`serving_default` answers for the same images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_resnet.config import MAX_PIXELS
from keras_resnet.data.info import DataInfo
from keras_resnet.data.recipes import eval_preprocess
from keras_resnet.rundir import RunDir
from keras_resnet.serving.decode import decode_checked
from keras_resnet.serving.inference import Inference
from keras_resnet.serving.pixels import PIXEL_RANGE, rgb_batches
from keras_resnet.serving.shipped import shipped_net


class Classifier:
    """A trained network with its data's evaluation view and class names."""

    def __init__(self, model: keras.Model, info: DataInfo, tta: str = "none"):
        self.model, self.info, self.tta = model, info, tta
        inference = Inference(model, tta)
        # One graph from pixels to probabilities, as the export's `predict_pixels`: traced once,
        # then each call runs without Keras' per-call `predict` machinery (15-50x faster at batch 1).
        self._predict_pixels = tf.function(
            lambda pixels: inference(eval_preprocess(pixels, info)),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    def views(self, images: Any, value_range: tuple[float, float] = PIXEL_RANGE) -> tf.Tensor:
        """The evaluation views (float32 [N, S, S, 3]) of images as `predict` takes them."""
        batches = rgb_batches(images, value_range=value_range)
        if not batches:
            return tf.zeros([0, self.info.image_size, self.info.image_size, 3], tf.float32)
        return tf.concat([eval_preprocess(tf.constant(b), self.info) for b in batches], 0)

    def predict(
        self,
        images: Any,
        batch_size: int | None = None,
        verbose: Any = "auto",
        value_range: tuple[float, float] = PIXEL_RANGE,
    ) -> np.ndarray:
        """float32 [N, classes] probabilities of RGB images: uint8, or float read as `value_range`.

        `batch_size` (default 256) and `verbose` are Keras' `Model.predict` keywords; nothing is
        printed either way. Bad input raises one-line ValueError (`serving.pixels`).
        """
        del verbose  # accepted as Keras' predict takes it: this call draws no progress bar
        batches = rgb_batches(images, batch_size or 256, value_range)
        if not batches:
            return np.zeros([0, self.info.num_classes], np.float32)
        return np.concatenate([self._predict_pixels(b).numpy() for b in batches])

    def top_k(self, images: Any, k: int = 5, **predict_kwargs: Any) -> list[list[tuple[str, float]]]:
        """The `k` most probable class names of each image, with their probabilities; keywords as
        `predict`'s."""
        probabilities = self.predict(images, **predict_kwargs)
        best = np.argsort(-probabilities, axis=1)[:, :k]
        return [
            [(self.class_names[j], float(p[j])) for j in row]
            for p, row in zip(probabilities, best, strict=True)
        ]

    def decode_files(
        self, paths: Sequence[str | os.PathLike], max_pixels: int = MAX_PIXELS
    ) -> list[np.ndarray]:
        """The files' pixels, decoded as `serving_default` decodes a request (same checks)."""
        return [
            decode_checked(tf.io.read_file(os.fspath(p)), tf.constant(i), max_pixels).numpy()
            for i, p in enumerate(paths)
        ]

    def predict_files(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        return self.predict(self.decode_files(paths))


def load(run_dir: str | os.PathLike, *, weights: str | None = None, tta: str | None = None) -> Classifier:
    """The run in `run_dir` (a train.py --model_dir, or a search's `best/`) as a `Classifier`; with
    `weights="cifar10"`, `run_dir` is instead the name of a shipped net (`build_model`'s `weights`).

    `tta` None uses the run's own test-time augmentation (its config.json), as its export does; a
    shipped net's default is the single view its record's `test_error` measured.
    """
    if weights is not None:
        return Classifier(*shipped_net(os.fspath(run_dir), weights), tta or "none")
    run = RunDir(run_dir)
    missing = [p.name for p in (run.model, run.data_info) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run.path} has no {' or '.join(missing)}: pass the --model_dir of a finished training run."
        )
    model = run.load_model(compile=False)  # a damaged model.keras: `DamagedFile`, with the way out
    config = run.read_config()
    return Classifier(model, DataInfo.load(run.path), tta or (config.run.tta if config else "none"))
