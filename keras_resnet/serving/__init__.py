"""Serving: versioned SavedModels for TF Serving, and a trained run as a Python classifier.

- `export`: `export(model, info, base)`, `export_run(model_dir, base)` and
  `export_shipped(name, base)`, atomic versions.
- `shipped`: a net this package ships as a trained run's model and data description.
- `signatures`: the stable names of the signatures, inputs and outputs.
- `decode`: encoded request images to evaluation views, bad bytes refused by index.
- `warmup`: TF Serving's warmup requests and the example-prediction line.
- `loading`: `load(run_dir)` or `load(name, weights="cifar10")` -> `Classifier` (what `kr.load` is).
"""

from keras_resnet import _lazy
from keras_resnet.models import register

register()  # a model.keras loads once any stage package is imported

__getattr__, __dir__ = _lazy.exports(
    __name__,
    {
        "export": ".exporting",
        "export_run": ".exporting",
        "export_shipped": ".exporting",
        "next_version": ".exporting",
        "SIGNATURES": ".signatures",
        "example_prediction": ".warmup",
        "load": ".loading",
        "Classifier": ".loading",
    },
)
