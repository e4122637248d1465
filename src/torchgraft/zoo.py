"""Build a network by name: any torchvision classification builder, or a timm model as ``timm/NAME``."""

from __future__ import annotations

import difflib
import importlib

import torch
import torchvision
from torch import nn

__all__ = ["UnknownModelError", "build_model", "torchvision_classifiers"]


class UnknownModelError(ValueError):
    """The name is neither a torchvision classification builder nor a timm model."""


def torchvision_classifiers() -> list[str]:
    """Names of every torchvision classification builder."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _timm() -> object:
    try:
        return importlib.import_module("timm")
    except ImportError as error:
        raise ImportError("timm models need timm: pip install 'torchgraft[timm]'") from error


def build_model(name: str, *, device: str | torch.device = "meta") -> nn.Module:
    """Build ``name`` with random weights on ``device`` (``"meta"``: no memory, any size).

    ``name`` is a torchvision builder (``"resnet50"``) or ``"timm/<name>"`` (``"timm/convnext_tiny"``).

    Raises:
        UnknownModelError: listing the closest known names.

    Example:
        >>> build_model("vit_h_14").heads.head.weight.device
        device(type='meta')
    """
    with torch.device(device):
        if name.startswith(("timm/", "timm:")):
            timm = _timm()
            arch = name[5:]
            if arch not in timm.list_models():
                close = difflib.get_close_matches(arch, timm.list_models(), n=5)
                raise UnknownModelError(f"unknown timm model {arch!r}; close names: {', '.join(close) or '-'}.")
            return timm.create_model(arch, pretrained=False)
        known = torchvision_classifiers()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5)
            hint = f"close names: {', '.join(close)}" if close else "see torchvision.models.list_models()"
            raise UnknownModelError(f"unknown model {name!r} ({hint}; timm models: timm/<name>).")
        return torchvision.models.get_model(name, weights=None)
