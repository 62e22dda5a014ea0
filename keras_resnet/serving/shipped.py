"""The nets this package ships, as serving takes a trained run: the network and its data's description."""

from __future__ import annotations

import os

import keras

from keras_resnet.data.info import CIFAR_RECIPE, DataInfo
from keras_resnet.models import build_model, pretrained


def shipped_net(name: str, weights: str = pretrained.CIFAR10) -> tuple[keras.Model, DataInfo]:
    """The shipped net `name` (`pretrained.shipped_cifar10()`) as its run trained it, without the
    input normalization, and the run's evaluation view (its mean image) and class names; one line
    naming the shipped nets when `name` is not one."""
    if weights != pretrained.CIFAR10:
        raise ValueError(f"weights={weights!r}: the nets shipped to load are weights={pretrained.CIFAR10!r}.")
    record = pretrained.cifar10_record(name)
    model = build_model(name, weights=os.fspath(record.weights), **record.build)
    size = model.input_shape[1]
    info = DataInfo(
        name=pretrained.CIFAR10,
        recipe=CIFAR_RECIPE,
        num_classes=len(record.class_names),
        class_names=record.class_names,
        image_size=size,
        resize_size=size,
        mean=record.mean,
        train_examples=record.train_examples,
        data_sha256=record.data_sha256,
    )
    return model, info
