"""Learning-rate schedules built on ``torch.optim.lr_scheduler`` (nothing re-implemented)."""

from __future__ import annotations

import math

import torch

__all__ = ["one_cycle", "warmup_fraction"]


def warmup_fraction(pct_start: float, total_steps: int) -> float:
    """``pct_start`` adjusted so that ``OneCycleLR`` works for any number of steps.

    ``OneCycleLR`` divides by the length of each phase, ``pct_start * total_steps - 1`` steps for the
    warm-up: with 4 steps and 0.25 that is zero and it raises ``ZeroDivisionError``. Such a count moves
    the end of the warm-up half a step later; nothing else changes.

    Raises:
        ValueError: ``pct_start`` outside ``(0, 1)`` or ``total_steps < 1``.
    """
    if not 0 < pct_start < 1:
        raise ValueError(f"one_cycle: pct_start must lie in (0, 1), got {pct_start}.")
    if total_steps < 1:
        raise ValueError(f"one_cycle: total_steps must be >= 1, got {total_steps}.")
    if math.isclose(pct_start * total_steps, 1.0):
        return 1.5 / total_steps if total_steps > 2 else 0.5 / total_steps
    return pct_start


def one_cycle(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    *,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> torch.optim.lr_scheduler.OneCycleLR:
    """``OneCycleLR`` where each parameter group warms up to its own current ``lr`` and anneals; momentum
    (Adam's beta1) cycles the other way for optimizers that have one. Works from one step up.

    Example:
        >>> scheduler = one_cycle(torch.optim.AdamW(param_groups(model, lr=slice(1e-5, 1e-3))), 1000)
    """
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=warmup_fraction(pct_start, total_steps),
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        cycle_momentum="momentum" in optimizer.defaults or "betas" in optimizer.defaults,
    )
