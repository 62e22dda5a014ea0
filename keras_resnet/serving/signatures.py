"""The names of an export's signatures, inputs and outputs (stable: clients depend on them).

- `serving_default`: `images` tf.string [batch] of encoded JPEG or PNG, any size.
- `predict_pixels`: `pixels` tf.float32 [batch, height, width, 3], RGB in 0..255.
- `predict_pixels_uint8`: `pixels` tf.uint8 [batch, height, width, 3].
Each returns `probabilities` float32 [batch, num_classes], `classes` int32 [batch, k] (top-k label
indices, best first) and `class_names` tf.string [batch, k].
"""

IMAGES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "predict_pixels"
PIXELS_UINT8_SIGNATURE = "predict_pixels_uint8"
SIGNATURES = (IMAGES_SIGNATURE, PIXELS_SIGNATURE, PIXELS_UINT8_SIGNATURE)
IMAGES = "images"
PIXELS = "pixels"
PROBABILITIES = "probabilities"
CLASSES = "classes"
CLASS_NAMES = "class_names"
