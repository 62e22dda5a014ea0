"""Dataset names: each one row, its source (a module's function), its recipe and its defaults.

A new source is one module with a `function(SourceRequest) -> Source` and one row of `DATASETS`;
any other name that is a directory, or `folder:<root>`, is an image folder (`FOLDER`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable

from keras_resnet.data import digits, folders, imagenette, tfds
from keras_resnet.data.info import CIFAR_RECIPE, IMAGENET_CROP, IMAGENET_RECIPE
from keras_resnet.data.storage import Source, SourceRequest


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Where a dataset's images come from, how it is augmented and viewed, and its view size."""

    source: Callable[[SourceRequest], Source]
    recipe: str
    default_size: int
    mirror: bool = True  # whether a horizontally flipped image keeps its class


DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset(tfds.cifar, CIFAR_RECIPE, 32),
    "cifar100": Dataset(tfds.cifar, CIFAR_RECIPE, 32),
    "imagenette": Dataset(imagenette.imagenette, IMAGENET_RECIPE, 128),
    "imagenet2012": Dataset(tfds.imagenet2012, IMAGENET_RECIPE, IMAGENET_CROP),
    # scikit-learn's handwritten digits, inside its wheel: no download. A mirrored digit is another shape.
    "digits": Dataset(digits.digits, CIFAR_RECIPE, 32, mirror=False),
}
FOLDER = Dataset(folders.source, IMAGENET_RECIPE, 128)


def lookup(name: str) -> Dataset:
    """The row of `name`: a registered dataset, `folder:<root>` or an existing directory."""
    if name in DATASETS:
        return DATASETS[name]
    if name.startswith(folders.FOLDER_PREFIX) or os.path.isdir(name):
        return FOLDER
    raise ValueError(
        f"Unknown dataset {name!r}: expected one of {', '.join(DATASETS)}, or folder:<root> / an existing "
        "directory laid out as ROOT/<split>/<class>/<image>."
    )


def resolve(name: str, *, data_dir: str | None = None, **request) -> Source:
    """The images of a dataset name; `request` as `SourceRequest`'s fields.

    Raises:
        ValueError: an unknown name or a bad folder layout.
        FileNotFoundError (`DataUnavailable`): data that is missing and cannot be fetched.
    """
    tfds_dir = str(pathlib.Path(data_dir).expanduser() if data_dir else tfds.default_tfds_dir())
    return lookup(name).source(SourceRequest(name=name, tfds_dir=tfds_dir, **request))
