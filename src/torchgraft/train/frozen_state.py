"""Checkpoints that do not store what did not change: the frozen weights a fit has not touched are written once,
to ``frozen.pt`` beside the checkpoints, and each checkpoint names them by fingerprint instead of holding them.

A Learner with a ``checkpoint_dir`` takes the fingerprint (BLAKE2b of dtype, shape and bytes) of every
parameter when it is made (:func:`fingerprints`). When a checkpoint is written, a parameter that is frozen
now and still has its first fingerprint is left out of the checkpoint's ``model`` entry; its fingerprint goes
into the checkpoint's ``frozen`` entry and its tensor into ``frozen.pt`` (written once: later checkpoints of the
same frozen weights only refer to it). :func:`full_model_state` gives a checkpoint's whole state dict back from
those tensors — verified against the fingerprints, so a checkpoint is never completed with other weights: a
missing or different ``frozen.pt`` is refused (or, without the file, the given model's own tensors are taken
when their fingerprints match). A frozen-body run (``keep_frozen=-1``, LoRA, the frozen stage) so stores its body
once instead of in every checkpoint, and a resumed or exported best epoch has exactly the weights it trained
with, whatever the model holds by then.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchgraft.train.runstate import StateError, read_state, write_state

__all__ = ["FROZEN_FILE", "fingerprint", "fingerprints", "full_model_state", "leave_out_frozen"]

FROZEN_FILE = "frozen.pt"


def fingerprint(tensor: torch.Tensor) -> str:
    """BLAKE2b (16 bytes, hex) of a tensor's dtype, shape and bytes: equal exactly when the values are."""
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.blake2b(f"{data.dtype}{tuple(data.shape)}".encode(), digest_size=16)
    digest.update(data.reshape(-1).view(torch.uint8).numpy() if data.numel() else b"")
    return digest.hexdigest()


def fingerprints(model: nn.Module) -> dict[str, str]:
    """The fingerprint of every parameter of ``model``, by its ``state_dict`` name."""
    return {name: fingerprint(value) for name, value in _parameters(model).items()}


def _parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, nn.Parameter)}


def leave_out_frozen(
    state: dict[str, Any], model: nn.Module, first: dict[str, str] | None, path: str | Path
) -> dict[str, Any]:
    """``state`` (from :func:`torchgraft.train.resume.capture`) without the frozen parameters of ``model`` that
    still have their ``first`` fingerprints: those are named in ``state["frozen"]`` and written to
    ``frozen.pt`` beside ``path`` (when it does not already hold them). ``first`` ``None``: ``state`` as it is."""
    if not first:
        return state
    unchanged: dict[str, str] = {}
    for name, parameter in _parameters(model).items():
        if not parameter.requires_grad and name in first and name in state["model"]:
            now = fingerprint(parameter)
            if now == first[name]:
                unchanged[name] = now
    if not unchanged:
        return state
    side = Path(path).with_name(FROZEN_FILE)
    held = _held(side)
    if any(held.get(name) != value for name, value in unchanged.items()):
        # what it held stays (an earlier checkpoint may name it), the new frozen tensors join
        earlier = read_state(side) if held else {"model": {}, "fingerprints": {}}
        tensors = {**earlier["model"], **{name: state["model"][name].detach().cpu() for name in unchanged}}
        every = {**earlier["fingerprints"], **unchanged}
        write_state(side, {"model": tensors, "fit": "frozen weights", "fingerprints": every})
    kept = {k: v for k, v in state["model"].items() if k not in unchanged}
    return {**state, "model": kept, "frozen": {"file": FROZEN_FILE, "fingerprints": unchanged}}


def _held(side: Path) -> dict[str, str]:
    """The fingerprints ``frozen.pt`` holds (empty when there is none or it cannot be read)."""
    if not side.is_file():
        return {}
    try:
        return dict(read_state(side)["fingerprints"])
    except (StateError, KeyError):
        return {}


def full_model_state(state: dict[str, Any], model: nn.Module | None = None, *, path: str | Path) -> dict[str, Any]:
    """The whole state dict of the checkpoint ``state`` read from ``path``: its ``model`` entry with the frozen
    tensors it names taken from ``frozen.pt`` beside it (or, where that file lacks them, from ``model`` when its
    tensors have the same fingerprints), each checked against its fingerprint.

    Raises:
        StateError: a frozen tensor that neither ``frozen.pt`` nor ``model`` holds with its fingerprint (the
            message names them and the fix).

    Example:
        >>> state = read_state("runs/pets/checkpoints/best.pt")
        >>> model.load_state_dict(full_model_state(state, model, path="runs/pets/checkpoints/best.pt"))
    """
    frozen = state.get("frozen")
    if not frozen:
        return state["model"]
    wanted: dict[str, str] = frozen["fingerprints"]
    side = Path(path).with_name(frozen.get("file", FROZEN_FILE))
    stored = read_state(side)["model"] if side.is_file() else {}
    own = _parameters(model) if model is not None else {}
    found: dict[str, Any] = {}
    for name, value in wanted.items():
        for source in (stored, own):
            if name in source and fingerprint(source[name]) == value:
                found[name] = source[name].detach()
                break
    missing = sorted(set(wanted) - set(found))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise StateError(
            f"resume: {path} leaves out {len(wanted)} frozen tensors kept in {side}, and {len(missing)} of them "
            f"({shown}) are neither there nor in the model with the fingerprints the checkpoint recorded; put back "
            f"the {side.name} written with it, or build the model from the same pretrained weights."
        )
    return {**state["model"], **found}
