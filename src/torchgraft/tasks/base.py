"""The Task contract: everything about a learning problem that the training loop must not hard-code.

A task owns how a batch becomes model inputs and targets, the default loss, which metrics fit its targets
(and in which direction they improve), how outputs decode into predictions, and what an export records so
that ``predict`` can read it back. The Learner, ``lr_find``, the feature cache and run/export/predict go
through it, so one loop serves every task.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torchmetrics

from torchgraft.tasks.batch import output_tensor, split_batch

__all__ = ["Task"]


class Task:
    """Base class of tasks; subclasses set :attr:`name`, :attr:`metric_names` and implement the hooks.

    Args:
        target_key: the key of the targets in mapping batches (``labels``, as Hugging Face collators write).
    """

    name: ClassVar[str] = "task"
    metric_names: ClassVar[tuple[str, ...]] = ()
    default_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, target_key: str = "labels") -> None:
        self.target_key = target_key

    def split(self, batch: Any) -> tuple[Any, Any]:
        """``(inputs, targets)`` of a batch (see :func:`torchgraft.tasks.batch.split_batch`)."""
        return split_batch(batch, target_key=self.target_key)

    def outputs(self, raw: Any) -> torch.Tensor:
        """The tensor the loss and metrics read from what the model returned (``logits`` of a ModelOutput)."""
        return output_tensor(raw)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The default training loss."""
        raise NotImplementedError

    def check(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Raise a clear error when ``targets`` are not of the kind this task trains on."""

    def check_training(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Checked on the first training batch of every fit (default: :meth:`check`)."""
        self.check(outputs, targets)

    def check_metric_name(self, name: str) -> None:
        """Raise ``ValueError`` naming the metrics that fit this task when ``name`` is not one of them."""
        if name not in self.metric_names:
            raise ValueError(
                f"unknown metric {name!r} for the {self.name} task. Choose from {', '.join(self.metric_names)}, "
                f"or pass a torchmetrics Metric or a callable(outputs, targets)."
            )

    def metric(self, name: str, outputs: torch.Tensor) -> torchmetrics.Metric:
        """A fresh accumulator for metric ``name``, sized from a first batch of ``outputs``."""
        raise NotImplementedError

    def update_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What this task's own metrics are fed for one batch (default: outputs and targets as they are;
        regression maps outputs back to the targets' units)."""
        return outputs, targets

    def metric_direction(self, name: str) -> bool:
        """Whether a larger value of metric ``name`` is better."""
        return True

    def decode(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions from raw outputs (probabilities, labels, values, masks)."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """What an export writes about the task (``predict`` rebuilds the task from it)."""
        return {"name": self.name, "target_key": self.target_key}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target_key={self.target_key!r})"
