"""keras-resnet: the networks of "Deep Residual Learning for Image Recognition" in Keras 3."""

from keras_resnet.counting import count
from keras_resnet.layers import BatchNormalization, ZeroPadShortcut
from keras_resnet.models import build_model
from keras_resnet.specs import get_spec, list_models

__all__ = ["build_model", "count", "get_spec", "list_models", "ZeroPadShortcut", "BatchNormalization"]
__version__ = "0.1.0"
