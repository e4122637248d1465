"""Optimizer parameter groups from layer groups, and keeping an optimizer in sync with its model.

:func:`param_groups` returns ordinary ``torch.optim`` param-group dicts with an *absolute* ``lr`` per group,
so any torch optimizer, any standard scheduler (``OneCycleLR(max_lr=[g["lr"] for g in groups])``, cosine,
step), Lightning's ``configure_optimizers`` or a Hugging Face Trainer use them as they are. Parameters are
passed as ``(name, tensor)`` pairs, which torch (>= 2.6) stores as ``param_names``: the optimizer then
knows what each tensor is, also after a checkpoint round trip.

:func:`sync_optimizer` adds parameters that surgery or unfreezing made trainable to the group with their
settings, drops the ones no longer in the model and keeps the state of the rest. :func:`check_optimizer`
and :func:`watch_optimizer` report a stale optimizer, by parameter name, before a step silently skips one.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from torchgraft.tune.freeze import is_norm, refreeze
from torchgraft.tune.group_types import LayerGroups
from torchgraft.tune.groups import layer_groups

__all__ = [
    "OptimizerReport",
    "StaleOptimizerError",
    "SyncReport",
    "check_optimizer",
    "decay_exempt",
    "group_lrs",
    "param_groups",
    "sync_optimizer",
    "watch_optimizer",
]

LRSpec = float | slice | Sequence[float]
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


class StaleOptimizerError(RuntimeError):
    """The optimizer does not hold every trainable parameter of the model, or holds removed ones."""


def group_lrs(lr: LRSpec, n: int, *, layer_decay: float | None = None, names: Sequence[str] = ()) -> list[float]:
    """Absolute learning rates for ``n`` groups, early body first.

    Args:
        lr: a float (every group); ``slice(lo, hi)``: spread geometrically from ``lo`` to ``hi``;
            ``slice(hi)``: ``hi / 10`` for the body, ``hi`` for the head (fastai's convention); or one
            value per group.
        n: number of groups.
        layer_decay: ``lr * layer_decay ** (n - 1 - i)`` for group ``i`` (BEiT-style layer-wise decay;
            ``lr`` must be a float).
        names: group names, for error messages.

    Example:
        >>> group_lrs(slice(1e-5, 1e-3), 3)
        [1e-05, 0.0001, 0.001]
    """
    if layer_decay is not None:
        if not isinstance(lr, (int, float)) or not 0 < layer_decay <= 1:
            raise ValueError(
                f"layer_decay={layer_decay!r} needs a float lr (the head's) and a decay in (0, 1], got lr={lr!r}."
            )
        rates = [float(lr) * layer_decay ** (n - 1 - i) for i in range(n)]
    elif isinstance(lr, slice):
        if lr.stop is None or lr.step is not None:
            raise ValueError(f"lr={lr!r}: write slice(lo, hi) or slice(hi).")
        if lr.start is None:
            rates = [lr.stop / 10] * (n - 1) + [lr.stop]
        elif n == 1:
            rates = [float(lr.stop)]
        else:
            rates = [lr.start * (lr.stop / lr.start) ** (i / (n - 1)) for i in range(n)]
    elif isinstance(lr, (int, float)):
        rates = [float(lr)] * n
    else:
        rates = [float(v) for v in lr]
        if len(rates) != n:
            shown = f" ({', '.join(names)})" if names else ""
            raise ValueError(
                f"lr has {len(rates)} values but the model has {n} layer groups{shown}; give one per group."
            )
    if not all(math.isfinite(r) and r >= 0 for r in rates):
        raise ValueError(f"learning rates must be finite and >= 0, got {rates}.")
    return rates


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


# --------------------------------------------------------------------------------------- staleness


@dataclass(frozen=True)
class OptimizerReport:
    """How an optimizer differs from its model.

    Attributes:
        missing: trainable parameters of the model the optimizer does not hold (they would never train).
        removed: tensors the optimizer holds that are no longer in the model.
    """

    missing: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def stale(self) -> bool:
        """Whether the optimizer is out of sync with the model."""
        return bool(self.missing or self.removed)

    def __str__(self) -> str:
        if not self.stale:
            return "optimizer in sync with the model"
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} trainable parameter(s) not in the optimizer: {_show(self.missing)}")
        if self.removed:
            parts.append(f"{len(self.removed)} optimizer tensor(s) no longer in the model: {_show(self.removed)}")
        return "; ".join(parts)


def _show(names: Sequence[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _held_names(optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, str | None, int, int]]:
    """(tensor, recorded name or None, group index, position) for every tensor the optimizer holds."""
    out = []
    for k, group in enumerate(optimizer.param_groups):
        recorded = group.get("param_names") or [None] * len(group["params"])
        out += [(p, name, k, j) for j, (p, name) in enumerate(zip(group["params"], recorded, strict=True))]
    return out


def _label(tensor: torch.Tensor, name: str | None, k: int, j: int) -> str:
    return name if name else f"<group {k} tensor {j}, shape {tuple(tensor.shape)}>"


def check_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> OptimizerReport:
    """Compare ``optimizer`` with ``model``'s current parameters (see :class:`OptimizerReport`).

    Example:
        >>> model.head[-1] = nn.Linear(512, 5)  # surgery after the optimizer was built
        >>> print(check_optimizer(optimizer, model))
        2 trainable parameter(s) not in the optimizer: head.1.weight, head.1.bias; ...
    """
    held = _held_names(optimizer)
    held_ids = {id(p) for p, *_ in held}
    live = {id(p) for p in model.parameters()}
    missing = tuple(n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held_ids)
    removed = tuple(_label(*item) for item in held if id(item[0]) not in live)
    return OptimizerReport(missing, removed)


def _raise_if_stale(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    report = check_optimizer(optimizer, model)
    if report.stale:
        raise StaleOptimizerError(
            f"stale optimizer: {report}. Call torchgraft.sync_optimizer(optimizer, model) after changing "
            f"the model (surgery, unfreezing) and before the next step."
        )


def watch_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> RemovableHandle:
    """Check ``optimizer`` against ``model`` before every ``optimizer.step()``; a stale optimizer raises
    :class:`StaleOptimizerError` naming the parameters, before the step runs. Returns the hook's handle.

    The check walks the parameter lists once per step (microseconds for a ResNet-50)."""
    model_ref = weakref.ref(model)

    def before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        watched = model_ref()
        if watched is not None:
            _fast_check(opt, watched)

    return optimizer.register_step_pre_hook(before_step)


def _fast_check(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    live = 0
    for p in model.parameters():
        if id(p) in held:
            live += 1
        elif p.requires_grad:
            _raise_if_stale(optimizer, model)
    if live != len(held):
        _raise_if_stale(optimizer, model)


# ------------------------------------------------------------------------------------------- sync


@dataclass
class SyncReport:
    """What :func:`sync_optimizer` changed.

    Attributes:
        added: parameter name -> index of the optimizer group it joined.
        removed: tensors dropped because they left the model (their state was dropped with them).
        new_groups: indices of optimizer groups that had to be created (LR schedulers built earlier do
            not know them: build the scheduler again).
    """

    added: dict[str, int] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    new_groups: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        if not (self.added or self.removed):
            return "optimizer already in sync"
        lines = [f"added {name} -> group {k}" for name, k in self.added.items()]
        lines += [f"removed {name}" for name in self.removed]
        lines += [f"created group {k}" for k in self.new_groups]
        return "\n".join(lines)


def _key(name: str, tensor: torch.Tensor, groups: LayerGroups, exempt: set[str]) -> tuple[int, bool]:
    """(layer group, decays) of a parameter name (also of a name that left the model)."""
    index = groups.group_of(name)  # names no rule matches live in the head group, which is last
    return (len(groups) - 1 if index is None else index), tensor.ndim > 1 and name not in exempt


def _drop_removed(
    optimizer: torch.optim.Optimizer, live: dict[int, str], report: SyncReport
) -> list[tuple[str, torch.Tensor, int]]:
    """Remove tensors that left the model (and their state); returns (name, tensor, group) of the dropped."""
    dropped = []
    for k, group in enumerate(optimizer.param_groups):
        named = "param_names" in group
        recorded = group.get("param_names") or [None] * len(group["params"])
        keep = [(p, live[id(p)]) for p in group["params"] if id(p) in live]
        for j, (p, name) in enumerate(zip(group["params"], recorded, strict=True)):
            if id(p) not in live:
                report.removed.append(_label(p, name, k, j))
                dropped.append((name or "", p, k))
                optimizer.state.pop(p, None)
        group["params"] = [p for p, _ in keep]
        if named:
            group["param_names"] = [n for _, n in keep]
    return dropped


def sync_optimizer(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    *,
    refreeze_model: bool = True,
    lr: LRSpec | None = None,
    weight_decay: float | None = None,
    layer_decay: float | None = None,
    no_decay: bool = True,
) -> SyncReport:
    """Bring ``optimizer`` in line with ``model`` after freezing, unfreezing or surgery.

    Every trainable parameter the optimizer lacks joins the optimizer group that holds its layer group's
    parameters of the same decay class (found through the tensors still there, or through ``param_names``
    when the old ones are all gone), so it gets that group's settings; tensors no longer in the model are
    dropped with their state; the state (e.g. Adam moments) of everything else is kept.

    Args:
        optimizer: any ``torch.optim`` optimizer, best built from :func:`param_groups`.
        model: the model it trains.
        refreeze_model: first apply the stored freeze state again, so that modules added into a frozen
            group are frozen too (see :func:`torchgraft.freeze_to`).
        lr: settings for a parameter whose group the optimizer does not have yet (as in
            :func:`param_groups`); without them a new group takes the optimizer's defaults.
        weight_decay: as in :func:`param_groups`, for new groups.
        layer_decay: as in :func:`param_groups`, for new groups.
        no_decay: as in :func:`param_groups`.

    Returns:
        A :class:`SyncReport`.

    Example:
        >>> model.head[-1] = nn.Linear(512, 5)
        >>> print(sync_optimizer(optimizer, model))
        added head.0.weight -> group 4
        ...
    """
    if refreeze_model:
        refreeze(model)
    groups = layer_groups(model)
    exempt = decay_exempt(model) if no_decay else set()
    live = {id(p): n for n, p in model.named_parameters()}
    report = SyncReport()
    dropped = _drop_removed(optimizer, live, report)
    home: dict[tuple[int, bool], int] = {}
    for name, tensor, k in dropped:  # weaker evidence first, overwritten by live members below
        if name:
            home.setdefault(_key(name, tensor, groups, exempt), k)
    for k, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            home[_key(live[id(p)], p, groups, exempt)] = k
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    created: dict[tuple[int, bool], int] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in held:
            continue
        key = _key(name, param, groups, exempt)
        k = home.get(key, 0 if len(optimizer.param_groups) == 1 else None)
        if k is None:
            k = created.get(key)
        if k is None:
            k = _new_group(optimizer, key, groups, lr, weight_decay, layer_decay)
            created[key] = k
            report.new_groups.append(k)
        _append(optimizer.param_groups[k], name, param)
        report.added[name] = k
    if report.new_groups:
        warnings.warn(
            f"sync_optimizer: created optimizer group(s) {report.new_groups}; rebuild any LR scheduler made before.",
            stacklevel=2,
        )
    return report


def _append(group: dict[str, Any], name: str, param: nn.Parameter) -> None:
    group["params"].append(param)
    if "param_names" in group:
        group["param_names"].append(name)


def _new_group(
    optimizer: torch.optim.Optimizer,
    key: tuple[int, bool],
    groups: LayerGroups,
    lr: LRSpec | None,
    weight_decay: float | None,
    layer_decay: float | None,
) -> int:
    index, decays = key
    entry: dict[str, Any] = {"params": []}
    if "param_names" in optimizer.param_groups[0]:
        entry["param_names"] = []
    if lr is not None:
        entry["lr"] = group_lrs(lr, len(groups), layer_decay=layer_decay)[index]
    if not decays:
        entry["weight_decay"] = 0.0
    elif weight_decay is not None:
        entry["weight_decay"] = weight_decay
    optimizer.add_param_group(entry)
    return len(optimizer.param_groups) - 1
