"""Metrics accumulated over a whole dataset (torchmetrics), reduced across DDP ranks.

A task names the metrics that fit its targets (:meth:`torchgraft.tasks.Task.metric`); a :class:`MetricSet`
builds them once the number of outputs is known, updates them batch by batch and computes each over the
whole validation set — right for accuracy, and for F1, IoU, mAP or R², which per-batch means get wrong.
A plain callable ``metric(outputs, targets) -> tensor`` still works: its batch values are averaged,
weighted by batch size. The functions :func:`accuracy`, :func:`error_rate` and :func:`top_k_accuracy` are
that kind, for use in your own loop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from torchgraft.tasks.batch import tensor_device

if TYPE_CHECKING:
    import torchmetrics

    from torchgraft.tasks.accumulators import BatchMean, ErrorRate
    from torchgraft.tasks.base import Task

__all__ = [
    "BatchMean",
    "ErrorRate",
    "MetricFn",
    "MetricSet",
    "MetricSpec",
    "TargetError",
    "accuracy",
    "check_class_targets",
    "error_rate",
    "top_k_accuracy",
]

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricSpec: TypeAlias = "str | MetricFn | torchmetrics.Metric"  # torchmetrics is imported when a metric is built


def __getattr__(name: str) -> Any:
    """``BatchMean`` and ``ErrorRate`` (torchmetrics Metrics) come from tasks.accumulators when first asked for."""
    if name in ("BatchMean", "ErrorRate"):
        from torchgraft.tasks import accumulators

        return getattr(accumulators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_metric(spec: object) -> bool:
    """Whether ``spec`` is a torchmetrics ``Metric`` (without importing torchmetrics: a Metric object exists
    only once torchmetrics is imported)."""
    module = sys.modules.get("torchmetrics")
    return module is not None and isinstance(spec, module.Metric)


class TargetError(ValueError):
    """Targets of the wrong kind for a task or metric; the message says what they look like and the fix."""


def _describe_targets(targets: torch.Tensor) -> str:
    kind = "integer" if not targets.is_floating_point() else "float"
    shape = tuple(targets.shape)
    if targets.is_floating_point() and targets.ndim == 2 and bool(((targets == 0) | (targets == 1)).all()):
        return f"{kind} 0/1 targets of shape {shape} (multi-label?)"
    if targets.is_floating_point():
        return f"{kind} targets of shape {shape} (regression?)"
    return f"{kind} targets of shape {shape}"


def check_class_targets(outputs: torch.Tensor, targets: torch.Tensor, *, where: str = "accuracy") -> None:
    """Refuse anything but class indices ``(B,)`` in ``[0, C)`` for outputs ``(B, C)``.

    Raises:
        TargetError: with what the targets look like (multi-label 0/1 rows, floats) and what to use instead.
    """
    if outputs.ndim != 2:
        raise TargetError(f"{where}: expects outputs of shape (batch, classes), got {tuple(outputs.shape)}.")
    if targets.is_floating_point() or targets.ndim != 1 or targets.shape[0] != outputs.shape[0]:
        raise TargetError(
            f"{where}: needs class indices of shape ({outputs.shape[0]},) for outputs {tuple(outputs.shape)}, got "
            f"{_describe_targets(targets)}. Use the task that fits the targets (multilabel, regression) or "
            f"integer class labels."
        )
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= outputs.shape[1]):
        raise TargetError(
            f"{where}: class indices must lie in [0, {outputs.shape[1]}), got values from {int(targets.min())} "
            f"to {int(targets.max())}; the model has {outputs.shape[1]} outputs."
        )


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose highest-scoring class is the target (class-index targets only)."""
    check_class_targets(outputs, targets)
    return (outputs.argmax(dim=-1) == targets).float().mean()


def error_rate(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - accuracy``."""
    return 1 - accuracy(outputs, targets)


def top_k_accuracy(outputs: torch.Tensor, targets: torch.Tensor, *, k: int = 5) -> torch.Tensor:
    """Fraction of samples whose target is among the ``k`` highest-scoring classes."""
    check_class_targets(outputs, targets, where=f"top{k}")
    top = outputs.topk(min(k, outputs.shape[-1]), dim=-1).indices
    return (top == targets.unsqueeze(-1)).any(dim=-1).float().mean()


accuracy.higher_is_better = True  # type: ignore[attr-defined]
error_rate.higher_is_better = False  # type: ignore[attr-defined]
top_k_accuracy.higher_is_better = True  # type: ignore[attr-defined]


def _name_of(spec: Any) -> str:
    if is_metric(spec):
        return type(spec).__name__.lower()
    return getattr(spec, "__name__", None) or getattr(getattr(spec, "func", None), "__name__", "metric")


class MetricSet:
    """The metrics of one evaluation, accumulated over every batch.

    Args:
        task: the task that builds named metrics and checks targets.
        specs: names (the task's, e.g. ``"accuracy"``, ``"f1"``), torchmetrics ``Metric`` objects, or
            callables ``(outputs, targets) -> batch value``.

    Raises:
        ValueError: a name the task does not know (the message lists the ones it does).
        TypeError: something that is neither a name, a Metric nor a callable.
    """

    def __init__(self, task: Task, specs: Sequence[MetricSpec] | MetricSpec | None) -> None:
        self.task = task
        items = [] if specs is None else [specs] if isinstance(specs, str) or callable(specs) else list(specs)
        self.specs: dict[str, MetricSpec] = {}
        for spec in items:
            if isinstance(spec, str):
                task.check_metric_name(spec)
                self.specs[spec] = spec
            elif is_metric(spec) or callable(spec):
                self.specs[_name_of(spec)] = spec
            else:
                raise TypeError(
                    f"metrics: {spec!r} is not a metric; pass a name ({', '.join(task.metric_names)}), a "
                    f"torchmetrics Metric or a callable(outputs, targets)."
                )
        self.metrics: dict[str, torchmetrics.Metric] = {}

    @property
    def names(self) -> list[str]:
        """The metric names, in the order given."""
        return list(self.specs)

    def higher_is_better(self, name: str) -> bool | None:
        """Whether a larger value of metric ``name`` is better (``None``: the metric does not say)."""
        spec = self.specs[name]
        if isinstance(spec, str):
            return self.task.metric_direction(spec)
        return getattr(spec, "higher_is_better", None)

    def _build(self, outputs: Any) -> None:
        named = self.task.build_metrics([name for name, spec in self.specs.items() if isinstance(spec, str)], outputs)
        for name, spec in self.specs.items():
            if isinstance(spec, str):
                metric = named[name]
            elif is_metric(spec):
                metric = spec
            else:
                from torchgraft.tasks.accumulators import BatchMean

                metric = BatchMean(spec)
            self.metrics[name] = metric.to(tensor_device(outputs))

    def update(self, outputs: Any, targets: Any) -> None:
        """Add one batch (outputs as the task's forward gave them: the tensor the loss reads; detections). Named
        metrics get what :meth:`Task.update_inputs` makes of it; other metrics get it as it is."""
        if self.specs and not self.metrics:
            self._build(outputs)
        named = (outputs, targets)
        if any(isinstance(spec, str) for spec in self.specs.values()):
            self.task.check(outputs, targets)  # the task's own metrics get only targets of its kind
            named = self.task.update_inputs(outputs, targets)
        for name, metric in self.metrics.items():
            metric.update(*(named if isinstance(self.specs[name], str) else (outputs, targets)))

    def compute(self) -> dict[str, float]:
        """Each metric over everything seen since the last :meth:`reset` (synchronised across DDP ranks)."""
        return {name: float(metric.compute()) for name, metric in self.metrics.items()}

    def reset(self) -> None:
        """Forget the batches seen; the metric objects are kept."""
        for metric in self.metrics.values():
            metric.reset()
