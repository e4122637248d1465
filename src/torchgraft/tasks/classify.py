"""Single-label classification: one class per sample, cross-entropy, accuracy-family metrics, softmax."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from torchgraft.tasks.balance import balanced_weights, class_counts
from torchgraft.tasks.base import Task, TaskReport
from torchgraft.tasks.metrics import TargetError, check_class_targets

if TYPE_CHECKING:
    import torchmetrics

    from torchgraft.tasks.pictures import ValidationInputs

__all__ = ["Classification"]


def _build(name: str, classes: int) -> torchmetrics.Metric:
    from torchmetrics import classification as tmc

    from torchgraft.tasks.accumulators import ErrorRate

    builders: dict[str, Any] = {
        "accuracy": lambda: tmc.MulticlassAccuracy(classes, average="micro"),
        "error_rate": lambda: ErrorRate(classes, average="micro"),
        "balanced_accuracy": lambda: tmc.MulticlassAccuracy(classes, average="macro"),
        "top3": lambda: tmc.MulticlassAccuracy(classes, top_k=min(3, classes), average="micro"),
        "top5": lambda: tmc.MulticlassAccuracy(classes, top_k=min(5, classes), average="micro"),
        "f1": lambda: tmc.MulticlassF1Score(classes, average="macro"),
        "precision": lambda: tmc.MulticlassPrecision(classes, average="macro"),
        "recall": lambda: tmc.MulticlassRecall(classes, average="macro"),
    }
    return builders[name]()


class Classification(Task):
    """One class per sample: targets are class indices ``(B,)``, outputs logits ``(B, C)``.

    Args:
        label_smoothing: cross-entropy label smoothing.
        class_weights: one weight per class for the loss (``None``: all 1): each sample's cross-entropy is
            multiplied by its class's weight and the batch's mean taken over samples (not over the weights, as
            PyTorch's ``weight=`` does), so that N processes at batch B still equal one process at batch N·B.
            :meth:`fit_targets` sets balanced weights (:func:`~torchgraft.tasks.balance.balanced_weights`) for a
            run made with ``balance=True``.
        target_key: key of the targets in mapping batches.

    Metrics: ``accuracy``, ``error_rate``, ``balanced_accuracy`` (mean per-class recall), ``top3``,
    ``top5``, ``f1``/``precision``/``recall`` (macro averages) — each over the whole validation set.

    Example:
        >>> Learner(model, train_dl, valid_dl, task=Classification(), metrics=["accuracy", "f1"])
        >>> Classification.for_run(balance=True).fit_targets(train_labels)  # every class weighs the same
    """

    name: ClassVar[str] = "classify"
    metric_names: ClassVar[tuple[str, ...]] = (
        "accuracy",
        "error_rate",
        "balanced_accuracy",
        "top3",
        "top5",
        "f1",
        "precision",
        "recall",
    )
    default_metrics: ClassVar[tuple[str, ...]] = ("accuracy",)

    def __init__(
        self,
        *,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        target_key: str = "labels",
    ) -> None:
        super().__init__(target_key=target_key)
        self.label_smoothing = label_smoothing
        self.balance = False  # fit_targets sets balanced class weights (a run made with balance=True)
        self.n_classes: int | None = None  # the run's classes, when some may have no training sample
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if self.class_weights is not None and (self.class_weights.ndim != 1 or bool((self.class_weights < 0).any())):
            raise ValueError(f"classify: class_weights must be one weight >= 0 per class, got {class_weights}.")

    @classmethod
    def for_run(cls, **options: Any) -> Classification:
        """Balanced class weights fitted on the training targets when ``balance`` is set (``classes``: how many
        the run has)."""
        task = cls()
        task.balance, task.n_classes = bool(options.get("balance")), options.get("classes")
        return task

    def fit_targets(self, targets: Sequence[Any]) -> Classification:
        """With ``balance``: class weights ``N / (C * n_c)`` from the training targets' class counts."""
        if self.balance:
            labels = [int(t) for t in targets]
            counts = class_counts(labels, max(self.n_classes or 0, max(labels) + 1))
            self.class_weights = torch.tensor(balanced_weights(counts))
        return self

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (class indices, or class probabilities for mixed/soft labels); with
        ``class_weights`` each sample's weighted by its class, averaged over the batch's samples."""
        if self.class_weights is None:
            return nn.functional.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)
        if self.class_weights.numel() != outputs.shape[-1]:
            raise TargetError(
                f"classify: {self.class_weights.numel()} class weights for outputs of {outputs.shape[-1]} classes; "
                f"give one weight per class."
            )
        weights = self.class_weights.to(outputs.device, outputs.dtype)
        each = nn.functional.cross_entropy(
            outputs, targets, weight=weights, reduction="none", label_smoothing=self.label_smoothing
        )
        return each.mean()

    def loss_description(self) -> str:
        """With class weights: the weights, said in the plan."""
        if self.class_weights is None:
            return ""
        weights = ", ".join(f"{w:.3g}" for w in self.class_weights.tolist())
        return f"cross-entropy weighted by class (--balance: N / (classes x class count); weights {weights})"

    def check(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Class indices ``(B,)`` within ``[0, C)`` for outputs ``(B, C)``."""
        check_class_targets(outputs, targets, where="classify")

    def check_training(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Class indices, or class probabilities ``(B, C)`` whose rows sum to 1 (mixup, soft labels)."""
        if targets.is_floating_point() and targets.shape == outputs.shape:
            sums = targets.float().sum(dim=-1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
                raise TargetError(
                    f"classify: float targets of shape {tuple(targets.shape)} whose rows do not sum to 1 are not "
                    f"class probabilities (multi-label 0/1 rows?). Use the task that fits the targets or class indices."
                )
            return
        self.check(outputs, targets)

    def metric(self, name: str, outputs: torch.Tensor) -> torchmetrics.Metric:
        """An accumulator for ``name`` sized by the number of classes (the outputs' last dimension)."""
        self.check_metric_name(name)
        if outputs.ndim != 2 or outputs.shape[1] < 2:
            raise TargetError(
                f"classify: metric {name!r} needs outputs of shape (batch, classes >= 2), got "
                f"{tuple(outputs.shape)}; a single output is regression or binary multi-label."
            )
        return _build(name, int(outputs.shape[1]))

    def metric_direction(self, name: str) -> bool:
        """Every classification metric improves upwards except ``error_rate``."""
        return name != "error_rate"

    def decode(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``probabilities`` (softmax) and ``labels`` (argmax)."""
        probabilities = outputs.float().softmax(dim=-1)
        return {"probabilities": probabilities, "labels": probabilities.argmax(dim=-1)}

    def report(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[str]) -> TaskReport:
        """The validation set's confusion matrix (rows: true class, columns: predicted), to draw."""
        return TaskReport(confusion=_confusion(batches, len(classes)).tolist())

    def per_class(
        self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Per class: ``support`` (validation samples of the class), ``precision``, ``recall`` and ``f1`` of
        the argmax predictions (0 where a ratio has nothing to divide by, as torchmetrics)."""
        matrix = _confusion(batches, len(classes)).double()
        hits, truth, predicted = matrix.diag(), matrix.sum(1), matrix.sum(0)
        precision = torch.where(predicted > 0, hits / predicted.clamp(min=1), 0.0)
        recall = torch.where(truth > 0, hits / truth.clamp(min=1), 0.0)
        f1 = torch.where(truth + predicted > 0, 2 * hits / (truth + predicted).clamp(min=1), 0.0)
        return [
            {"class": name, "support": int(truth[i]), "precision": float(precision[i]), "recall": float(recall[i]),
             "f1": float(f1[i])}
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
        """``confusion.png`` and the ``count`` validation samples of highest cross-entropy (``worst.png``,
        texts: ``worst_texts.png`` and ``.csv``), each with its true class and the predicted one with its
        probability."""
        from torchgraft.tasks.pictures import concatenated, plot_confusion, show_worst, worst

        outputs, targets = concatenated(batches)
        if targets.is_floating_point():  # class probabilities (soft labels): no one true class to count
            return []
        files = [plot_confusion(_confusion(batches, len(classes)).tolist(), classes, directory / "confusion.png")]
        losses = nn.functional.cross_entropy(outputs.float(), targets.long(), reduction="none")
        probabilities = outputs.float().softmax(dim=1)
        chosen = worst(losses, count)
        captions = [
            f"true {classes[int(targets[i])]}\npredicted {classes[int(probabilities[i].argmax())]} "
            f"({float(probabilities[i].max()):.2f})\nloss {float(losses[i]):.2f}"
            for i in chosen
        ]
        scores = [
            ("p(true)", [round(float(probabilities[i, int(targets[i])]), 4) for i in chosen]),
            ("loss", [round(float(losses[i]), 4) for i in chosen]),
        ]
        return files + show_worst(inputs, chosen, captions, directory, total=len(targets), scores=scores)

    def record(self) -> dict[str, Any]:
        """The task name, target key, label smoothing and the class weights (when set)."""
        weights = {} if self.class_weights is None else {"class_weights": self.class_weights.tolist()}
        return {**super().record(), "label_smoothing": self.label_smoothing, **weights}


def _confusion(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
    """``(n, n)`` counts of (true class, argmax prediction) over ``batches`` (class-index targets)."""
    matrix = torch.zeros(n * n, dtype=torch.long)
    for outputs, targets in batches:
        matrix += torch.bincount(targets.long() * n + outputs.argmax(dim=1), minlength=n * n)
    return matrix.view(n, n)
