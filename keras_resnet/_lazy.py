"""Lazy package attributes (PEP 562): a package names its API without importing it.

Importing `keras_resnet` or one of its stage packages costs no TensorFlow import, so a command
reads its flags (and answers `--help`) before TensorFlow starts; the module behind a name is
imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def exports(package: str, names: dict[str, str], on_load: Callable[[], None] | None = None):
    """(`__getattr__`, `__dir__`) for `package`, whose attribute `name` lives in module `names[name]`
    (relative to the package when it starts with a dot); `on_load` runs before the first import."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if on_load is not None:
            on_load()
        module = importlib.import_module(names[name], package)
        return getattr(module, name) if hasattr(module, name) else module

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
