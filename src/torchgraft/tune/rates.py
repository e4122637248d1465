"""Learning rates per layer group, from what a user writes: one rate, ``slice(lo, hi)`` spread geometrically,
fastai's ``slice(hi)``, one value per group, or a layer-wise decay. Shared by the optimizer's param groups
(:mod:`torchgraft.tune.optim`), the plan's tables (:mod:`torchgraft.tune.group_types`) and the stages of a
fine-tune."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["LRSpec", "group_lrs"]

LRSpec = float | slice | Sequence[float]


def group_lrs(lr: LRSpec, n: int, *, layer_decay: float | None = None, names: Sequence[str] = ()) -> list[float]:
    """Absolute learning rates for ``n`` groups, early body first.

    Args:
        lr: a float (every group); ``slice(lo, hi)``: spread geometrically from ``lo`` to ``hi``;
            ``slice(hi)``: ``hi / 10`` for the body, ``hi`` for the head (fastai's convention); or one
            value per group.
        n: number of groups.
        layer_decay: ``lr * layer_decay ** (n - 1 - i)`` for group ``i`` (BEiT-style layer-wise decay;
            ``lr`` must be a float).
        names: group names, for error messages.

    Example:
        >>> group_lrs(slice(1e-5, 1e-3), 3)
        [1e-05, 0.0001, 0.001]
    """
    if layer_decay is not None:
        if not isinstance(lr, (int, float)) or not 0 < layer_decay <= 1:
            raise ValueError(
                f"layer_decay={layer_decay!r} needs a float lr (the head's) and a decay in (0, 1], got lr={lr!r}."
            )
        rates = [float(lr) * layer_decay ** (n - 1 - i) for i in range(n)]
    elif isinstance(lr, slice):
        if lr.stop is None or lr.step is not None:
            raise ValueError(f"lr={lr!r}: write slice(lo, hi) or slice(hi).")
        if lr.start is None:
            rates = [lr.stop / 10] * (n - 1) + [lr.stop]
        elif n == 1:
            rates = [float(lr.stop)]
        else:
            rates = [lr.start * (lr.stop / lr.start) ** (i / (n - 1)) for i in range(n)]
    elif isinstance(lr, (int, float)):
        rates = [float(lr)] * n
    else:
        rates = [float(v) for v in lr]
        if len(rates) != n:
            shown = f" ({', '.join(names)})" if names else ""
            raise ValueError(
                f"lr has {len(rates)} values but the model has {n} layer groups{shown}; give one per group."
            )
    if not all(math.isfinite(r) and r >= 0 for r in rates):
        raise ValueError(f"learning rates must be finite and >= 0, got {rates}.")
    return rates
