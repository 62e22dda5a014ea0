"""The data stage: dataset names to tf.data pipelines with the paper's augmentation.

- `registry`: one row per dataset name (its source, recipe and defaults).
- `tfds`, `imagenette`, `folders`, `digits`: the sources, each a function returning a `Source`.
- `storage`: how a split's images are held (arrays, ragged buffers, files, TFDS streams).
- `splits`: the training data's fingerprint, held-out split and cached mean.
- `recipes`: the cifar and imagenet recipes (options, refusals, training pipeline, evaluation views).
- `views`: the image ops the recipes and serving share; `info`: `DataInfo`.
- `pipeline`: `load(name, ...)` and `load_config(DataConfig, ...)` -> `Datasets`.
"""

from keras_resnet import _lazy
from keras_resnet.models import register

register()  # a model.keras loads once any stage package is imported

__getattr__, __dir__ = _lazy.exports(
    __name__,
    {
        "load": ".pipeline",
        "load_config": ".pipeline",
        "Datasets": ".pipeline",
        "DataInfo": ".info",
        "DataUnavailable": ".tfds",
        "eval_preprocess": ".recipes",
        "ten_crop": ".recipes",
        "DATASETS": ".registry",
    },
)
