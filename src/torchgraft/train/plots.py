"""Plots of a training run as PNG files: loss and metric curves, each group's learning rate, the lr_find
curve. matplotlib is imported only here, and only when a plot is asked for (``pip install matplotlib``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "plot_confusion",
    "plot_grid",
    "plot_history",
    "plot_lr_find",
    "plot_lrs",
    "plot_training",
]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib (or torchgraft[plot])") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


def plot_history(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Training and validation loss per epoch (left) and every metric (right), as a PNG at ``path``.

    Raises:
        ValueError: an empty history.
    """
    if not history:
        raise ValueError("plot_history: the history is empty; train for at least one epoch first.")
    plt = _pyplot()
    steps = list(range(1, len(history) + 1))
    metrics = [k for k in history[0] if k not in ("stage", "phase", "epoch", "seconds", "train_loss", "valid_loss")]
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "valid_loss"):
        if key in history[0]:
            losses.plot(steps, [r[key] for r in history], marker="o", label=key.replace("_", " "))
    losses.set(xlabel="epoch", ylabel="loss", title="loss")
    losses.legend()
    for key in metrics:
        scores.plot(steps, [r[key] for r in history], marker="o", label=key)
    scores.set(xlabel="epoch", title="metrics")
    if metrics:
        scores.legend()
    return _save(figure, path)


def plot_lrs(layer_rates: Sequence[dict[str, float | None]], path: str | Path) -> Path:
    """The rate each step used, one line per layer group (``body0``, ..., ``head``) for the whole run, on a
    log scale, as a PNG at ``path``; steps where a group was frozen are gaps, and the legend gives each
    group's peak."""
    if not layer_rates:
        raise ValueError("plot_lrs: no steps recorded; train first.")
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    names = list(dict.fromkeys(name for row in layer_rates for name in row))
    steps = range(1, len(layer_rates) + 1)
    for name in names:
        series = [row.get(name) for row in layer_rates]
        used = [rate for rate in series if rate is not None]
        label = f"{name}: peak {max(used):.2g}" if used else f"{name}: frozen throughout"
        axis.plot(steps, [math.nan if rate is None else rate for rate in series], label=label)
    axis.set(xlabel="step", ylabel="learning rate", yscale="log", title="rate used per layer group (gaps: frozen)")
    axis.legend(fontsize="small")
    return _save(figure, path)


def plot_lr_find(result: Any, path: str | Path) -> Path:
    """The smoothed loss against the learning rate (log scale) with the suggestion marked."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(result.lrs, result.losses)
    axis.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggestion {result.suggestion:.2g}")
    axis.set(xscale="log", xlabel="learning rate", ylabel="smoothed loss", title="lr_find")
    axis.legend()
    return _save(figure, path)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path) -> Path:
    """A confusion matrix (rows: true class, columns: predicted) with counts in the cells, as a PNG."""
    plt = _pyplot()
    n = len(classes)
    side = min(16.0, 2.5 + 0.45 * n)
    figure, axis = plt.subplots(figsize=(side, side))
    axis.imshow(matrix, cmap="Blues")
    axis.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title="confusion matrix (valid)")
    axis.set_xticklabels(classes, rotation=90)
    axis.set_yticklabels(classes)
    if n <= 30:
        top = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                color = "white" if count > top / 2 else "black"
                axis.text(j, i, str(count), ha="center", va="center", color=color, fontsize="small")
    return _save(figure, path)


def plot_grid(rows: Sequence[Sequence[Any]], columns: Sequence[str], path: str | Path) -> Path:
    """Images (PIL images or ``(H, W, 3)`` arrays) in a grid, one row per example, ``columns`` naming the
    columns (segmentation: the image, the true mask over it, the predicted mask over it), as a PNG."""
    plt = _pyplot()
    figure, axes = plt.subplots(len(rows), len(columns), figsize=(3 * len(columns), 3 * len(rows)), squeeze=False)
    for row, images in zip(axes, rows, strict=True):
        for axis, image, title in zip(row, images, columns, strict=True):
            axis.imshow(image)
            axis.set_title(title, fontsize="small")
            axis.axis("off")
    return _save(figure, path)


def plot_training(
    history: Sequence[dict[str, Any]], layer_rates: Sequence[dict[str, float | None]], directory: str | Path
) -> list[Path]:
    """``loss.png`` (:func:`plot_history`) and ``lr.png`` (:func:`plot_lrs`: one line per layer group, the
    rate each step used) in ``directory``."""
    directory = Path(directory)
    return [plot_history(history, directory / "loss.png"), plot_lrs(layer_rates, directory / "lr.png")]
