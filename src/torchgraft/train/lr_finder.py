"""The learning-rate finder: a short run with an exponentially growing rate, on a throw-away optimizer.

The model's tensors (parameters, buffers, gradients), its train/eval modes and every random generator are
restored bit for bit afterwards, kept in memory (nothing is written to disk); the Learner's own optimizer
is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchgraft.train.runstate import get_rng_state, set_rng_state
from torchgraft.tune.optim import param_groups

__all__ = ["LRFind", "lr_find"]


@dataclass(frozen=True)
class LRFind:
    """The curve and the suggestion.

    Attributes:
        lrs: the learning rate of each step.
        losses: the smoothed training loss after each step.
        suggestion: the rate where the smoothed loss falls fastest (per log-step of the rate).
        minimum: the rate at the lowest smoothed loss, divided by 10 (a conservative alternative).
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    suggestion: float
    minimum: float

    def plot(self, path: str | Path) -> Path:
        """Write the curve (log scale, suggestion marked) as a PNG; needs matplotlib."""
        from torchgraft.train.plots import plot_lr_find

        return plot_lr_find(self, path)


def _suggest(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """Steepest descent of the smoothed loss in log(lr), before its minimum; and the minimum's rate / 10."""
    lowest = min(range(len(losses)), key=losses.__getitem__)
    start = len(losses) // 10
    window = range(max(start, 1), max(lowest, start + 1) + 1)
    slopes = [
        (losses[i] - losses[i - 1]) / (math.log(lrs[i]) - math.log(lrs[i - 1])) for i in window if i < len(losses)
    ]
    steepest = window[min(range(len(slopes)), key=slopes.__getitem__)] if slopes else lowest
    return lrs[steepest], lrs[lowest] / 10


def _snapshot(model: torch.nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {id(p): (p.grad.detach().clone() if p.grad is not None else None) for p in model.parameters()},
        "modes": [m.training for m in model.modules()],
        "rng": get_rng_state(),
    }


@torch.no_grad()
def _restore(model: torch.nn.Module, snapshot: dict[str, Any]) -> None:
    for name, tensor in model.state_dict().items():
        tensor.copy_(snapshot["state"][name])
    for param in model.parameters():
        saved = snapshot["grads"][id(param)]
        param.grad = saved
    for module, mode in zip(model.modules(), snapshot["modes"], strict=True):
        module.training = mode
    set_rng_state(snapshot["rng"])


def lr_find(
    model: torch.nn.Module,
    batches: Iterable[Any],
    loss_of: Callable[[Any], torch.Tensor],
    *,
    optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
    weight_decay: float = 0.01,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.98,
    stop_factor: float = 4.0,
    on_step: Callable[[int, float, float], None] | None = None,
) -> LRFind:
    """Sweep the learning rate from ``start`` to ``end`` over ``steps`` training batches (cycling through
    ``batches`` if needed) and stop once the smoothed loss exceeds ``stop_factor`` times its best.

    Works in any loop: ``loss_of(batch)`` runs the forward of ``model`` on one batch and returns the loss
    (the Learner passes its task's split and loss). A throw-away ``optimizer`` over
    :func:`torchgraft.param_groups` takes the steps; afterwards ``model``'s tensors, gradients, modes and
    every random generator are restored bit for bit. ``on_step(step, lr, smoothed_loss)`` is called after
    each step (``step`` from 1), e.g. to print progress.

    Raises:
        ValueError: ``start``/``end``/``steps`` out of range, or a loss that diverges at once.

    Example:
        >>> result = lr_find(model, train_dl, lambda b: F.cross_entropy(model(b[0]), b[1]))
        >>> result.suggestion
    """
    if not 0 < start < end or steps < 2:
        raise ValueError(f"lr_find: need 0 < start < end and steps >= 2, got {start}, {end}, {steps}.")
    snapshot = _snapshot(model)
    sweep = optimizer(param_groups(model, lr=start, weight_decay=weight_decay))
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    try:
        model.train()
        for i, batch in zip(range(steps), _cycle(batches), strict=False):
            lr = start * (end / start) ** (i / (steps - 1))
            for group in sweep.param_groups:
                group["lr"] = lr
            loss = loss_of(batch)
            sweep.zero_grad(set_to_none=True)
            loss.backward()
            sweep.step()
            average = smoothing * average + (1 - smoothing) * loss.item()
            smoothed = average / (1 - smoothing ** (i + 1))
            if not math.isfinite(smoothed) or smoothed > stop_factor * best:
                break
            best = min(best, smoothed)
            lrs.append(lr)
            losses.append(smoothed)
            if on_step is not None:
                on_step(i + 1, lr, smoothed)
    finally:
        _restore(model, snapshot)
    if len(lrs) < 3:
        raise ValueError(f"lr_find: the loss diverged within {len(lrs) + 1} steps; start lower than {start}.")
    suggestion, minimum = _suggest(lrs, losses)
    return LRFind(tuple(lrs), tuple(losses), suggestion, minimum)


def _cycle(batches: Iterable[Any]) -> Iterable[Any]:
    """``batches`` over and over (a new pass, a new shuffle, when one runs out)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("lr_find: the data loader yields no batches.")
