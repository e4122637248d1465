"""Cutting a row of units (blocks, stages) into consecutive groups balanced by parameter count.

Each cut snaps to the shallowest boundary (a stage boundary before a block boundary) within 25% of a
group's share of its ideal position; the callers say how deep each boundary is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import accumulate

__all__ = ["balanced_split"]


def balanced_split(sizes: Sequence[int], n_groups: int, *, depth: Callable[[int], int]) -> list[range]:
    """Consecutive index ranges of ``sizes`` forming ``n_groups`` groups (fewer when there are fewer units).

    Args:
        sizes: parameter count of each unit, in order.
        n_groups: groups wanted.
        depth: ``depth(j)`` is how deep the boundary between units ``j`` and ``j + 1`` is (0: a stage
            boundary, preferred).

    Example:
        >>> balanced_split([1, 1, 1, 1], 2, depth=lambda j: 0)
        [range(0, 2), range(2, 4)]
    """
    n_groups = max(1, min(n_groups, len(sizes)))
    total = sum(sizes) or 1
    cumulative = list(accumulate(sizes))
    cuts, previous = [], -1
    for k in range(1, n_groups):
        target, window = k * total / n_groups, 0.25 * total / n_groups
        choices = range(previous + 1, len(sizes) - (n_groups - k))
        scored = [(abs(cumulative[j] - target) > window, depth(j), abs(cumulative[j] - target), j) for j in choices]
        previous = min(scored)[3]
        cuts.append(previous)
    bounds = [-1, *cuts, len(sizes) - 1]
    return [range(bounds[i] + 1, bounds[i + 1] + 1) for i in range(len(bounds) - 1)]
