"""Which task a batch is: the task told apart from the shapes and values of a model's outputs and targets.

The Learner asks this when no ``task=`` is given, on its first training batch:

* outputs ``(N, C)`` and integer class ids ``(N,)`` → ``classify``;
* outputs ``(N, C)`` and 0/1 rows ``(N, C)`` (float or integer) → ``multilabel``;
* outputs ``(N, C)`` and float rows ``(N, C)`` in ``[0, 1]`` summing to 1 → ``classify`` (class
  probabilities: soft labels, mixup);
* outputs ``(N, K)`` and other float targets ``(N, K)`` (or ``(N,)`` for ``K = 1``) → ``regression``;
* outputs ``(N, C, H, W)`` and integer masks ``(N, H, W)`` → ``segment``;
* targets that are one ``{"boxes", "labels"}`` mapping per image → ``detect``.

Anything else (integer targets for one output, float targets ``(N,)`` for several outputs, integer
counts, other ranks) cannot be told apart and raises :class:`TaskInferenceError` naming ``task=``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from torchgraft.tasks.base import Task
from torchgraft.tasks.classify import Classification
from torchgraft.tasks.detect import Detect
from torchgraft.tasks.metrics import TargetError, _describe_targets
from torchgraft.tasks.multilabel import Multilabel
from torchgraft.tasks.regression import Regression
from torchgraft.tasks.segment import Segmentation

__all__ = ["TaskInferenceError", "infer_task"]

CHOICES = "task='classify', 'multilabel', 'regression', 'segment' or 'detect' (or a Task object)"


class TaskInferenceError(TargetError):
    """Outputs and targets that fit no task, or more than one; the message says what was seen and names ``task=``."""


def _zero_one(targets: torch.Tensor) -> bool:
    return bool(((targets == 0) | (targets == 1)).all())


def _probabilities(targets: torch.Tensor) -> bool:
    sums = targets.float().sum(dim=-1)
    inside = bool(((targets >= 0) & (targets <= 1)).all())
    return inside and bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3))


def _mask_shaped(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    return tuple(targets.shape) == (outputs.shape[0], *outputs.shape[2:])


def _rows(outputs: torch.Tensor, targets: torch.Tensor, target_key: str) -> tuple[Task, str] | None:
    """The task of ``(N, C)`` outputs, or ``None`` when the targets do not tell."""
    n, width = outputs.shape
    integer = not targets.is_floating_point()
    if targets.shape == (n,) and integer and width >= 2:
        return Classification(target_key=target_key), "integer class ids, one per sample"
    if targets.shape == outputs.shape and _zero_one(targets):
        return Multilabel(target_key=target_key), "0/1 rows, one column per output"
    if targets.shape == outputs.shape and not integer and width >= 2 and _probabilities(targets):
        return Classification(target_key=target_key), "float rows summing to 1 (class probabilities)"
    if not integer and (targets.shape == outputs.shape or (targets.shape == (n,) and width == 1)):
        return Regression(target_key=target_key), "float targets, one per output"
    return None


def infer_task(outputs: torch.Tensor, targets: object, *, target_key: str = "labels") -> tuple[Task, str]:
    """The task that fits one batch of ``outputs`` and ``targets``, and why (a short phrase).

    Raises:
        TaskInferenceError: the shapes fit no task, or the targets do not tell two tasks apart; the message
            says what was seen and to pass ``task=``.

    Example:
        >>> infer_task(torch.randn(8, 21, 64, 64), torch.randint(0, 21, (8, 64, 64)))[0]
        Segmentation(target_key='labels')
    """
    if isinstance(targets, list | tuple) and targets and all(isinstance(t, Mapping) and "boxes" in t for t in targets):
        return Detect(target_key=target_key), "one {boxes, labels} target per image"
    if not isinstance(targets, torch.Tensor):
        raise TaskInferenceError(
            f"task: the targets are a {type(targets).__name__}, not a tensor, so no task can be inferred from "
            f"them; pass {CHOICES}."
        )
    found: tuple[Task, str] | None = None
    if outputs.ndim == 2 and targets.ndim in (1, 2) and targets.shape[0] == outputs.shape[0]:
        found = _rows(outputs, targets, target_key)
    elif outputs.ndim == 4 and not targets.is_floating_point() and _mask_shaped(outputs, targets):
        found = Segmentation(target_key=target_key), "integer masks, one class per pixel"
    if found is None:
        raise TaskInferenceError(
            f"task: cannot tell the task from outputs {tuple(outputs.shape)} and {_describe_targets(targets)}: "
            f"class ids (N,) need outputs (N, C >= 2), multi-label 0/1 rows and regression targets the "
            f"outputs' shape, masks (N, H, W) outputs "
            f"(N, C, H, W); pass {CHOICES}."
        )
    return found
