"""Imagenette, fastai's 10-class subset of ImageNet: TFDS's 160 px copy, or an image folder beside it.

An image folder `imagenette/{train,val}/<wnid>/*.JPEG` next to the TFDS data dir (as
`$KERAS_RESNET_DATA` holds it) is used when TFDS has no copy; its classes get their names.
"""

from __future__ import annotations

import pathlib

from keras_resnet.data import folders, tfds
from keras_resnet.data.storage import Source, SourceRequest


def imagenette(request: SourceRequest) -> Source:
    beside = pathlib.Path(request.tfds_dir).parent / "imagenette"
    if not (pathlib.Path(request.tfds_dir) / tfds.IMAGENETTE_TFDS).is_dir() and (beside / "train").is_dir():
        return folders.folder(request, beside, "imagenette")
    try:
        return tfds.imagenette_tfds(request)
    except tfds.DataUnavailable as err:
        raise tfds.DataUnavailable(
            f"{err} An image folder {beside}/{{train,val}}/<wnid>/*.JPEG works too."
        ) from None
