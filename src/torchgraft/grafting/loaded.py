"""Which tensors of a network hold loaded weights: the record a loader leaves on the module it filled.

``graft`` keeps every tensor of the source network, but only a loader knows whether those tensors came from
a checkpoint or from a random initialisation. torchgraft's loaders (``load_weights``, ``pretrained_model``,
the Hugging Face loader) record the names they filled, and an empty record for ``weights="none"``; the plan
then counts as pretrained only what was loaded. A network no torchgraft loader touched has no record: whether
it is pretrained is not known.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["loaded_names", "record_loaded"]

_ATTR = "_torchgraft_loaded"


def record_loaded(module: nn.Module, names: Iterable[str]) -> None:
    """Record that tensors ``names`` (relative to ``module``) were filled from a checkpoint, adding to what
    was recorded before; no names records a network whose weights were deliberately left random.

    Example:
        >>> record_loaded(model, model.state_dict())  # every tensor came from the checkpoint
    """
    before = getattr(module, _ATTR, frozenset())
    object.__setattr__(module, _ATTR, frozenset(before) | frozenset(names))


def loaded_names(model: nn.Module) -> frozenset[str] | None:
    """Names (relative to ``model``) of the tensors a loader recorded in ``model`` or in a module inside it
    (the source network of a grafted model), or ``None`` when no loader left a record."""
    found: frozenset[str] | None = None
    for prefix, module in model.named_modules():
        names = module.__dict__.get(_ATTR)
        if names is not None:
            dot = f"{prefix}." if prefix else ""
            found = (found or frozenset()) | {dot + name for name in names}
    return found
