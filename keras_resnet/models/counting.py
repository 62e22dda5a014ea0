"""Parameters and multiply-adds of a built model, layer by layer.

Multiply-adds count convolutions and fully-connected layers, as Table 1 of the paper does
("FLOPs" there are multiply-adds); BN, ReLU, additions and pooling are left out.
"""

from __future__ import annotations

import dataclasses
import math

import keras


@dataclasses.dataclass(frozen=True)
class LayerCount:
    name: str
    kind: str
    output_shape: tuple
    params: int  # trainable
    macs: int


@dataclasses.dataclass(frozen=True)
class ModelCount:
    layers: tuple[LayerCount, ...]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.layers)

    def table(self, only_counted: bool = True) -> str:
        """A plain-text table, one row per layer with parameters or multiply-adds, and a total."""
        rows = [r for r in self.layers if (r.params or r.macs or not only_counted)]
        width = max([len(r.name) for r in rows] + [5])
        lines = [f"{'layer':<{width}}  {'type':<22} {'output':<18} {'params':>12} {'mult-adds':>15}"]
        for r in rows:
            shape = "x".join(str(d) for d in r.output_shape[1:])
            lines.append(f"{r.name:<{width}}  {r.kind:<22} {shape:<18} {r.params:>12,} {r.macs:>15,}")
        lines.append(f"{'total':<{width}}  {'':<22} {'':<18} {self.params:>12,} {self.macs:>15,}")
        return "\n".join(lines)


def _layer_macs(layer: keras.layers.Layer) -> int:
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        out = layer.output.shape
        cin = layer.input.shape[-1]
        return out[1] * out[2] * kh * kw * (cin // layer.groups) * layer.filters
    if isinstance(layer, keras.layers.Dense):
        return int(math.prod(layer.input.shape[1:])) * layer.units
    return 0


def count(model: keras.Model) -> ModelCount:
    """Trainable parameters and multiply-adds (batch of one) of every layer of `model`."""
    rows = []
    for layer in model.layers:
        params = sum(int(math.prod(w.shape)) for w in layer.trainable_weights)
        is_input = isinstance(layer, keras.layers.InputLayer)
        shape = tuple(layer.batch_shape if is_input else layer.output.shape)
        rows.append(LayerCount(layer.name, type(layer).__name__, shape, params, _layer_macs(layer)))
    return ModelCount(tuple(rows))
