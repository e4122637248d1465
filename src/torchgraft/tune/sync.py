"""Keeping an optimizer in line with its model after freezing, unfreezing or surgery.

:func:`sync_optimizer` adds parameters that surgery or unfreezing made trainable to the group with their
settings, drops the ones no longer in the model and keeps the state of the rest.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchgraft.tune.freeze import refreeze
from torchgraft.tune.group_types import LayerGroups
from torchgraft.tune.groups import layer_groups
from torchgraft.tune.optim import LRSpec, decay_exempt, group_lrs
from torchgraft.tune.stale import tensor_label

__all__ = ["SyncReport", "sync_optimizer"]


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
                report.removed.append(tensor_label(p, name, k, j))
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
