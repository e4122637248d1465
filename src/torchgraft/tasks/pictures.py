"""What the tasks' pictures share: the validation inputs they show (:class:`ValidationInputs`), choosing the worst
samples, and the drawings (a confusion matrix, captioned thumbnails, a table of texts, bars, a curve, a scatter,
masks over images), each written as a PNG.

Each task draws its own pictures (:meth:`Task.pictures <torchgraft.tasks.Task.pictures>`) from the validation
outputs a run already holds (:mod:`torchgraft.train.kept`), so they cost no pass over the validation set; only
the few worst samples' files are read again. matplotlib is imported when a picture is drawn
(:mod:`torchgraft.figures`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from torchgraft.figures import pyplot, save_figure

__all__ = [
    "ValidationInputs",
    "concatenated",
    "overlay_labels",
    "plot_bars",
    "plot_confusion",
    "plot_curves",
    "plot_grid",
    "plot_scatter",
    "show_worst",
    "worst",
    "write_text_table",
]


@dataclass(frozen=True)
class ValidationInputs:
    """The validation samples a run's pictures show, in the order of the validation outputs (the validation
    loader's order: a folder's sorted files, a text loader's length-sorted batches).

    Attributes:
        kind: ``"image"`` (``items`` are image files) or ``"text"`` (``items`` are the texts).
        items: one per validation sample.
        load: reads an image file as RGB (the run's own reader); images only.
        colours: one RGB colour per class, for masks drawn over images (segmentation).
    """

    kind: Literal["image", "text"]
    items: Sequence[str]
    load: Callable[[str], Any] | None = None
    colours: Sequence[tuple[int, int, int]] | None = None


def concatenated(batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """All outputs and all targets of ``batches`` (``(outputs, targets)`` each, on the CPU), in order."""
    if not batches:
        raise ValueError("pictures: no validation batches; a run with a validation set draws its pictures.")
    outputs, targets = zip(*batches, strict=True)
    return torch.cat(outputs), torch.cat(targets)


def worst(scores: torch.Tensor, count: int) -> list[int]:
    """The places of the ``count`` highest ``scores`` (per-sample losses or errors), highest first; ties keep
    the validation order."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order[: max(0, count)]


def show_worst(
    inputs: ValidationInputs | None,
    chosen: Sequence[int],
    captions: Sequence[str],
    directory: Path,
    *,
    total: int,
    scores: Sequence[tuple[str, Any]] = (),
) -> list[Path]:
    """The ``chosen`` samples with their ``captions``: images as captioned thumbnails (``worst.png``), texts as
    a table (``worst_texts.png`` and ``worst_texts.csv``, with ``scores``: extra columns, a name and one
    value per chosen sample). Nothing when the inputs are unknown or are not the ``total`` samples the
    outputs are of (drawing other samples' files would caption them wrongly)."""
    if inputs is None or len(inputs.items) != total or not chosen:
        return []
    if inputs.kind == "text":
        header = ["text", "what", *(name for name, _ in scores)]
        rows = [
            [inputs.items[i], caption, *(values[k] for _, values in scores)]
            for k, (i, caption) in enumerate(zip(chosen, captions, strict=True))
        ]
        return write_text_table(header, rows, directory / "worst_texts.png", directory / "worst_texts.csv")
    assert inputs.load is not None, "ValidationInputs of images need load="
    images = [_small(inputs.load(inputs.items[i])) for i in chosen]
    names = [f"{Path(inputs.items[i]).name}\n{caption}" for i, caption in zip(chosen, captions, strict=True)]
    return [_thumbnails(images, names, directory / "worst.png")]


def _small(image: Any, side: int = 256) -> np.ndarray:
    """A PIL image shrunk to fit ``side`` pixels (a photo of 4000 px is not drawn whole), as an array."""
    if hasattr(image, "thumbnail"):
        image = image.copy()
        image.thumbnail((side, side))
    return np.asarray(image)


def _thumbnails(images: Sequence[np.ndarray], captions: Sequence[str], path: Path, columns: int = 4) -> Path:
    plt = pyplot()
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 0.4 + 3.9 * rows), squeeze=False)
    for k, axis in enumerate(axes.flat):
        axis.axis("off")
        if k < len(images):
            axis.imshow(images[k])
            axis.set_title(captions[k], fontsize="small")
    figure.suptitle("highest-loss validation samples")
    return save_figure(figure, path)


def write_text_table(header: Sequence[str], rows: Sequence[Sequence[Any]], png: Path, table: Path) -> list[Path]:
    """``rows`` under ``header`` as a CSV file (whole texts) and as a PNG (texts cut to one line of ~90
    characters)."""
    table.parent.mkdir(parents=True, exist_ok=True)
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    plt = pyplot()
    cells = [[_one_line(str(value), 90 if j == 0 else 40) for j, value in enumerate(row)] for row in rows]
    figure, axis = plt.subplots(figsize=(14, 0.6 + 0.32 * (len(rows) + 1)))
    axis.axis("off")
    drawn = axis.table(cellText=cells, colLabels=list(header), loc="upper left", cellLoc="left")
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(8)
    drawn.auto_set_column_width(list(range(len(header))))
    axis.set_title("highest-loss validation texts", fontsize="small")
    return [save_figure(figure, png), table]


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path) -> Path:
    """A confusion matrix (rows: true class, columns: predicted) with counts in the cells, as a PNG."""
    plt = pyplot()
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
    return save_figure(figure, path)


def plot_grid(
    rows: Sequence[Sequence[Any]],
    columns: Sequence[str],
    path: str | Path,
    *,
    row_titles: Sequence[str] | None = None,
) -> Path:
    """Images (PIL images or ``(H, W, 3)`` arrays) in a grid, one row per example, ``columns`` naming the
    columns (segmentation: the image, the true mask over it, the predicted mask over it), as a PNG;
    ``row_titles`` name each row's example (over its first image)."""
    plt = pyplot()
    figure, axes = plt.subplots(len(rows), len(columns), figsize=(3 * len(columns), 3 * len(rows)), squeeze=False)
    for r, (row, images) in enumerate(zip(axes, rows, strict=True)):
        for c, (axis, image, title) in enumerate(zip(row, images, columns, strict=True)):
            axis.imshow(image)
            named = row_titles is not None and c == 0
            axis.set_title(f"{title}\n{row_titles[r]}" if named else title, fontsize="small")  # type: ignore[index]
            axis.axis("off")
    return save_figure(figure, path)


def plot_bars(names: Sequence[str], values: Sequence[float], path: Path, *, title: str, label: str) -> Path:
    """One horizontal bar per name (a class, a label), its value written beside it, as a PNG."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 1.2 + 0.3 * len(names)))
    shown = [0.0 if v != v else v for v in values]  # NaN (no sample): an empty bar
    axis.barh(range(len(names)), shown, color="tab:blue")
    axis.set_yticks(range(len(names)), list(names))
    axis.invert_yaxis()
    axis.set(xlim=(0, 1.08), xlabel=label, title=title)
    for i, value in enumerate(values):
        axis.text(min(shown[i], 1.0) + 0.01, i, "n/a" if value != value else f"{value:.2f}", va="center", fontsize=8)
    return save_figure(figure, path)


def plot_curves(
    x: Sequence[float],
    curves: dict[str, Sequence[float]],
    path: Path,
    *,
    mark: float | None,
    title: str,
    xlabel: str,
) -> Path:
    """Curves over ``x`` (one per name), with a vertical line at ``mark`` (a chosen threshold), as a PNG."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        axis.plot(x, values, marker=".", label=name)
    if mark is not None:
        axis.axvline(mark, color="tab:red", linestyle="--", label=f"chosen {mark:g}")
    axis.set(xlabel=xlabel, title=title, ylim=(0, 1.02))
    axis.legend(fontsize="small")
    return save_figure(figure, path)


def plot_scatter(truth: torch.Tensor, predicted: torch.Tensor, names: Sequence[str], path: Path) -> Path:
    """Predicted against true values, one panel per target column (at most 6), the diagonal drawn, as a PNG."""
    plt = pyplot()
    columns = min(len(names), 6)
    figure, axes = plt.subplots(1, columns, figsize=(4 * columns, 4), squeeze=False)
    for k, axis in enumerate(axes[0]):
        t, p = truth[:, k].numpy(), predicted[:, k].numpy()
        low, high = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        axis.scatter(t, p, s=10, alpha=0.6)
        axis.plot([low, high], [low, high], color="0.5", linestyle="--", linewidth=1)
        axis.set(xlabel=f"true {names[k]}", ylabel=f"predicted {names[k]}", title=names[k])
    return save_figure(figure, path)


def overlay_labels(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, *, ignore: int) -> np.ndarray:
    """``image`` (``(H, W, 3)`` uint8) with each pixel's class colour blended in at half weight; pixels of a
    black class (background) and ``ignore`` pixels are left as they are."""
    table = np.zeros((256, 3), dtype=np.float32)
    table[: min(len(colours), 256)] = colours[:256]
    index = labels.astype(np.int64).clip(0, 255)
    painted = (labels != ignore) & (table[index].sum(-1) > 0)
    out = image.astype(np.float32)
    out[painted] = 0.5 * out[painted] + 0.5 * table[index][painted]
    return out.astype(np.uint8)
