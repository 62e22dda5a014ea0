"""`DataInfo`: what a trained model needs to know about its data, and the recipes' sizes.

Saved beside every run as `data_info.json`, exported inside every SavedModel, read back by
serving and by `keras_resnet.load`: classes, recipe, view size, the mean, and the fingerprint of
the training data (`data_sha256`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from keras_resnet import files

CIFAR_RECIPE = "cifar"
IMAGENET_RECIPE = "imagenet"

CIFAR_PAD = 4
# The paper's ImageNet numbers at 224: scale range of the shorter side and the evaluation resize.
IMAGENET_CROP = 224
IMAGENET_SCALE = (256, 480)
IMAGENET_RESIZE = 256
# Standard per-channel ImageNet train mean (0-255), used for imagenet2012 where a pass over
# 1.28M images to recompute it would cost more than it could change.
IMAGENET_MEAN = (123.68, 116.78, 103.94)


@dataclasses.dataclass(frozen=True, eq=False)
class DataInfo:
    """Everything about a dataset that training, evaluation and serving must agree on.

    Attributes:
        name: dataset name (`cifar10`, `imagenette`, `digits`, or `folder:<root>`).
        recipe: "cifar" (section 4.2) or "imagenet" (section 3.4) augmentation and evaluation.
        num_classes: number of classes.
        class_names: one name per label index.
        image_size: side of the square model input (training crop == evaluation view).
        resize_size: evaluation resizes the shorter side to this before the center crop
            (imagenet recipe; equals image_size for cifar).
        mean: float32 values subtracted from 0-255 pixels: a (H, W, 3) mean image (cifar) or
            a (3,) per-channel mean (imagenet).
        train_examples: examples in the training split actually used.
        data_sha256: fingerprint of the training split's files (`data.fingerprint`); empty in
            the files of versions before 0.4.

    Equal infos compare equal and hash alike (the mean by value).
    """

    name: str
    recipe: str
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int
    resize_size: int
    mean: np.ndarray
    train_examples: int
    data_sha256: str = ""

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["class_names"] = list(self.class_names)
        d["mean"] = np.asarray(self.mean, np.float32).tolist()
        return d

    @classmethod
    def from_json(cls, d: dict) -> DataInfo:
        d = dict(d)
        d["class_names"] = tuple(d["class_names"])
        d["mean"] = np.asarray(d["mean"], np.float32)
        return cls(**d)

    def __eq__(self, other) -> bool:
        if not isinstance(other, DataInfo):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_json(), sort_keys=True))

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        return files.write_json(pathlib.Path(directory) / "data_info.json", self.to_json(), indent=None)

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> DataInfo:
        path = pathlib.Path(directory) / "data_info.json"
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError, AttributeError) as err:  # not JSON, or not this record
            raise ValueError(
                f"{path} is not a data description this version writes ({type(err).__name__}: "
                f"{str(err)[:80]}): take it from the training run's --model_dir, or train again."
            ) from None


def scale_range(image_size: int) -> tuple[int, int]:
    """Range of the shorter side for scale augmentation: the paper's [256, 480] at 224, scaled."""
    return tuple(round(s * image_size / IMAGENET_CROP) for s in IMAGENET_SCALE)


def resize_size_for(image_size: int) -> int:
    """Shorter side before the evaluation center crop: the paper's 256 at 224, scaled."""
    return round(IMAGENET_RESIZE * image_size / IMAGENET_CROP)
