"""Multi-label classification: any number of labels per sample, one sigmoid per label, thresholded F1/mAP."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from torchgraft.spelling import option
from torchgraft.tasks.base import Task, TaskReport
from torchgraft.tasks.metrics import TargetError

if TYPE_CHECKING:
    import torchmetrics

    from torchgraft.tasks.pictures import ValidationInputs

__all__ = ["Multilabel", "best_threshold"]


def _build(name: str, labels: int, threshold: float) -> torchmetrics.Metric:
    from torchmetrics import classification as tmc

    builders: dict[str, Any] = {
        "f1": lambda: tmc.MultilabelF1Score(labels, threshold=threshold, average="micro"),
        "f1_macro": lambda: tmc.MultilabelF1Score(labels, threshold=threshold, average="macro"),
        "accuracy": lambda: tmc.MultilabelAccuracy(labels, threshold=threshold, average="micro"),
        "map": lambda: tmc.MultilabelAveragePrecision(labels, average="macro"),
    }
    return builders[name]()


def best_threshold(
    probabilities: torch.Tensor, targets: torch.Tensor, *, grid: Sequence[float] | None = None
) -> tuple[float, float]:
    """The decision threshold with the best micro-F1 on a validation set, and that F1.

    Args:
        probabilities: ``(N, C)`` sigmoid outputs.
        targets: ``(N, C)`` 0/1 labels.
        grid: thresholds to try (default 0.05, 0.10, ..., 0.95); ties go to the one nearest 0.5.

    Example:
        >>> threshold, f1 = best_threshold(torch.sigmoid(logits), labels)
    """
    grid = list(grid) if grid is not None else [round(0.05 * i, 2) for i in range(1, 20)]
    if not grid:
        raise ValueError("best_threshold: the grid of thresholds is empty.")
    truth = targets.bool()
    scores = [(_micro_f1(probabilities, truth, t), -abs(t - 0.5), t) for t in grid]
    f1, _, threshold = max(scores)
    return float(threshold), float(f1)


def _micro_f1(probabilities: torch.Tensor, truth: torch.Tensor, threshold: float) -> float:
    tp, fp, fn = (int(count.sum()) for count in _counts(probabilities >= threshold, truth))
    return 2 * tp / max(2 * tp + fp + fn, 1)


class Multilabel(Task):
    """Several labels per sample: targets are 0/1 rows ``(B, C)``, outputs logits ``(B, C)``.

    Args:
        threshold: decision threshold on the sigmoid (used by thresholded metrics and :meth:`decode`);
            :func:`best_threshold` picks one on validation outputs.
        pos_weight: weight of positives per label in the loss (rare labels), as in ``BCEWithLogitsLoss``.
        target_key: key of the targets in mapping batches.

    Metrics: ``f1`` (micro), ``f1_macro``, ``accuracy`` (per-label decisions, micro), ``map`` (mean
    average precision over labels; no threshold) — each over the whole validation set.
    """

    name: ClassVar[str] = "multilabel"
    metric_names: ClassVar[tuple[str, ...]] = ("f1", "f1_macro", "accuracy", "map")
    default_metrics: ClassVar[tuple[str, ...]] = ("f1", "map", "f1_macro", "accuracy")  # every one the README names
    targets: ClassVar[str] = "multilabel"

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        pos_weight: Sequence[float] | None = None,
        choose_threshold: bool = False,
        target_key: str = "labels",
    ) -> None:
        super().__init__(target_key=target_key)
        if not 0 < threshold < 1:
            raise ValueError(f"Multilabel: threshold must lie in (0, 1), got {threshold}.")
        self.threshold = float(threshold)
        self.pos_weight = list(pos_weight) if pos_weight is not None else None
        self.choose_threshold = choose_threshold

    @classmethod
    def for_run(cls, **options: Any) -> Multilabel:
        """A given ``threshold`` kept; without one, 0.5 while training and the best F1 on validation after."""
        threshold = options.get("threshold")
        return cls(threshold=threshold or 0.5, choose_threshold=threshold is None)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy on the logits, one term per label."""
        weight = torch.tensor(self.pos_weight, device=outputs.device) if self.pos_weight is not None else None
        return nn.functional.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype), pos_weight=weight)

    def check(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """0/1 targets of the outputs' shape ``(B, C)``."""
        if targets.shape != outputs.shape or outputs.ndim != 2:
            kind = "class indices" if not targets.is_floating_point() and targets.ndim == 1 else "targets"
            classify = option("task='classify'", "--task classify")
            raise TargetError(
                f"multilabel: needs 0/1 targets of shape {tuple(outputs.shape)} (one column per label), got "
                f"{kind} of shape {tuple(targets.shape)}. Single-label class indices are {classify}."
            )
        if not bool(((targets == 0) | (targets == 1)).all()):
            regression = option("task='regression'", "--task regression")
            raise TargetError(
                f"multilabel: targets must be 0 or 1 per label; other values are regression ({regression})."
            )

    def metric(self, name: str, outputs: torch.Tensor) -> torchmetrics.Metric:
        """An accumulator for ``name`` sized by the number of labels."""
        self.check_metric_name(name)
        return _build(name, int(outputs.shape[1]), self.threshold)

    def update_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer 0/1 targets, as torchmetrics' multi-label metrics expect."""
        return outputs, targets.long()

    def decode(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``probabilities`` (sigmoid) and ``labels`` (0/1 at the threshold)."""
        probabilities = outputs.float().sigmoid()
        return {"probabilities": probabilities, "labels": (probabilities >= self.threshold).long()}

    def report(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[str]) -> TaskReport:
        """With ``choose_threshold``: set the threshold to the best micro-F1 on half the validation samples
        (every other one, in validation order) and report the micro-F1 at it on the other half, which played
        no part in choosing it (``f1_at_threshold``; beside it ``f1_at_0.5`` on the same half): the exported
        operating point, measured as it will do on new data. Under 4 samples, both on all of them (said)."""
        if not self.choose_threshold:
            return TaskReport()
        outputs, targets = zip(*batches, strict=True)
        probabilities, truth = torch.cat(outputs).float().sigmoid(), torch.cat(targets).bool()
        held = len(truth) >= 4
        choose, check = (slice(0, None, 2), slice(1, None, 2)) if held else (slice(None), slice(None))
        self.threshold, chosen = best_threshold(probabilities[choose], truth[choose])
        self.choose_threshold = False
        f1 = _micro_f1(probabilities[check], truth[check], self.threshold)
        at_half = _micro_f1(probabilities[check], truth[check], 0.5)
        counts = {"chosen_on": len(truth[choose]), "reported_on": len(truth[check])}
        where = (
            f"chosen on {counts['chosen_on']} validation samples (micro-F1 {chosen:.4f}); on the other "
            f"{counts['reported_on']}, not used to choose it: micro-F1 {f1:.4f} (at 0.5: {at_half:.4f})"
            if held
            else f"too few validation samples to hold some out: chosen and measured on all {len(truth)}, F1 {f1:.4f}"
        )
        final = {"threshold": self.threshold, "f1_at_threshold": f1, "f1_at_0.5": at_half, "threshold_samples": counts}
        return TaskReport(final=final, lines=[f"threshold: {self.threshold} ({where})"])

    def per_class(
        self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Per label at the task's threshold: ``support`` (validation samples with the label), ``precision``,
        ``recall`` and ``f1`` (a probability above the threshold is a yes, as in torchmetrics' metrics the
        run reports; 0 where a ratio has nothing to divide by)."""
        from torchgraft.tasks.pictures import concatenated

        outputs, targets = concatenated(batches)
        tp, fp, fn = _counts(outputs.float().sigmoid() > self.threshold, targets.bool())
        support = targets.bool().sum(0)
        rows = []
        for i, name in enumerate(classes):
            precision = float(tp[i] / (tp[i] + fp[i])) if tp[i] + fp[i] else 0.0
            recall = float(tp[i] / (tp[i] + fn[i])) if tp[i] + fn[i] else 0.0
            f1 = float(2 * tp[i] / (2 * tp[i] + fp[i] + fn[i])) if tp[i] + fp[i] + fn[i] else 0.0
            rows.append({"class": name, "support": int(support[i]), "precision": precision, "recall": recall, "f1": f1})
        return rows

    def pictures(
        self,
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        classes: Sequence[str],
        directory: Path,
        *,
        inputs: ValidationInputs | None = None,
        count: int = 8,
    ) -> list[Path]:
        """``per_class_f1.png`` (each label's F1 at the threshold), ``threshold.png`` (micro- and macro-F1
        over thresholds 0.05..0.95, the task's marked) and the ``count`` samples of highest binary
        cross-entropy (``worst.png``, texts: ``worst_texts``) with their true and predicted labels."""
        from torchgraft.tasks.pictures import concatenated, plot_bars, plot_curves, show_worst, worst

        rows = self.per_class(batches, classes)
        outputs, targets = concatenated(batches)
        probabilities, truth = outputs.float().sigmoid(), targets.bool()
        title = f"F1 per label at threshold {self.threshold:g} (valid)"
        files = [plot_bars(classes, [r["f1"] for r in rows], directory / "per_class_f1.png", title=title, label="F1")]
        grid = [round(0.05 * i, 2) for i in range(1, 20)]
        micro, macro = [], []
        for threshold in grid:
            tp, fp, fn = _counts(probabilities >= threshold, truth)
            micro.append(float(2 * tp.sum() / max(int(2 * tp.sum() + fp.sum() + fn.sum()), 1)))
            macro.append(float((2 * tp / (2 * tp + fp + fn).clamp(min=1)).mean()))
        curves = {"micro-F1": micro, "macro-F1": macro}
        files.append(
            plot_curves(
                grid, curves, directory / "threshold.png", mark=self.threshold, title="F1 by threshold (valid)",
                xlabel="threshold on the sigmoid",
            )
        )  # fmt: skip
        losses = nn.functional.binary_cross_entropy_with_logits(outputs.float(), targets.float(), reduction="none")
        losses = losses.mean(dim=1)
        chosen = worst(losses, count)

        def names(row: torch.Tensor) -> str:
            return ", ".join(classes[j] for j in row.nonzero().flatten().tolist()) or "none"

        decided = probabilities >= self.threshold  # the task's decisions (decode)
        captions = [
            f"true {names(truth[i])}\npredicted {names(decided[i])}\nloss {float(losses[i]):.2f}" for i in chosen
        ]
        scores = [("loss", [round(float(losses[i]), 4) for i in chosen])]
        return files + show_worst(inputs, chosen, captions, directory, total=len(targets), scores=scores)

    def prediction(
        self, decoded: dict[str, torch.Tensor], classes: Sequence[str], *, top_k: int
    ) -> tuple[list[tuple[str, float]], dict[str, float]]:
        """Every label at or above the threshold, most probable first (``top_k`` does not apply)."""
        probabilities = decoded["probabilities"][0]
        chosen = decoded["labels"][0].nonzero().flatten().tolist()
        return sorted(((classes[i], float(probabilities[i])) for i in chosen), key=lambda item: -item[1]), {}

    def deploy_record(self) -> dict[str, Any]:
        """The decision threshold on the probabilities."""
        return {"threshold": self.threshold}

    def record(self) -> dict[str, Any]:
        """The task name, target key, threshold and positive weights."""
        return {**super().record(), "threshold": self.threshold, "pos_weight": self.pos_weight}


def _counts(predicted: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per label: true positives, false positives, false negatives of 0/1 decisions ``(N, C)``."""
    return (predicted & truth).sum(0), (predicted & ~truth).sum(0), (~predicted & truth).sum(0)
