"""The inference function of a trained network, one for the export and for `kr.load`.

Evaluation views (float32 [batch, S, S, 3], the recipe's `eval_preprocess` output) in, float32
class probabilities out: the network with its batch norms folded into its convolutions
(`models.folding`), averaged over the run's test-time views, then a softmax unless the network
ends in one. The export's signatures and `Classifier.predict` both compute exactly this.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_resnet.models.folding import fold_batch_norm
from keras_resnet.models.tta import with_test_time_augmentation


def ends_in_softmax(model: keras.Model) -> bool:
    return getattr(model.layers[-1], "activation", None) is keras.activations.softmax


class Inference:
    """`model` (a flat network, as `build_model` makes) ready to serve with `tta` views.

    `network` is the folded, averaged Keras model (what an export tracks); calling the object
    maps views to probabilities.
    """

    def __init__(self, model: keras.Model, tta: str = "none"):
        # Decided on the model itself: the averaged model ends in an Average layer either way.
        self.softmax_inside = ends_in_softmax(model)
        self.network = with_test_time_augmentation(fold_batch_norm(model), tta)

    def __call__(self, views: tf.Tensor) -> tf.Tensor:
        out = tf.cast(self.network(views, training=False), tf.float32)
        return out if self.softmax_inside else tf.nn.softmax(out)
