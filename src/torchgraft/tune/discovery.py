"""Which part of a network is its head (the last layer group) and which its body (what the split cuts).

The head is a grafted model's ``head`` (and a dense graft's ``decoder``), else the classifier a dry run
finds (a timm model's included), else the last top-level child with parameters.
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from torchgraft.grafting.classifier import find_classifier
from torchgraft.grafting.dryrun import Trace, infer_input_size, trace
from torchgraft.tune.names import name_prefixes, under

__all__ = ["body_scope", "body_sizes", "has_decoder", "head_names", "is_grafted"]


def is_grafted(model: nn.Module) -> bool:
    """Whether ``model`` is a grafted model (a ``body`` wrapping the source network, and a ``head``)."""
    return isinstance(getattr(model, "head", None), nn.Module) and hasattr(getattr(model, "body", None), "model")


def has_decoder(model: nn.Module) -> bool:
    """Whether ``model`` (a dense graft) has a new ``decoder`` between its body and head."""
    return isinstance(getattr(model, "decoder", None), nn.Module)


def head_names(model: nn.Module) -> tuple[tuple[str, ...], Trace | None]:
    """Module names forming the head, and the dry run that found them (if one ran)."""
    if is_grafted(model):  # a dense graft's decoder is new too: kept out of the body's split
        return ("head", "decoder") if has_decoder(model) else ("head",), None
    try:
        run = trace(model, infer_input_size(model))
        return find_classifier(model, run).names, run
    except Exception:  # not an image classifier (text models, ...): use the last child with parameters
        pass
    children = [name for name, child in model.named_children() if next(child.parameters(), None) is not None]
    return tuple(children[-1:]), None


def body_scope(model: nn.Module) -> tuple[nn.Module, str]:
    """The module to split and the prefix of its names (a grafted model's source network)."""
    if is_grafted(model):
        return model.body.model, "body.model"
    return model, ""


def body_sizes(model: nn.Module, head: tuple[str, ...]) -> tuple[list[str], dict[str, int]]:
    """Body parameter names (in order) and the parameter count of every module prefix of the body."""
    names, sizes = [], defaultdict(int)
    for name, param in model.named_parameters():
        if under(name, head):
            continue
        names.append(name)
        for prefix in name_prefixes(name):
            sizes[prefix] += param.numel()
    return names, dict(sizes)
