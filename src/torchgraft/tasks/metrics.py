"""Metrics: accuracy, error rate, top-k accuracy — plain functions of (outputs, targets).

A metric is any callable ``metric(outputs, targets) -> scalar tensor`` giving the batch mean; the Learner
averages it over a dataset weighted by batch size. Built-in ones can be named by string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

__all__ = ["METRICS", "Metric", "accuracy", "error_rate", "resolve_metrics", "top_k_accuracy"]

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose highest-scoring class is the target."""
    return (outputs.argmax(dim=-1) == targets).float().mean()


def error_rate(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - accuracy``."""
    return 1 - accuracy(outputs, targets)


def top_k_accuracy(outputs: torch.Tensor, targets: torch.Tensor, *, k: int = 5) -> torch.Tensor:
    """Fraction of samples whose target is among the ``k`` highest-scoring classes."""
    k = min(k, outputs.shape[-1])
    top = outputs.topk(k, dim=-1).indices
    return (top == targets.unsqueeze(-1)).any(dim=-1).float().mean()


METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "error_rate": error_rate,
    "top5": partial(top_k_accuracy, k=5),
    "top3": partial(top_k_accuracy, k=3),
}


def resolve_metrics(metrics: Sequence[str | Metric] | Metric | str | None) -> dict[str, Metric]:
    """Names and callables for ``metrics`` (strings from :data:`METRICS`, or callables named after themselves).

    Raises:
        ValueError: an unknown metric name (the message lists the known ones).
    """
    if metrics is None:
        return {}
    items = [metrics] if isinstance(metrics, str) or callable(metrics) else list(metrics)
    resolved: dict[str, Metric] = {}
    for item in items:
        if isinstance(item, str):
            if item not in METRICS:
                raise ValueError(f"unknown metric {item!r}. Choose from {sorted(METRICS)} or pass a callable.")
            resolved[item] = METRICS[item]
        elif callable(item):
            name = getattr(item, "__name__", None) or getattr(getattr(item, "func", None), "__name__", "metric")
            resolved[name] = item
        else:
            raise TypeError(f"a metric must be a name or a callable(outputs, targets), got {type(item).__name__}.")
    return resolved
