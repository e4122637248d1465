"""Where torchgraft keeps what it remembers between runs (manifests, feature stores, timm's model names):
``$TORCHGRAFT_CACHE``, else ``$XDG_CACHE_HOME/torchgraft``, else ``~/.cache/torchgraft``. Standard library only,
so the command line can read it before torch is imported."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """Where torchgraft keeps what it remembers between runs: ``$TORCHGRAFT_CACHE``, else
    ``~/.cache/torchgraft`` (``$XDG_CACHE_HOME/torchgraft`` when that is set)."""
    given = os.environ.get("TORCHGRAFT_CACHE")
    if given:
        return Path(given).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torchgraft"
