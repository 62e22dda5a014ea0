"""keras-resnet: the networks of "Deep Residual Learning for Image Recognition" in Keras 3.

    import keras_resnet as kr
    model = kr.build_model("resnet56")          # CIFAR, 6n+2 layers, option A
    kr.count(model).table(); kr.list_models()
    classifier = kr.load("runs/resnet20")     # a trained run: raw images in, probabilities out

Importing the package imports no TensorFlow (a command reads its flags first); the names below
load their modules on first use. `register()` (`models.register`) registers every custom object a saved model
refers to (the layers, the learning-rate schedule, the loss and the error metric), so that
`keras.saving.load_model(path, safe_mode=True)` loads a run's `model.keras`: it runs on first use
of any name here, on import of any stage package (`keras_resnet.data`, `.training`, ...), and at
once when Keras is already imported.

Layers, from the bottom up: a module imports only from its own row and the rows before it, and no
import, function-local ones included, closes a cycle between modules (tests/test_layers.py reads
this table and walks every import):

| layer | modules |
|---|---|
| base | _lazy, files, runtime, workarounds, console, plots, interrupts |
| specs | models.specs |
| config | config, rundir |
| models | models |
| data | data |
| serving | serving |
| training | training |
| tuning | tuning |
| experiments | experiments |
| commands | predict, reproduce, __main__, __init__ |

A row names modules and packages relative to `keras_resnet` (`__init__`: this module, the
package's face); the most specific name places a module (`models.specs` is below `config`, the
rest of `models` above it, where the builder takes a run's `ModelConfig`).
"""

import sys

from keras_resnet import _lazy
from keras_resnet.models import register

__version__ = "0.4.0"


__getattr__, __dir__ = _lazy.exports(
    __name__,
    {
        "build_model": "keras_resnet.models.builder",
        "count": "keras_resnet.models.counting",
        "from_keras_applications": "keras_resnet.models.builder",
        "get_spec": "keras_resnet.models.specs",
        "list_models": "keras_resnet.models.specs",
        "load": "keras_resnet.serving.loading",
        "with_test_time_augmentation": "keras_resnet.models.tta",
        "BatchNormalization": "keras_resnet.models.layers",
        "HorizontalFlip": "keras_resnet.models.layers",
        "InputNormalization": "keras_resnet.models.layers",
        "Translate": "keras_resnet.models.layers",
        "ZeroPadShortcut": "keras_resnet.models.layers",
    },
    on_load=register,
)

if "keras" in sys.modules:  # Keras is imported already: registering costs nothing more
    register()
