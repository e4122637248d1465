"""Training-state checkpoints: written atomically, read safely, with every RNG needed for an exact resume."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

__all__ = ["get_rng_state", "read_state", "set_rng_state", "write_state"]


def get_rng_state() -> dict[str, Any]:
    """The state of Python's, torch's CPU and CUDA random generators (data order, dropout, augmentation)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """Python's RNG state is nested tuples; a checkpoint round trip may give lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def write_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` to a temporary file, flush it to disk, then rename it over ``path``:
    a crash at any moment leaves either the previous file or the new one, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def read_state(path: str | Path) -> dict[str, Any]:
    """Read a training state written by :func:`write_state` (``weights_only=True``: plain data only).

    Raises:
        FileNotFoundError: no such file, with the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"resume: no checkpoint at {path}; pass the last.pt of an earlier run's checkpoint_dir."
        )
    return torch.load(path, map_location="cpu", weights_only=True)
