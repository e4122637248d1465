"""Models carrying peft adapters (LoRA and other tuners): which tensors are adapters, which are the frozen
base, and the names the model had before peft wrapped it.

peft changes names in three ways: a ``PeftModel`` prefixes everything with ``base_model.model.``; an adapted
layer moves its own weights to ``<layer>.base_layer.*`` and adds ``<layer>.lora_A.<adapter>.*`` (and the
other adapter tensors its tuner lists); a ``modules_to_save`` wrapper keeps ``<module>.original_module.*``
frozen and trains a copy at ``<module>.modules_to_save.<adapter>.*``. Layer-group rules, the pretrained
guard and freezing all work on the *canonical* names (the names before peft), so a split written for the
plain model holds for the adapted one. Nothing here imports peft: tuner layers are recognised by the
attributes every peft tuner layer has (``base_layer`` and ``adapter_layer_names``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

__all__ = ["AdapterView", "Role", "active_module", "adapter_view", "base_model", "is_peft_wrapper"]

PEFT_PREFIX = "base_model.model."
Role = Literal["adapter", "base", "saved", "plain"]


def is_peft_wrapper(model: nn.Module) -> bool:
    """Whether ``model`` is a peft ``PeftModel`` (its parameters are named ``base_model.model.*``)."""
    inner = getattr(model, "_modules", {}).get("base_model")
    return isinstance(inner, nn.Module) and isinstance(getattr(inner, "_modules", {}).get("model"), nn.Module)


def base_model(model: nn.Module) -> nn.Module:
    """The model inside a ``PeftModel`` (adapted layers included); ``model`` itself otherwise."""
    return model._modules["base_model"]._modules["model"] if is_peft_wrapper(model) else model  # type: ignore[index]


def _is_tuner(module: nn.Module) -> bool:
    return isinstance(getattr(module, "adapter_layer_names", None), tuple) and "base_layer" in module._modules


def _is_saved_wrapper(module: nn.Module) -> bool:
    return "original_module" in module._modules and "modules_to_save" in module._modules


def active_module(module: nn.Module) -> nn.Module:
    """The module that runs: the trained copy inside a peft ``modules_to_save`` wrapper, else ``module``."""
    if not _is_saved_wrapper(module):
        return module
    copies = module._modules["modules_to_save"]
    active = getattr(module, "active_adapters", None) or list(copies._modules)  # type: ignore[union-attr]
    name = active[0] if isinstance(active, list | tuple) else active
    return copies._modules.get(name, module._modules["original_module"])  # type: ignore[union-attr, return-value]


@dataclass(frozen=True)
class AdapterView:
    """How an adapted model's parameter names map to the plain model's.

    Attributes:
        canonical: current name -> name before peft (an adapter tensor maps to its layer's ``weight``, so a
            rule naming the layer names its adapters too).
        roles: current name -> ``"adapter"`` (trained), ``"base"`` (the frozen pretrained tensor an adapter
            modifies, or the original of a saved module), ``"saved"`` (a trained ``modules_to_save`` copy) or
            ``"plain"`` (not touched by peft).
    """

    canonical: dict[str, str] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)


def canonical_path(path: str, wrapped: bool) -> str:
    """A module path without peft's additions (``base_model.model.``, ``base_layer``, wrapper copies)."""
    if wrapped and path.startswith(PEFT_PREFIX):
        path = path[len(PEFT_PREFIX) :]
    elif wrapped and path + "." == PEFT_PREFIX:
        return ""
    parts = path.split(".")
    out: list[str] = []
    skip = 0
    for part in parts:
        if skip:
            skip -= 1
            continue
        if part in ("base_layer", "original_module"):
            continue
        if part == "modules_to_save" or part.startswith("lora_"):
            skip = 1  # the adapter name that follows
            continue
        out.append(part)
    return ".".join(out)


def _special_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for path, module in model.named_modules():
        if _is_tuner(module) or _is_saved_wrapper(module):
            yield path, module


def adapter_view(model: nn.Module) -> AdapterView | None:
    """The canonical names and roles of ``model``'s parameters, or ``None`` if no peft layer is in it."""
    special = dict(_special_modules(model))
    if not special:
        return None
    wrapped = is_peft_wrapper(model)
    view = AdapterView()
    for name, _ in model.named_parameters(remove_duplicate=False):
        role: Role = "plain"
        parts = name.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            owner = special.get(".".join(parts[:depth]))
            if owner is None:
                continue
            first = parts[depth]
            if _is_tuner(owner):
                role = "base" if first == "base_layer" else "adapter" if first in owner.adapter_layer_names else "base"
                canonical = canonical_path(".".join(parts[:depth]), wrapped) + ".weight"
                if role == "base":
                    canonical = canonical_path(name, wrapped)
            else:
                role = "base" if first == "original_module" else "saved"
                canonical = canonical_path(name, wrapped)
            break
        else:
            canonical = name[len(PEFT_PREFIX) :] if wrapped and name.startswith(PEFT_PREFIX) else name
        view.canonical[name] = canonical
        view.roles[name] = role
    return view
