"""The search space of `train.py --tune`: `--search` parsed, and a trial's values as a `TrainConfig`.

Pure Python: `make_space` turns `--search=shortcut,depth=20/56` into {name: values} with the
configured value first, and `apply_values` a trial's values into the configuration it trains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from keras_resnet.config import TrainConfig
from keras_resnet.models import specs

SEARCHABLE = ("plain", "shortcut", "depth", "learning_rate", "weight_decay")

# Values tried when `--search` names a hyperparameter without values. The configured value (the
# paper's by default) is always tried first: GridSearch starts from the defaults.
CIFAR_DEPTHS = (20, 32, 44, 56, 110)  # Table 6 without 1202, which takes weeks on one GPU
IMAGENET_DEPTHS = (18, 34, 50, 101, 152)
LEARNING_RATES = (0.1, 0.05, 0.2)  # the paper's 0.1, halved and doubled
WEIGHT_DECAYS = (1e-4, 5e-5, 5e-4)  # the paper's 1e-4, and the 5e-4 of later CIFAR work


def parse_search(items: Sequence[str] | str) -> dict[str, tuple | None]:
    """Parses `--search` entries: `name` (default values) or `name=v1/v2/...` (those values).

    Returns:
        {name: values or None}, in the order given.

    Raises:
        ValueError: no entry, an unknown or repeated name, or an unparsable value.
    """
    if isinstance(items, str):
        items = items.split(",")
    parsed: dict[str, tuple | None] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        name, _, raw = item.partition("=")
        name = name.strip()
        if name not in SEARCHABLE:
            raise ValueError(
                f"--search: unknown hyperparameter {name!r}; searchable: {', '.join(SEARCHABLE)} "
                "(e.g. --search=shortcut,depth=20/56)."
            )
        if name in parsed:
            raise ValueError(f"--search names {name!r} twice.")
        if not _:
            parsed[name] = None
            continue
        if name == "plain":
            raise ValueError("--search: `plain` takes no values (it always compares plain and residual).")
        values = tuple(v.strip() for v in raw.split("/") if v.strip())
        if not values:
            raise ValueError(f"--search: {name}= lists no values; write e.g. {name}=a/b or just {name}.")
        try:
            parsed[name] = tuple(_parse_value(name, v) for v in values)
        except ValueError as err:
            raise ValueError(f"--search: bad value in {item!r}: {err}") from None
    if not parsed:
        raise ValueError(
            "The search space is empty: --search must name at least one of "
            f"{', '.join(SEARCHABLE)} (e.g. --search=shortcut)."
        )
    return parsed


def _parse_value(name: str, raw: str) -> Any:
    if name == "shortcut":
        return specs.check_shortcut(raw)
    if name == "depth":
        return int(raw)
    value = float(raw)
    if not (math.isfinite(value) and value >= 0) or (name == "learning_rate" and value == 0):
        raise ValueError(f"{name} must be {'> 0' if name == 'learning_rate' else '>= 0'}, got {raw}")
    return value


def base_values(cfg: TrainConfig) -> dict[str, Any]:
    """The configured value of every searchable hyperparameter."""
    return {
        "plain": not cfg.model.spec.residual,
        "shortcut": specs.check_shortcut(cfg.model.resolved_shortcut),
        "depth": cfg.model.spec.depth,
        "learning_rate": float(cfg.optim.learning_rate),
        "weight_decay": float(cfg.optim.weight_decay),
    }


def apply_values(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """`cfg` with the searchable hyperparameters in `values` replaced (same model family)."""
    merged = {**base_values(cfg), **values}
    model = f"{'plain' if merged['plain'] else 'resnet'}{merged['depth']}"
    family = cfg.model.spec.family
    # A CIFAR depth that is also a Table 1 depth (50, 152) needs the family spelled out.
    implied = specs.get_spec(model).family if merged["depth"] in specs.IMAGENET_SPECS else specs.CIFAR
    return cfg.replace(
        model=model,
        family=cfg.model.family or ("" if implied == family else family),
        shortcut=merged["shortcut"],
        learning_rate=merged["learning_rate"],
        weight_decay=merged["weight_decay"],
    )


def make_space(cfg: TrainConfig, search: Sequence[str] | str) -> dict[str, tuple]:
    """The search space: {name: values}, the configured value first, in `SEARCHABLE` order.

    Raises:
        ValueError: an empty space, a depth the model family lacks, a shortcut search on a plain
            net, or a space with a single configuration.
    """
    parsed = parse_search(search)
    base = base_values(cfg)
    family = cfg.model.spec.family
    defaults = {
        "plain": (False, True),
        "shortcut": specs.SHORTCUTS,
        "depth": CIFAR_DEPTHS if family == specs.CIFAR else IMAGENET_DEPTHS,
        "learning_rate": LEARNING_RATES,
        "weight_decay": WEIGHT_DECAYS,
    }
    space = {}
    for name in SEARCHABLE:
        if name not in parsed:
            continue
        values = parsed[name] or defaults[name]
        if parsed[name] is None or name == "plain":
            values = (base[name], *values)  # the configured value first, even when not a paper value
        space[name] = tuple(dict.fromkeys(values))
    for depth in space.get("depth", ()):
        try:
            specs.get_spec(f"resnet{depth}", family)
        except ValueError as err:
            raise ValueError(f"--search: depth={depth}: {err}") from None
    if "shortcut" in space and base["plain"] and "plain" not in space:
        raise ValueError(
            f"--search=shortcut compares shortcuts of a residual net, but --model={cfg.model.name} is plain: "
            f"use --model=resnet{base['depth']}, or add `plain` to --search to compare both."
        )
    if space_size(space) < 2:
        raise ValueError(
            f"The search space {space} holds a single configuration: nothing to compare. Give a "
            "hyperparameter two values or more (e.g. --search=shortcut or depth=20/56)."
        )
    return space


def space_size(space: dict[str, tuple]) -> int:
    """Configurations in `space` (shortcuts only count for residual nets)."""
    others = math.prod(len(v) for k, v in space.items() if k not in ("plain", "shortcut"))
    shortcuts = len(space.get("shortcut", (None,)))
    plain = space.get("plain", (False,))
    return others * sum(1 if p else shortcuts for p in plain)
