"""Whether an optimizer still matches its model: :func:`check_optimizer` compares them and names, by
parameter, what a step would silently skip (a trainable parameter the optimizer lacks) or still update (a
tensor no longer in the model); :func:`watch_optimizer` runs that check before every step. The repair is
:func:`torchgraft.tune.sync.sync_optimizer`.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["OptimizerReport", "StaleOptimizerError", "check_optimizer", "tensor_label", "watch_optimizer"]


class StaleOptimizerError(RuntimeError):
    """The optimizer does not hold every trainable parameter of the model, or holds removed ones."""


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


def tensor_label(tensor: torch.Tensor, name: str | None, k: int, j: int) -> str:
    """How a report names tensor ``j`` of optimizer group ``k``: its recorded name, else its place and shape."""
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
    removed = tuple(tensor_label(*item) for item in held if id(item[0]) not in live)
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
