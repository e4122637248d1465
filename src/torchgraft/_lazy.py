"""Lazy re-exports for a package's ``__init__`` (PEP 562): a public name is imported from its module the first
time it is read, so importing the package costs what the names a program uses cost, not the whole library
(``import torchgraft`` does not import torchmetrics, torchvision or transformers)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str,
    exports: Mapping[str, tuple[str, ...]],
    namespace: dict[str, Any],
    *,
    modules: Mapping[str, str] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose public names live in other modules: ``exports`` maps a
    module's path to the names it gives, ``modules`` a name to a module given as a whole. A name read once is
    stored in ``namespace`` (the package's ``globals()``), so later reads are plain lookups.

    Example:
        >>> __getattr__, __dir__ = lazy_exports(__name__, {"torchgraft.grafting.surgery": ("graft",)}, globals())
    """
    where = {name: path for path, names in exports.items() for name in names}
    whole = dict(modules or {})

    def __getattr__(name: str) -> Any:
        if name in whole:
            value = importlib.import_module(whole[name])
        elif name in where:
            value = getattr(importlib.import_module(where[name]), name)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where, *whole})

    return __getattr__, __dir__
