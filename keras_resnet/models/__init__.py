"""The networks: the paper's tables as data, one builder, its registered layers, and their counts.

- `specs`: Table 1 and section 4.2 as rows (`get_spec`, `list_models`); pure Python.
- `network`: the layers of a row (`build_network`); `builder`: `build_model`, the one entry that
  builds a row's network and then loads its weights (`pretrained`).
- `layers`: registered layers (zero-padding shortcut, replica-safe fused BN, test-time views,
  input normalization).
- `pretrained`: `build_model(weights=...)`'s sources (Keras Applications' ImageNet weights, the
  shipped CIFAR-10 nets, a file) and the conversion of Keras Applications' ResNets.
- `tta`: a model averaged over test-time views.
- `whitening`: the stem initialised as the whitening of the training images' patches (`--stem_init=pca`).
- `counting`: parameters and multiply-adds per layer.
- `compiled`: the registered loss, error metric, learning-rate schedule and SGD a compiled
  `model.keras` refers to.

Every module here runs on any Keras backend (JAX and torch shown by tests/test_backends.py) except
`tf_kernels`, TensorFlow's fused batch norm, which `layers` uses only on TensorFlow.

`register()` registers every custom object a saved model refers to (these layers and `compiled`);
every stage package calls it on import, so that `keras.saving.load_model(path, safe_mode=True)`
loads a run's `model.keras`.
"""

from keras_resnet import _lazy


def register() -> None:
    """Registers the custom objects saved models refer to (once; imports TensorFlow)."""
    from keras_resnet import runtime

    runtime.import_tensorflow()
    from keras_resnet.models import compiled, layers  # noqa: F401  (importing them registers them)


__getattr__, __dir__ = _lazy.exports(
    __name__,
    {
        "build_model": ".builder",
        "build_from_config": ".builder",
        "count": ".counting",
        "from_keras_applications": ".builder",
        "shipped_cifar10": ".pretrained",
        "InputNormalization": ".layers",
        "get_spec": ".specs",
        "list_models": ".specs",
        "TTA_VIEWS": ".tta",
        "with_test_time_augmentation": ".tta",
    },
)
