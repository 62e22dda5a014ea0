"""The paper's architecture tables as data, and the choices and defaults of the builder's arguments.

Every network of He et al. (2015) is one row here; `models.build_model` is the only code that
turns a row into layers. A stage is `(block, filters, repeats)`, as in TF Model Garden's
`RESNET_SPECS`: `filters` is the width of the block's 3x3 convolutions (a bottleneck block outputs
4x that). Pure Python, below both `config` (whose flags offer these choices) and the builder
(which takes them), so that each choice, default and check has one home.
"""

from __future__ import annotations

import dataclasses
import re

BASIC = "basic"
BOTTLENECK = "bottleneck"
BOTTLENECK_EXPANSION = 4

CIFAR = "cifar"
IMAGENET = "imagenet"
FAMILIES = (CIFAR, IMAGENET)

SHORTCUTS = ("A", "B", "C")
# Section 4.1 uses option B for the bottleneck nets and 4.2 option A on CIFAR; B for ImageNet's
# 18/34 too, the common reference (torchvision, Keras); Table 2's 18/34 used A: pass shortcut="A".
DEFAULT_SHORTCUT = {CIFAR: "A", IMAGENET: "B"}

# Where a bottleneck block strides: the paper's first 1x1, or its 3x3 ("ResNet v1.5" elsewhere).
BOTTLENECK_STRIDES = ("1x1", "3x3")
# Strided windows padded on every side as the paper's nets, or TensorFlow's "same" (bottom/right).
PADDINGS = ("symmetric", "same")
BN_MOMENTUM = 0.9  # PyTorch's 0.1 in Keras' convention; Caffe-era implementations use the same.

Stage = tuple[str, int, int]  # (block, filters, repeats)

# Table 1: blocks per stage conv2_x .. conv5_x.
IMAGENET_SPECS: dict[int, list[Stage]] = {
    18: [(BASIC, 64, 2), (BASIC, 128, 2), (BASIC, 256, 2), (BASIC, 512, 2)],
    34: [(BASIC, 64, 3), (BASIC, 128, 4), (BASIC, 256, 6), (BASIC, 512, 3)],
    50: [(BOTTLENECK, 64, 3), (BOTTLENECK, 128, 4), (BOTTLENECK, 256, 6), (BOTTLENECK, 512, 3)],
    101: [(BOTTLENECK, 64, 3), (BOTTLENECK, 128, 4), (BOTTLENECK, 256, 23), (BOTTLENECK, 512, 3)],
    152: [(BOTTLENECK, 64, 3), (BOTTLENECK, 128, 8), (BOTTLENECK, 256, 36), (BOTTLENECK, 512, 3)],
}

# Section 4.2: 6n+2 layers, three stages of n basic blocks on 32/16/8 maps with 16/32/64 filters.
CIFAR_FILTERS = (16, 32, 64)
CIFAR_NAMED_DEPTHS = (20, 32, 44, 56, 110, 1202)


def cifar_stages(depth: int) -> list[Stage]:
    """Stages of the CIFAR net with `depth` = 6n + 2 layers."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR depth must be 6n+2 with n >= 1 (8, 14, 20, 26, ...; the paper names "
            f"{', '.join(map(str, CIFAR_NAMED_DEPTHS))}), got {depth}."
        )
    n = (depth - 2) // 6
    return [(BASIC, f, n) for f in CIFAR_FILTERS]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One network of the paper: which family, residual or plain, and its stages."""

    name: str
    family: str
    depth: int
    residual: bool
    stages: tuple[Stage, ...]

    @property
    def default_input_shape(self) -> tuple[int, int, int]:
        return (32, 32, 3) if self.family == CIFAR else (224, 224, 3)

    @property
    def default_num_classes(self) -> int:
        return 10 if self.family == CIFAR else 1000


def total_stride(spec: ModelSpec) -> int:
    """How many input pixels one pixel of the last feature map spans: 4 (CIFAR), 32 (ImageNet).

    Every stage after the first halves the resolution; the ImageNet stem (7x7/2 conv, 3x3/2 max
    pool) divides it by 4 more. A smaller input leaves the last stages nothing to see.
    """
    stem = 1 if spec.family == CIFAR else 4
    return stem * 2 ** (len(spec.stages) - 1)


def check_shortcut(option: str) -> str:
    """Returns the shortcut letter upper-cased, or raises a ValueError naming the valid ones."""
    if not isinstance(option, str) or option.strip().upper() not in SHORTCUTS:
        raise ValueError(f"Unknown shortcut option {option!r}: expected one of {', '.join(SHORTCUTS)}.")
    return option.strip().upper()


def check_choice(name: str, value, choices: tuple) -> None:
    """Raises a ValueError naming `name`'s valid values when `value` is not one of `choices`."""
    if value not in choices:
        valid = ", ".join(c or "(empty)" if isinstance(c, str) else repr(c) for c in choices)
        raise ValueError(f"{name}={value!r}: expected one of {valid}.")


def check_bn_momentum(momentum: float) -> None:
    """Raises a ValueError unless `momentum` (of the batch norms' moving statistics) is in (0, 1)."""
    if not 0 < momentum < 1:
        raise ValueError(f"bn_momentum must be in (0, 1) (e.g. 0.9, PyTorch's 0.1), got {momentum}.")


def check_ghost_batch(ghost: int, batch: int, replicas: int = 1) -> None:
    """Raises a ValueError unless ghost batches of `ghost` examples (0: off) divide each of `replicas`
    replicas' share of `batch`."""
    if ghost and (batch // replicas) % ghost:
        share = f"--batch_size={batch}"
        if replicas > 1:
            share = f"{batch // replicas} per replica of {share}"
        raise ValueError(
            f"--ghost_batch_size={ghost} must divide {share}: change --ghost_batch_size or --batch_size."
        )


_NAME = re.compile(r"^(resnet|plain)(\d+)$")


def list_models() -> list[str]:
    """Names accepted by `build_model` (any other CIFAR depth 6n+2 works too)."""
    depths = sorted(IMAGENET_SPECS) + list(CIFAR_NAMED_DEPTHS)
    return [f"{kind}{d}" for kind in ("resnet", "plain") for d in depths]


def get_spec(name: str, family: str | None = None) -> ModelSpec:
    """Resolves a model name like `resnet56` or `plain34` into its table row.

    Depths of Table 1 (18/34/50/101/152) are ImageNet nets unless `family="cifar"`; any other
    depth must be 6n+2 and is a CIFAR net.
    """
    match = _NAME.match(name.strip().lower()) if isinstance(name, str) else None
    if not match:
        raise ValueError(
            f"Unknown model {name!r}: expected 'resnet<depth>' or 'plain<depth>'. "
            f"Available: {', '.join(list_models())}."
        )
    if family is not None and family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}: expected one of {FAMILIES}.")
    kind, depth = match.group(1), int(match.group(2))
    if family is None:
        family = IMAGENET if depth in IMAGENET_SPECS else CIFAR
    if family == IMAGENET:
        if depth not in IMAGENET_SPECS:
            raise ValueError(
                f"ImageNet depth must be one of {sorted(IMAGENET_SPECS)}, got {depth} "
                f"(model {name!r}). Available: {', '.join(list_models())}."
            )
        stages = IMAGENET_SPECS[depth]
    else:
        try:
            stages = cifar_stages(depth)
        except ValueError as err:
            raise ValueError(
                f"Unknown model {name!r}: {err} Available: {', '.join(list_models())}."
            ) from None
    return ModelSpec(f"{kind}{depth}", family, depth, kind == "resnet", tuple(stages))
