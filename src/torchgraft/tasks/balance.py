"""How balanced the classes of a single-label training set are: their counts, the warning when one class is
far smaller than the others, and class weights that make every class weigh the same in the loss.

The rule of the warning: a class with fewer than a third (:data:`IMBALANCE_RATIO`) of the median class's
training samples. The weights are ``N / (C * n_c)`` (scikit-learn's ``"balanced"``): a class's samples
together weigh ``N / C``, whatever its count, and the mean weight over the training samples is 1, so the
weighted loss stays on the scale of the unweighted one.

Example:
    >>> counts = class_counts([0, 0, 0, 1, 2, 2, 2], 3)
    >>> counts, imbalance_warning(counts, ["a", "b", "c"])
    ([3, 1, 3], "class imbalance: 'b' has 1 training samples, the median class 3 ...")
    >>> balanced_weights(counts)
    [0.777..., 2.333..., 0.777...]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from statistics import median

__all__ = ["IMBALANCE_RATIO", "balanced_weights", "class_counts", "imbalance_warning"]

IMBALANCE_RATIO = 1 / 3  # a class under this share of the median class's count is named in the warning


def class_counts(targets: Iterable[int], n_classes: int) -> list[int]:
    """Training samples per class index ``0..n_classes - 1``."""
    counts = [0] * n_classes
    for target in targets:
        counts[int(target)] += 1
    return counts


def imbalance_warning(counts: Sequence[int], classes: Sequence[str], *, what: str = "samples") -> str:
    """The warning for classes under :data:`IMBALANCE_RATIO` of the median count (with every count), or
    ``""`` when none is."""
    if len(counts) < 2 or not any(counts):
        return ""
    middle = median(counts)
    small = [(c, n) for c, n in zip(classes, counts, strict=True) if n < IMBALANCE_RATIO * middle]
    if not small:
        return ""
    named = ", ".join(f"{c!r} has {n:,}" for c, n in sorted(small, key=lambda item: item[1]))
    every = ", ".join(f"{c} {n:,}" for c, n in zip(classes, counts, strict=True))
    return (
        f"class imbalance: {named} training {what}, the median class {middle:,g} (under a third of it); such a "
        f"class is rarely predicted. --balance weighs the loss by class (balance=True), or add {what}. "
        f"Counts: {every}"
    )


def balanced_weights(counts: Sequence[int]) -> list[float]:
    """``N / (C * n_c)`` per class (0 for a class without samples): every class weighs the same in total and
    the mean weight over the ``N`` training samples is 1.

    Raises:
        ValueError: no samples at all.
    """
    total, present = sum(counts), sum(1 for n in counts if n)
    if total == 0:
        raise ValueError("balance: no training samples to count the classes of.")
    return [total / (present * n) if n else 0.0 for n in counts]
