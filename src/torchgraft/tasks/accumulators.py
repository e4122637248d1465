"""The torchmetrics ``Metric`` classes torchgraft defines (and the detection values built on torchmetrics'
``MeanAveragePrecision``). This is the one module of the package that imports
torchmetrics at its top (2-3 s, with the scipy and transformers it pulls in), and it is imported only when a
metric is built, at the first validation batch: a run reaches its first training step without it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torchmetrics
from torchmetrics.classification import MulticlassAccuracy

from torchgraft.tasks.boxmetrics import IOU_THRESHOLDS, MAP_VALUES, RECALL_THRESHOLDS, coco_backend, plain_targets
from torchgraft.tasks.pixel_matrix import SUMMARIES, count_pixels, summarize

__all__ = [
    "BatchMean",
    "ConfusionMatrix",
    "DetectionValue",
    "ErrorRate",
    "coco_evaluation",
    "detection_metrics",
    "mean_average_precision",
]


class ErrorRate(MulticlassAccuracy):
    """``1 - accuracy`` over the whole set (lower is better)."""

    higher_is_better = False

    def compute(self) -> torch.Tensor:
        return 1 - super().compute()


class BatchMean(torchmetrics.MeanMetric):
    """A plain ``fn(outputs, targets) -> scalar`` averaged over batches, weighted by batch size.

    Its direction is read from ``fn.higher_is_better`` by :meth:`MetricSet.higher_is_better`.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:  # type: ignore[override]
        value = torch.as_tensor(self.fn(outputs, targets), dtype=torch.float32, device=outputs.device)
        super().update(value, weight=outputs.shape[0])


class ConfusionMatrix(torchmetrics.Metric):
    """A ``(C, C)`` pixel confusion matrix over a whole dataset (summed across DDP ranks), and one summary of it.

    Args:
        num_classes: classes.
        summary: ``"miou"``, ``"dice"`` or ``"pixel_accuracy"``: what :meth:`compute` returns.
        ignore_index: target value excluded everywhere.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, *, summary: str = "miou", ignore_index: int = 255) -> None:
        super().__init__()
        if summary not in SUMMARIES:
            raise ValueError(f"ConfusionMatrix: summary {summary!r}; choose one of {SUMMARIES}.")
        self.num_classes, self.summary, self.ignore_index = num_classes, summary, ignore_index
        self.add_state("matrix", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: logits ``(N, C, H, W)`` (or predicted labels ``(N, H, W)``) and targets ``(N, H, W)``."""
        self.matrix += count_pixels(outputs, targets, num_classes=self.num_classes, ignore_index=self.ignore_index)

    def compute(self) -> torch.Tensor:
        """The chosen summary of the matrix so far."""
        return summarize(self.matrix, self.summary)


def mean_average_precision(
    *, backend: str | None = None, class_metrics: bool = False, sync_on_compute: bool = True
) -> torchmetrics.Metric:
    """A torchmetrics ``MeanAveragePrecision`` on xyxy boxes with a COCO backend (:func:`coco_backend`) and
    COCOeval's own IoU and recall thresholds (exactly pycocotools' values). ``sync_on_compute``: gather every
    rank's images before computing (off for what one rank computes alone: the report on rank 0)."""
    return _ranks_gathered()(
        box_format="xyxy",
        backend=coco_backend(backend),
        class_metrics=class_metrics,
        iou_thresholds=IOU_THRESHOLDS,
        rec_thresholds=RECALL_THRESHOLDS,
        sync_on_compute=sync_on_compute,
    )


@functools.cache
def _ranks_gathered() -> type[torchmetrics.Metric]:
    """``MeanAveragePrecision`` whose ranks send their images' states whole: torchmetrics gathers list states
    element by element, which needs the same number of images on every rank (a validation set of 7 images on 2
    ranks, 4 and 3, aborted gloo with "Received data size doesn't match expected size")."""
    import torch.distributed as dist
    from torchmetrics.detection import MeanAveragePrecision

    class RanksGathered(MeanAveragePrecision):
        def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
            group = process_group or self.process_group
            for name in self._reductions:  # each state: one entry per image (tensors, or tuples of masks)
                local = [_to(entry, torch.device("cpu")) for entry in getattr(self, name)]
                parts: list[Any] = [None] * dist.get_world_size(group)
                dist.all_gather_object(parts, local, group=group)
                setattr(self, name, [_to(entry, self.device) for part in parts for entry in part])

    return RanksGathered


def _to(entry: Any, device: torch.device) -> Any:
    if isinstance(entry, torch.Tensor):
        return entry.to(device)
    return tuple(_to(item, device) for item in entry) if isinstance(entry, tuple) else entry


class DetectionValue(torchmetrics.Metric):
    """One value of COCO's evaluation (``key``: one of :data:`MAP_VALUES`) over everything seen since the last
    reset. Values built together (:func:`detection_metrics`) share one ``MeanAveragePrecision``: the first one
    (the owner) feeds and resets it, and COCO's evaluation runs once per compute for all of them
    (torchmetrics keeps its result until the next update).

    Args:
        key: the value to return.
        accumulator: the shared ``MeanAveragePrecision``; ``None``: a new one, owned by this value.
        backend: the COCO backend of a new accumulator (:func:`coco_backend`).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, key: str, *, accumulator: torchmetrics.Metric | None = None, backend: str | None = None) -> None:
        super().__init__()
        if key not in MAP_VALUES:
            raise ValueError(
                f"detect: {key!r} is not a value of COCO's evaluation; choose from {', '.join(MAP_VALUES)}"
            )
        self.key, self.owner = key, accumulator is None
        self.accumulator = accumulator if accumulator is not None else mean_average_precision(backend=backend)

    def update(self, detections: Sequence[Mapping[str, torch.Tensor]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add a batch: one ``{"boxes", "scores", "labels"}`` dict per image, and its ``{"boxes", "labels"}``."""
        if self.owner:
            predictions = [{k: d[k] for k in ("boxes", "scores", "labels")} for d in detections]
            self.accumulator.update(predictions, plain_targets(targets))

    def compute(self) -> torch.Tensor:
        """The value over the whole set (every rank's images under DDP)."""
        return self.accumulator.compute()[self.key].float()

    def reset(self) -> None:
        """Forget the images seen (the owner empties the shared accumulator)."""
        super().reset()
        if self.owner:
            self.accumulator.reset()


def detection_metrics(names: Sequence[str], *, backend: str | None = None) -> dict[str, DetectionValue]:
    """One :class:`DetectionValue` per name, all reading one accumulator.

    Example:
        >>> metrics = detection_metrics(["map", "map_50"])
        >>> for metric in metrics.values():
        ...     metric.update(detections, targets)
        >>> {name: float(metric.compute()) for name, metric in metrics.items()}
        {'map': 0.41, 'map_50': 0.77}
    """
    if not names:
        return {}
    first = DetectionValue(names[0], backend=backend)
    return {names[0]: first, **{name: DetectionValue(name, accumulator=first.accumulator) for name in names[1:]}}


def coco_evaluation(
    batches: Iterable[tuple[Sequence[Mapping[str, torch.Tensor]], Sequence[Mapping[str, Any]]]],
    classes: Sequence[str],
    *,
    backend: str | None = None,
) -> dict[str, Any]:
    """Every value of COCO's evaluation over ``batches`` of ``(detections, targets)`` (labels ``0..C-1``):
    :data:`MAP_VALUES` as floats, and ``per_class_ap`` / ``per_class_ar`` (AR given 100 detections) as
    ``{class name: value}``, ``None`` for a class with neither boxes nor detections. COCO writes -1 for a
    value without ground truth (``map`` of a set without any box). Computed by this process alone (under
    ``torchrun`` rank 0 reports on the gathered validation set)."""
    metric = mean_average_precision(backend=backend, class_metrics=True, sync_on_compute=False)
    for detections, targets in batches:
        metric.update([{k: d[k] for k in ("boxes", "scores", "labels")} for d in detections], plain_targets(targets))
    values = metric.compute()
    result: dict[str, Any] = {key: float(values[key]) for key in MAP_VALUES}
    seen = [int(c) for c in values["classes"].reshape(-1)]
    for name, key in (("per_class_ap", "map_per_class"), ("per_class_ar", "mar_100_per_class")):
        by_label = dict(zip(seen, values[key].reshape(-1).tolist(), strict=True))
        result[name] = {c: _value(by_label.get(i)) for i, c in enumerate(classes)}
    return result


def _value(value: float | None) -> float | None:
    """A per-class value, ``None`` when COCO has none (-1: no ground truth for the class)."""
    return None if value is None or value < 0 else round(float(value), 6)
