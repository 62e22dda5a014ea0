"""Test-time augmentation: a model averaged over views of its input (flips, small translations)."""

from __future__ import annotations

import keras

from keras_resnet.models.layers import HorizontalFlip, Translate

# Test-time augmentation: the views whose predictions are averaged. Translations are by 2 pixels
# (half the training's 4) with zero padding, which is the mean colour after mean subtraction.
TTA_VIEWS = {
    "none": ((False, 0, 0),),
    "flip": ((False, 0, 0), (True, 0, 0)),
    "flip_translate": tuple((flip, d, d) for flip in (False, True) for d in (0, 2, -2)),
}


def with_test_time_augmentation(model: keras.Model, mode: str) -> keras.Model:
    """`model` averaged over the views of `TTA_VIEWS[mode]` (same weights, one output).

    "none" returns `model` itself. The views are registered layers, so the averaged model saves,
    loads with `safe_mode=True` and exports like the model.
    """
    if mode not in TTA_VIEWS:
        raise ValueError(f"Unknown test-time augmentation {mode!r}: expected one of {', '.join(TTA_VIEWS)}.")
    if mode == "none":
        return model
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    outputs = []
    for flip, dy, dx in TTA_VIEWS[mode]:
        view = HorizontalFlip(name=f"tta_flip_{len(outputs)}")(inputs) if flip else inputs
        if dy or dx:
            view = Translate(dy, dx, name=f"tta_translate_{len(outputs)}")(view)
        outputs.append(model(view))
    averaged = keras.layers.Average(dtype="float32", name="tta_mean")(outputs)
    return keras.Model(inputs, averaged, name=f"{model.name}_tta_{mode}")
