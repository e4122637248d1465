"""The pixel confusion matrix of segmentation and what is read from it, in plain torch (no torchmetrics):
counting a batch into a ``(C, C)`` matrix (rows: target, columns: prediction), per-class IoU and Dice, and the
summaries the segmentation metrics report."""

from __future__ import annotations

import torch

__all__ = ["SUMMARIES", "count_pixels", "per_class_dice", "per_class_iou", "present", "summarize"]

SUMMARIES = ("miou", "dice", "pixel_accuracy")  # what a confusion matrix is summarised as


def present(matrix: torch.Tensor) -> torch.Tensor:
    """Classes that occur in the targets or the predictions (the others have no IoU to average)."""
    return (matrix.sum(0) + matrix.sum(1)) > 0


def per_class_iou(matrix: torch.Tensor) -> torch.Tensor:
    """IoU of each class from a confusion matrix (rows: target, columns: prediction); NaN for a class
    that occurs in neither."""
    matrix = matrix.double()
    true_positive = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)


def per_class_dice(matrix: torch.Tensor) -> torch.Tensor:
    """Dice of each class (``2 TP / (2 TP + FP + FN)``); NaN for a class that occurs in neither."""
    matrix = matrix.double()
    true_positive = matrix.diag()
    total = matrix.sum(0) + matrix.sum(1)
    return torch.where(total > 0, 2 * true_positive / total.clamp(min=1), torch.nan)


def count_pixels(outputs: torch.Tensor, targets: torch.Tensor, *, num_classes: int, ignore_index: int) -> torch.Tensor:
    """The ``(C, C)`` counts of a batch: logits ``(N, C, H, W)`` (or predicted labels ``(N, H, W)``) against
    targets ``(N, H, W)``; pixels equal to ``ignore_index`` are not counted."""
    predicted = outputs.argmax(dim=1) if outputs.ndim == targets.ndim + 1 else outputs
    counted = targets != ignore_index
    index = targets[counted].long() * num_classes + predicted[counted].long()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def summarize(matrix: torch.Tensor, summary: str) -> torch.Tensor:
    """One of :data:`SUMMARIES` of a matrix: mean IoU or Dice over the classes present, or pixel accuracy."""
    if summary == "pixel_accuracy":
        return (matrix.diag().sum() / matrix.sum().clamp(min=1)).float()
    values = per_class_iou(matrix) if summary == "miou" else per_class_dice(matrix)
    kept = present(matrix)
    return values[kept].mean().float() if kept.any() else torch.tensor(0.0)
