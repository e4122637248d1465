"""The torchmetrics ``Metric`` classes torchgraft defines. This is the one module of the package that imports
torchmetrics at its top (2-3 s, with the scipy and transformers it pulls in), and it is imported only when a
metric is built, at the first validation batch: a run reaches its first training step without it."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchmetrics
from torchmetrics.classification import MulticlassAccuracy

from torchgraft.tasks.pixel_matrix import SUMMARIES, count_pixels, summarize

__all__ = ["BatchMean", "ConfusionMatrix", "ErrorRate"]


class ErrorRate(MulticlassAccuracy):
    """``1 - accuracy`` over the whole set (lower is better)."""

    higher_is_better = False

    def compute(self) -> torch.Tensor:
        return 1 - super().compute()


class BatchMean(torchmetrics.MeanMetric):
    """A plain ``fn(outputs, targets) -> scalar`` averaged over batches, weighted by batch size.

    Its direction is read from ``fn.higher_is_better`` by :meth:`MetricSet.higher_is_better`.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:  # type: ignore[override]
        value = torch.as_tensor(self.fn(outputs, targets), dtype=torch.float32, device=outputs.device)
        super().update(value, weight=outputs.shape[0])


class ConfusionMatrix(torchmetrics.Metric):
    """A ``(C, C)`` pixel confusion matrix over a whole dataset (summed across DDP ranks), and one summary of it.

    Args:
        num_classes: classes.
        summary: ``"miou"``, ``"dice"`` or ``"pixel_accuracy"``: what :meth:`compute` returns.
        ignore_index: target value excluded everywhere.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, *, summary: str = "miou", ignore_index: int = 255) -> None:
        super().__init__()
        if summary not in SUMMARIES:
            raise ValueError(f"ConfusionMatrix: summary {summary!r}; choose one of {SUMMARIES}.")
        self.num_classes, self.summary, self.ignore_index = num_classes, summary, ignore_index
        self.add_state("matrix", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: logits ``(N, C, H, W)`` (or predicted labels ``(N, H, W)``) and targets ``(N, H, W)``."""
        self.matrix += count_pixels(outputs, targets, num_classes=self.num_classes, ignore_index=self.ignore_index)

    def compute(self) -> torch.Tensor:
        """The chosen summary of the matrix so far."""
        return summarize(self.matrix, self.summary)
