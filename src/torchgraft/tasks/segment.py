"""Semantic segmentation: a class per pixel, cross-entropy (optionally + Dice), metrics from one confusion matrix.

Targets are ``(N, H, W)`` class indices; pixels equal to ``ignore_index`` (255 by default: borders, "void")
count nowhere — not in the loss, not in any metric. Every metric is computed from a ``(C, C)`` confusion
matrix accumulated over the whole validation set (and summed over DDP ranks), never averaged per batch:

* ``miou`` — mean intersection over union, over the classes present in the targets or the predictions;
* ``dice`` — mean Dice (F1) over the same classes;
* ``pixel_accuracy`` — correct pixels / counted pixels.

:func:`per_class_iou` gives the per-class values from a matrix (``ConfusionMatrix.matrix``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from torchgraft.tasks.base import Task, TaskReport
from torchgraft.tasks.metrics import TargetError
from torchgraft.tasks.pixel_matrix import SUMMARIES, count_pixels, per_class_dice, per_class_iou

if TYPE_CHECKING:
    import torchmetrics

    from torchgraft.tasks.accumulators import ConfusionMatrix
    from torchgraft.tasks.pictures import ValidationInputs

__all__ = ["IGNORE_INDEX", "ConfusionMatrix", "Segmentation", "per_class_dice", "per_class_iou"]

IGNORE_INDEX = 255


def __getattr__(name: str) -> Any:
    """``ConfusionMatrix`` (a torchmetrics Metric) is imported from tasks.accumulators when first asked for."""
    if name == "ConfusionMatrix":
        from torchgraft.tasks.accumulators import ConfusionMatrix

        return ConfusionMatrix
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """1 - mean soft Dice over the classes, counted pixels only."""
    counted = (targets != ignore_index).unsqueeze(1)
    probabilities = logits.float().softmax(dim=1) * counted
    one_hot = nn.functional.one_hot(targets.clamp(0, logits.shape[1] - 1).long(), logits.shape[1])
    one_hot = one_hot.permute(0, 3, 1, 2) * counted
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    total = probabilities.sum(dims) + one_hot.sum(dims)
    return 1 - ((2 * intersection + 1) / (total + 1)).mean()


class Segmentation(Task):
    """A class per pixel: targets ``(N, H, W)`` class indices, outputs logits ``(N, C, H, W)``.

    Args:
        ignore_index: target value left out of the loss and the metrics (default 255).
        dice_weight: add ``dice_weight * (1 - soft Dice)`` to the cross-entropy (0: cross-entropy alone).
        target_key: key of the targets in mapping batches.

    Example:
        >>> Learner(graft_dense(resnet34(weights="DEFAULT"), 21), train_dl, valid_dl, task=Segmentation())
    """

    name: ClassVar[str] = "segment"
    metric_names: ClassVar[tuple[str, ...]] = SUMMARIES
    default_metrics: ClassVar[tuple[str, ...]] = ("miou", "dice", "pixel_accuracy")  # every one the README names
    targets: ClassVar[str] = "segment"
    dense: ClassVar[bool] = True

    def __init__(
        self, *, ignore_index: int = IGNORE_INDEX, dice_weight: float = 0.0, target_key: str = "labels"
    ) -> None:
        super().__init__(target_key=target_key)
        if dice_weight < 0:
            raise ValueError(f"Segmentation: dice_weight must be >= 0, got {dice_weight}.")
        self.ignore_index, self.dice_weight = int(ignore_index), float(dice_weight)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over counted pixels, plus ``dice_weight`` times the Dice loss."""
        loss = nn.functional.cross_entropy(outputs, targets.long(), ignore_index=self.ignore_index)
        if self.dice_weight:
            loss = loss + self.dice_weight * dice_loss(outputs, targets, self.ignore_index)
        return loss

    def check(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Logits ``(N, C, H, W)``, integer targets ``(N, H, W)`` of the same size, in ``[0, C)`` or ignored."""
        if outputs.ndim != 4:
            raise TargetError(
                f"segment: outputs of shape {tuple(outputs.shape)}; a segmentation model gives (batch, classes, "
                f"height, width) logits (torchgraft.graft_dense)."
            )
        expected = (outputs.shape[0], *outputs.shape[2:])
        if targets.ndim != 3 or tuple(targets.shape) != tuple(expected):
            raise TargetError(
                f"segment: targets of shape {tuple(targets.shape)} for outputs {tuple(outputs.shape)}; masks must "
                f"be (batch, height, width) = {tuple(expected)} (resize masks with nearest, not the images alone)."
            )
        if targets.is_floating_point():
            raise TargetError("segment: float masks; masks hold class indices (integers), one per pixel.")
        values = targets[targets != self.ignore_index]
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= outputs.shape[1]):
            raise TargetError(
                f"segment: mask values from {int(values.min())} to {int(values.max())} but the model has "
                f"{outputs.shape[1]} classes (0..{outputs.shape[1] - 1}, {self.ignore_index} ignored)."
            )

    def metric(self, name: str, outputs: torch.Tensor) -> torchmetrics.Metric:
        """A confusion-matrix accumulator summarised as ``name``, sized by the outputs' classes."""
        self.check_metric_name(name)
        if outputs.ndim != 4:
            raise TargetError(f"segment: metric {name!r} needs (batch, classes, height, width) outputs.")
        from torchgraft.tasks.accumulators import ConfusionMatrix

        return ConfusionMatrix(int(outputs.shape[1]), summary=name, ignore_index=self.ignore_index)

    def decode(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``probabilities`` (softmax over classes) and ``labels`` (the mask, argmax)."""
        probabilities = outputs.float().softmax(dim=1)
        return {"probabilities": probabilities, "labels": probabilities.argmax(dim=1)}

    @classmethod
    def for_run(cls, **options: Any) -> Segmentation:
        """The run's ``dice_weight`` (default 0: cross-entropy alone)."""
        return cls(dice_weight=options.get("dice_weight") or 0.0)

    def kept(self, outputs: torch.Tensor, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The predicted classes and the masks (one byte a pixel when they fit): all :meth:`report` reads."""
        predicted, masks = outputs.detach().argmax(dim=1).cpu(), torch.as_tensor(targets).cpu()
        if outputs.shape[1] <= 256 and 0 <= self.ignore_index <= 255:
            return predicted.to(torch.uint8), masks.to(torch.uint8)
        return predicted, masks

    def report(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[str]) -> TaskReport:
        """Per-class IoU and Dice over the validation set (``None`` for a class in neither masks nor predictions)."""
        matrix = self._matrix(batches, len(classes))
        final: dict[str, Any] = {}
        for name, values in (("per_class_iou", per_class_iou(matrix)), ("per_class_dice", per_class_dice(matrix))):
            final[name] = {c: (None if v != v else round(float(v), 4)) for c, v in zip(classes, values, strict=True)}
        return TaskReport(final=final)

    def _matrix(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
        matrix = torch.zeros(n, n, dtype=torch.long)
        for outputs, targets in batches:
            matrix += count_pixels(outputs, targets, num_classes=n, ignore_index=self.ignore_index)
        return matrix

    def per_class(
        self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Per class over the validation pixels (ignored ones left out): ``support`` (pixels of the class in
        the masks), ``iou`` and ``dice`` (``None`` for a class in neither masks nor predictions)."""
        matrix = self._matrix(batches, len(classes))
        iou, dice = per_class_iou(matrix), per_class_dice(matrix)
        return [
            {"class": name, "support": int(matrix[i].sum()), "iou": None if iou[i] != iou[i] else float(iou[i]),
             "dice": None if dice[i] != dice[i] else float(dice[i])}
            for i, name in enumerate(classes)
        ]  # fmt: skip

    def pictures(
        self,
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        classes: Sequence[str],
        directory: Path,
        *,
        inputs: ValidationInputs | None = None,
        count: int = 8,
    ) -> list[Path]:
        """``per_class_iou.png`` and ``worst_masks.png``: the ``min(count, 6)`` validation images of lowest pixel
        accuracy, each with the true and the predicted mask drawn over it (at the size the model saw)."""
        from torchgraft.tasks.pictures import concatenated, overlay_labels, plot_bars, plot_grid, worst

        rows = self.per_class(batches, classes)
        iou = [float("nan") if r["iou"] is None else r["iou"] for r in rows]
        files = [plot_bars(classes, iou, directory / "per_class_iou.png", title="IoU per class (valid)", label="IoU")]
        predicted, masks = concatenated(batches)
        predicted = predicted.argmax(dim=1) if predicted.ndim == masks.ndim + 1 else predicted
        counted = masks != self.ignore_index
        wrong = ((predicted.long() != masks.long()) & counted).flatten(1).sum(1)
        errors = wrong / counted.flatten(1).sum(1).clamp(min=1)
        chosen = worst(errors, min(count, 6))
        if inputs is None or inputs.kind != "image" or inputs.load is None or len(inputs.items) != len(masks):
            return files
        colours = _palette(len(classes), inputs.colours)
        drawn, names = [], []
        for i in chosen:
            image = inputs.load(inputs.items[i]).convert("RGB").resize((masks.shape[2], masks.shape[1]))
            pixels = np.asarray(image)
            ignore = self.ignore_index
            truth = overlay_labels(pixels, masks[i].numpy(), colours, ignore=ignore)
            guess = overlay_labels(pixels, predicted[i].numpy(), colours, ignore=ignore)
            drawn.append([pixels, truth, guess])
            names.append(f"{Path(inputs.items[i]).name}: {1 - float(errors[i]):.2f} of pixels right")
        columns = ["image (lowest pixel accuracy first)", "true mask", "predicted mask"]
        files.append(plot_grid(drawn, columns, directory / "worst_masks.png", row_titles=names))
        return files

    def deploy_record(self) -> dict[str, Any]:
        """How a program reads the mask from the ``(N, classes, H, W)`` probabilities (at the image's size:
        the exported graph resizes them back)."""
        return {"mask": "argmax over axis 1 of the (N, classes, H, W) probabilities, H and W the input image's"}

    def record(self) -> dict[str, Any]:
        """The task name, target key, ignored value and Dice weight."""
        return {**super().record(), "ignore_index": self.ignore_index, "dice_weight": self.dice_weight}


def _palette(n: int, colours: Sequence[tuple[int, int, int]] | None) -> np.ndarray:
    """``(n, 3)`` RGB colours: ``colours`` when given (the data's), else class 0 black (background, left
    undrawn) and matplotlib's ``tab20`` for the others."""
    if colours is not None and len(colours) >= n:
        return np.asarray(colours[:n], dtype=np.float32)
    from torchgraft.figures import pyplot

    table = pyplot().get_cmap("tab20")
    return np.asarray([(0.0, 0.0, 0.0)] + [tuple(255 * c for c in table(i % 20)[:3]) for i in range(1, n)])
