"""LoRA adapters through peft, on the layer groups torchgraft already knows.

:func:`lora` picks the layers to adapt itself — the linear and convolution layers that the forward pass
runs inside the chosen layer groups (by default every body group; never the head) — and hands them to
peft's ``get_peft_model``. LoRA itself is peft's; torchgraft only chooses where, and keeps its own tools
honest on the result: :func:`~torchgraft.layer_groups` puts each adapter in the group of the layer it
adapts, :func:`~torchgraft.freeze` / :func:`~torchgraft.unfreeze` / ``fine_tune`` only ever make adapters
and the head trainable (the base weights are locked), :func:`~torchgraft.param_groups` gives discriminative
rates over the adapters, and the pretrained guard checks the base weights are unchanged.

:func:`merged` returns a plain copy with the adapters folded into the base weights (what export writes by
default); :func:`save_adapters` writes the adapters alone in peft's format (``adapter_model.safetensors``).
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from torchgraft.grafting.adapters import adapter_view, is_peft_wrapper
from torchgraft.grafting.dryrun import infer_input_size, trace
from torchgraft.tune.freeze import unfreeze
from torchgraft.tune.group_types import LayerGroups
from torchgraft.tune.groups import group_state, layer_groups
from torchgraft.tune.names import compile_pattern

__all__ = ["LoraError", "is_adapted", "lora", "lora_targets", "merged", "save_adapters", "without_adapters"]

_ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_INFO_ATTR = "_torchgraft_lora"


class LoraError(ValueError):
    """LoRA cannot be applied as asked (no layer to adapt, a model already adapted, peft missing)."""


def _peft() -> Any:
    try:
        return importlib.import_module("peft")
    except ImportError as error:
        raise LoraError("LoRA needs peft: pip install 'torchgraft[lora]' (or pip install peft).") from error


def is_adapted(model: nn.Module) -> bool:
    """Whether ``model`` carries peft adapter layers (built by :func:`lora` or by peft directly)."""
    return adapter_view(model) is not None


def _chosen_groups(groups: LayerGroups, which: int | Sequence[str] | None) -> list[int]:
    body = list(range(len(groups) - 1))
    if which is None:
        return body
    if isinstance(which, int):
        if not 1 <= which <= len(body):
            raise LoraError(f"lora: groups={which} must count 1..{len(body)} body groups (the top ones).")
        return body[-which:]
    names = [g.name for g in groups]
    unknown = [w for w in which if w not in names[:-1]]
    if unknown:
        raise LoraError(f"lora: groups {unknown} are not body groups of this model; choose from {names[:-1]}.")
    return [names.index(w) for w in which]


def _adaptable(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.conv._ConvNd):
        return isinstance(module, _ADAPTABLE) and module.groups == 1  # peft does not adapt grouped convolutions
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's transposed linear


def _ran(model: nn.Module) -> set[str] | None:
    """Names of modules the forward pass calls (a meta-device dry run), or ``None`` if it cannot run."""
    info = getattr(model, "info", None)
    size = getattr(info, "input_size", None)
    try:
        if size is not None and getattr(info, "layout", None) == "nlc" and len(size) < 3:
            return None  # a text encoder: the dry run feeds images
        return trace(model, tuple(size) if size is not None else infer_input_size(model)).names()
    except Exception:  # text encoders and models the dry run cannot feed: keep every layer
        return None


def lora_targets(
    model: nn.Module, *, groups: int | Sequence[str] | None = None, targets: Sequence[str] | None = None
) -> list[str]:
    """The module names :func:`lora` would adapt (see there for ``groups`` and ``targets``)."""
    split = layer_groups(model)
    chosen = set(_chosen_groups(split, groups))
    ran = _ran(model)
    strip = split.spec.strip
    patterns = [compile_pattern(p) for p in targets or ()]
    names = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not _adaptable(module) or weight is None or (ran is not None and name not in ran):
            continue
        if split.group_of(f"{name}.weight") not in chosen:
            continue
        short = name[len(strip) :] if strip and name.startswith(strip) else name
        if patterns and not any(p.fullmatch(name) or p.fullmatch(short) for p in patterns):
            continue
        names.append(name)
    return names


def lora(
    model: nn.Module,
    *,
    r: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    groups: int | Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    **options: Any,
) -> nn.Module:
    """Add LoRA adapters (peft) to the linear/convolution layers of ``model``'s chosen layer groups.

    The model is adapted in place, as ``peft.get_peft_model`` does; the returned ``PeftModel`` wraps it.
    Adapters and the head are trainable, every other parameter is locked (``requires_grad=False`` now and
    after any later ``unfreeze``). Adapter weights start so that the output is unchanged (peft's LoRA init).

    Args:
        model: a grafted model (:func:`torchgraft.graft`) or any module with a head layer groups can find.
        r: the adapters' rank.
        alpha: LoRA's scaling numerator (default ``r``, i.e. scale 1).
        dropout: dropout on the adapters' input.
        groups: which body groups get adapters: ``None`` all of them, an int ``k`` the top ``k``, or group
            names (``["body1", "body2"]``; see ``print(layer_groups(model))``).
        targets: optional name patterns (``"blocks.*.attn.qkv"``, ``"**.mlp.*"``; source-network names work
            on a grafted model) restricting the layers inside those groups.
        **options: more ``peft.LoraConfig`` fields (``use_dora=True``, ``use_rslora=True``, ...).

    Returns:
        The ``PeftModel``; pass it to :class:`torchgraft.Learner`, ``layer_groups``, ``freeze``... as usual.

    Raises:
        LoraError: peft missing, a model that already has adapters, or no layer to adapt.

    Example:
        >>> model = lora(graft(timm.create_model("vit_base_patch16_224", pretrained=True), 10), r=8)
        >>> print(layer_groups(model))   # adapters per group, the head, the locked base
    """
    peft = _peft()
    if is_adapted(model):
        raise LoraError("lora: the model already has peft adapters; use it as it is (torchgraft reads peft models).")
    if r < 1:
        raise LoraError(f"lora: r must be >= 1, got {r}.")
    names = lora_targets(model, groups=groups, targets=targets)
    if not names:
        raise LoraError(
            "lora: no linear or convolution layer to adapt in the chosen groups"
            + (f" matching {list(targets)}" if targets else "")
            + "; print(torchgraft.layer_groups(model)) shows the groups, widen groups= or targets=."
        )
    spec = group_state(model)
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else r,
        lora_dropout=dropout,
        target_modules="^(" + "|".join(re.escape(n) for n in names) + ")$",
        bias="none",
        **options,
    )
    adapted = peft.get_peft_model(model, config)
    object.__setattr__(adapted, "_torchgraft_groups", spec)
    object.__setattr__(adapted, _INFO_ATTR, {"r": r, "alpha": config.lora_alpha, "layers": len(names)})
    unfreeze(adapted)
    return adapted


def merged(model: nn.Module) -> nn.Module:
    """A copy of an adapted model with the adapters folded into the base weights, as a plain module (the
    original keeps its adapters). A model without adapters is returned as it is.

    Example:
        >>> plain = merged(peft_model)   # a Grafted model again; exports and runs without peft
    """
    if not is_adapted(model):
        return model
    if not is_peft_wrapper(model):
        raise LoraError(
            "merged: adapters injected without a PeftModel cannot be merged here; wrap with peft.get_peft_model."
        )
    copied = copy.deepcopy(model)
    plain = copied.merge_and_unload()
    spec = group_state(model)
    if spec is not None:
        object.__setattr__(plain, "_torchgraft_groups", spec)
    return plain


def without_adapters(model: nn.Module) -> nn.Module:
    """A copy of an adapted ``PeftModel``'s network with the adapters removed, not merged (the pretrained base
    and the trained head); ``save_adapters`` writes what it lacks."""
    if not is_peft_wrapper(model):
        raise LoraError("without_adapters: expected a peft PeftModel (torchgraft.lora returns one).")
    plain = copy.deepcopy(model).unload()
    spec = group_state(model)
    if spec is not None:
        object.__setattr__(plain, "_torchgraft_groups", spec)
    return plain


def save_adapters(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model``'s adapters in peft's format (``adapter_model.safetensors`` + ``adapter_config.json``),
    loadable with ``peft.PeftModel.from_pretrained(<the model without adapters>, directory)``.

    The base network and the trained head are not in those files: :func:`torchgraft.export_model` writes them
    (``adapters="separate"``).
    """
    if not is_peft_wrapper(model):
        raise LoraError("save_adapters: expected a peft PeftModel (torchgraft.lora returns one).")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:  # peft also writes a model card: keep two files
        model.save_pretrained(scratch, safe_serialization=True)
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            os.replace(Path(scratch) / name, directory / name)
    return directory / "adapter_model.safetensors"
