"""COCO-exact detection metrics over a whole validation set: torchmetrics' ``MeanAveragePrecision`` on a COCO
backend (``faster-coco-eval``, else ``pycocotools``), read as single values (``map``, ``map_50``, ...) that share
one accumulator, so that a validation with three mAP metrics stores the detections and runs COCO's evaluation
once. torchmetrics gathers every rank's detections before it computes (DDP-reduced: the same value as one
process on the whole set).

:func:`coco_evaluation` gives every value at once (per-class AP and AR included), for the report after training;
:func:`image_errors` scores each image (1 - F1 of its matched boxes), for the pictures of the worst ones.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torchmetrics

__all__ = [
    "BACKENDS",
    "MAP_VALUES",
    "DetectionValue",
    "coco_backend",
    "coco_evaluation",
    "detection_metrics",
    "image_errors",
    "mean_average_precision",
    "plain_targets",
]

BACKENDS = ("faster_coco_eval", "pycocotools")  # the backends torchmetrics offers, the faster first
# the single values of COCO's evaluation: AP over IoU .5:.95 (all, small, medium, large objects), at IoU .5 and
# .75, and AR given at most 1, 10, 100 detections per image
MAP_VALUES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


def coco_backend(backend: str | None = None) -> str:
    """The COCO backend to use: ``backend`` when installed, else the first of :data:`BACKENDS` that is.

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
        ImportError: the backend asked for (or, with ``None``, every backend) is not installed; the message
            gives the install command.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"detect: backend={backend!r} is not a COCO backend; choose one of {', '.join(BACKENDS)}.")
    for name in (backend,) if backend is not None else BACKENDS:
        if importlib.util.find_spec(name) is not None:
            return name
    wanted = backend or "faster_coco_eval"
    raise ImportError(
        f"detect: mAP needs a COCO evaluation backend and {wanted} is not installed; "
        f"pip install 'torchgraft[detect]' (or pip install {wanted.replace('_', '-')})."
    )


# COCOeval's own thresholds, in float64: torchmetrics' defaults come from a float32 torch.linspace (0.6 becomes
# 0.6000000238), so a recall of exactly 3/5 falls below its threshold and AP moves by ~1e-3 against pycocotools
# (the expressions of pycocotools' Params.setDetParams)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True).tolist()
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True).tolist()


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


def plain_targets(targets: Sequence[Mapping[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """``{"boxes", "labels"}`` of each target as plain tensors (``tv_tensors.BoundingBoxes`` unwrapped; other
    entries left out): what ``MeanAveragePrecision`` takes as ground truth."""
    return [
        {"boxes": target["boxes"].as_subclass(torch.Tensor).float(), "labels": target["labels"].long()}
        for target in targets
    ]


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


def image_errors(
    detections: Sequence[Mapping[str, torch.Tensor]],
    targets: Sequence[Mapping[str, torch.Tensor]],
    *,
    score_threshold: float,
    iou: float = 0.5,
) -> torch.Tensor:
    """``1 - F1`` of each image: its detections scoring at least ``score_threshold`` matched greedily (best score
    first) to true boxes of the same class at IoU >= ``iou``; 0 for an image with neither boxes nor detections."""
    from torchvision.ops import box_iou

    errors = []
    for found, truth in zip(detections, targets, strict=True):
        keep = found["scores"] >= score_threshold
        boxes, labels, scores = found["boxes"][keep], found["labels"][keep], found["scores"][keep]
        true_boxes, true_labels = truth["boxes"].as_subclass(torch.Tensor), truth["labels"]
        if not len(boxes) and not len(true_boxes):
            errors.append(0.0)
            continue
        overlap = box_iou(boxes.float(), true_boxes.float()) if len(boxes) and len(true_boxes) else None
        taken: set[int] = set()
        for i in scores.argsort(descending=True).tolist() if overlap is not None else []:
            fits = (overlap[i] >= iou) & (true_labels == labels[i])
            candidates = [j for j in fits.nonzero().flatten().tolist() if j not in taken]
            if candidates:
                taken.add(max(candidates, key=lambda j: float(overlap[i, j])))
        matched = len(taken)
        errors.append(1 - 2 * matched / (len(boxes) + len(true_boxes)))
    return torch.tensor(errors, dtype=torch.float64)
