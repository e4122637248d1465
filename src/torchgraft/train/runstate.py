"""Training-state checkpoints: written atomically, read safely, with every RNG needed for an exact resume."""

from __future__ import annotations

import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "StateError",
    "get_loader_rng_state",
    "get_rng_state",
    "load_training_state",
    "loader_generators",
    "read_state",
    "set_loader_rng_state",
    "set_rng_state",
    "training_state",
    "write_state",
]


class StateError(ValueError):
    """A training-state file that cannot be read back (damaged, or not written by torchgraft)."""


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


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The distinct random generators a DataLoader draws from: its own ``generator=``, its sampler's and its
    batch sampler's sampler's (each shuffle and each worker seed comes from one of them)."""
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None),
    ]
    found: list[torch.Generator] = []
    for generator in candidates:
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def get_loader_rng_state(loaders: list[Any]) -> list[list[torch.Tensor]]:
    """The state of every generator of each loader (see :func:`loader_generators`)."""
    return [[g.get_state() for g in loader_generators(loader)] for loader in loaders]


def set_loader_rng_state(loaders: list[Any], states: list[list[torch.Tensor]]) -> None:
    """Restore what :func:`get_loader_rng_state` returned for the same loaders.

    Raises:
        StateError: the loaders have other generators than when the state was saved.
    """
    for loader, saved in zip(loaders, states, strict=False):
        generators = loader_generators(loader)
        if len(generators) != len(saved):
            raise StateError(
                f"resume: the checkpoint holds {len(saved)} data-loader generator state(s) but the loader has "
                f"{len(generators)}; resume with loaders built the same way (same generator=, same shuffle)."
            )
        for generator, state in zip(generators, saved, strict=True):
            generator.set_state(state)


def write_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` to a temporary file, flush it to disk, then rename it over ``path``:
    a crash at any moment leaves either the previous file or the new one, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # an interrupted write leaves nothing behind
    return path


def read_state(path: str | Path) -> dict[str, Any]:
    """Read a training state written by :func:`write_state` (``weights_only=True``: plain data only).

    Raises:
        FileNotFoundError: no such file, with the fix.
        StateError: the file is damaged (empty, truncated) or holds code or objects that plain data cannot
            (it was not written by torchgraft); nothing in it is run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"resume: no checkpoint at {path}; pass the last.pt of an earlier run's checkpoint_dir."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise StateError(
            f"resume: {path} holds objects that weights_only loading refuses (not a torchgraft training state): "
            f"{reason[:200]}"
        ) from None
    except (EOFError, RuntimeError, OSError, ValueError) as error:
        raise StateError(
            f"resume: {path} is damaged or not a training state ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else 'empty file'}); resume from another "
            f"checkpoint (best.pt) or start again."
        ) from None
    if not isinstance(state, dict) or "model" not in state or "fit" not in state:
        raise StateError(f"resume: {path} is not a torchgraft training state (no model/fit entries).")
    return state


def training_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any = None,
    scaler: Any = None,
    loaders: list[Any] = (),  # type: ignore[assignment]
    model_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    **counters: Any,
) -> dict[str, Any]:
    """Everything a resumed fit needs: the model's, optimizer's, scheduler's and gradient scaler's states,
    every random generator (global ones and the data loaders' own ``generator=``), and ``counters``
    (epoch, step, history, ...) as given. ``model_state``/``optimizer_state`` stand for the objects' own
    ``state_dict()`` (whole tensors gathered from a sharded model)."""
    return {
        "model": model_state if model_state is not None else model.state_dict(),
        "optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": get_rng_state(),
        "loader_rng": get_loader_rng_state(list(loaders)),
        **counters,
    }


def load_training_state(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any = None,
    scaler: Any = None,
    loaders: list[Any] = (),  # type: ignore[assignment]
) -> None:
    """Put what :func:`training_state` captured back into the same objects (the counters stay in ``state``);
    a ``None`` model or optimizer entry was loaded by the caller."""
    if state["model"] is not None:
        model.load_state_dict(state["model"])
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    set_loader_rng_state(list(loaders), state.get("loader_rng", []))
