"""Optimizer parameter groups from layer groups.

:func:`param_groups` returns ordinary ``torch.optim`` param-group dicts with an *absolute* ``lr`` per group,
so any torch optimizer, any standard scheduler (``OneCycleLR(max_lr=[g["lr"] for g in groups])``, cosine,
step), Lightning's ``configure_optimizers`` or a Hugging Face Trainer use them as they are. Parameters are
passed as ``(name, tensor)`` pairs, which torch (>= 2.6) stores as ``param_names``: the optimizer then
knows what each tensor is, also after a checkpoint round trip. Keeping an optimizer in line with a changed
model is :mod:`torchgraft.tune.stale` (checking) and :mod:`torchgraft.tune.sync` (repairing). The rate of each
group comes from :func:`~torchgraft.tune.rates.group_lrs` (re-exported here with ``LRSpec``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from torchgraft.tune.freeze import is_norm
from torchgraft.tune.group_types import LayerGroups
from torchgraft.tune.groups import layer_groups
from torchgraft.tune.rates import LRSpec, group_lrs

__all__ = ["LRSpec", "decay_exempt", "group_lrs", "param_groups"]

_TOKENS = frozenset(
    {
        "cls_token",
        "class_token",
        "dist_token",
        "reg_token",
        "mask_token",
        "pos_embed",
        "pos_embedding",
        "absolute_pos_embed",
        "relative_position_bias_table",
    }
)


def decay_exempt(model: nn.Module) -> set[str]:
    """Names of parameters that get no weight decay: biases and other 1-D tensors, normalization layers,
    embeddings, class/position tokens, and what a timm model's ``no_weight_decay()`` lists."""
    exempt: set[str] = set()
    for module_name, module in model.named_modules():
        dot = f"{module_name}." if module_name else ""
        listed = getattr(module, "no_weight_decay", None)
        skip = {dot + n for n in listed()} if callable(listed) else set()
        embedding = isinstance(module, (nn.Embedding, nn.EmbeddingBag))
        for name, param in module.named_parameters(recurse=False):
            if param.ndim <= 1 or embedding or is_norm(module) or name in _TOKENS or dot + name in skip:
                exempt.add(dot + name)
        if skip:  # timm may list whole modules
            exempt |= {n for n, _ in model.named_parameters() if any(n.startswith(s + ".") for s in skip)}
    return exempt


def _entries(
    groups: LayerGroups, lrs: list[float], exempt: set[str], weight_decay: float | None, no_decay: bool
) -> list[tuple[tuple[float, float | None], list[tuple[str, nn.Parameter]]]]:
    """(lr, weight decay) -> parameters, merged across layer groups with identical settings; inside a merged
    group parameters keep the model's order (the order a hand-built optimizer would step them in)."""
    order = {name: i for i, name in enumerate(n for group in groups for n in group.names)}
    merged: dict[tuple[float, float | None], list[tuple[str, nn.Parameter]]] = {}
    for group, lr in zip(groups, lrs, strict=True):
        for decays in (True, False):
            chosen = [
                (n, p)
                for n, p in zip(group.names, group.params, strict=True)
                if (n not in exempt or not no_decay) == decays
            ]
            if chosen:
                merged.setdefault((lr, weight_decay if decays else 0.0), []).extend(chosen)
    return [(key, sorted(members, key=lambda item: order[item[0]])) for key, members in merged.items()]


def param_groups(
    model: nn.Module,
    *,
    lr: LRSpec,
    weight_decay: float | None = None,
    layer_decay: float | None = None,
    no_decay: bool = True,
    names: bool = True,
    **options: Any,
) -> list[dict[str, Any]]:
    """``torch.optim`` param groups for ``model``'s layer groups.

    Args:
        model: any module (layer groups from :func:`torchgraft.layer_groups`).
        lr: learning rate(s), see :func:`group_lrs`: a float, ``slice(lo, hi)``, ``slice(hi)`` or a list.
        weight_decay: weight decay of decayed parameters (``None``: the optimizer's default).
        layer_decay: layer-wise learning-rate decay towards the input.
        no_decay: give biases, normalization layers, embeddings and tokens ``weight_decay=0``.
        names: pass ``(name, tensor)`` pairs (torch stores them as ``param_names``); ``False`` for plain
            tensors, for optimizers that do not take names.
        **options: more settings for every group (``betas=``, ``momentum=``, ...).

    Returns:
        A list of dicts; groups with identical settings are merged, so foreach/fused kernels stay fast.
        Frozen parameters are included (they get no gradient, so the optimizer skips them until unfrozen).

    Example:
        >>> optimizer = torch.optim.AdamW(param_groups(model, lr=slice(1e-5, 1e-3), weight_decay=0.05))
        >>> scheduler = torch.optim.lr_scheduler.OneCycleLR(
        ...     optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=1000)
    """
    groups = layer_groups(model)
    lrs = group_lrs(lr, len(groups), layer_decay=layer_decay, names=[g.name for g in groups])
    exempt = decay_exempt(model) if no_decay else set()
    result = []
    for (rate, decay), members in _entries(groups, lrs, exempt, weight_decay, no_decay):
        entry: dict[str, Any] = {"params": members if names else [p for _, p in members], "lr": rate, **options}
        if decay is not None:
            entry["weight_decay"] = decay
        result.append(entry)
    return result
