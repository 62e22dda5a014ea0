"""keras-resnet: the networks of "Deep Residual Learning for Image Recognition" in Keras 3.

Importing the package registers every custom object a saved model refers to (the layers, the
learning-rate schedule, the loss and the error metric), so `keras.models.load_model(path,
safe_mode=True)` loads a `model.keras` of a training run, compiled, in a fresh process.
"""

from keras_resnet import runtime

runtime.import_tensorflow()  # before Keras imports it: without the CUDA-probe noise of CPU machines

from keras_resnet import optimization  # noqa: E402, F401  (registers the schedule, loss and metric)
from keras_resnet.counting import count  # noqa: E402
from keras_resnet.layers import BatchNormalization, HorizontalFlip, Translate, ZeroPadShortcut  # noqa: E402
from keras_resnet.models import build_model, with_test_time_augmentation  # noqa: E402
from keras_resnet.specs import get_spec, list_models  # noqa: E402

__all__ = [
    "BatchNormalization",
    "HorizontalFlip",
    "Translate",
    "ZeroPadShortcut",
    "build_model",
    "count",
    "get_spec",
    "list_models",
    "with_test_time_augmentation",
]
__version__ = "0.3.0"
