"""What COCO-exact detection metrics are made of, without torchmetrics: the values of COCO's evaluation
(:data:`MAP_VALUES`), its backends (:func:`coco_backend`: ``faster-coco-eval``, else ``pycocotools``) and exact
thresholds, ground truth as ``MeanAveragePrecision`` takes it (:func:`plain_targets`), and a per-image score for
the pictures of the worst images (:func:`image_errors`).

The torchmetrics side (imported at the first validation batch) is in :mod:`torchgraft.tasks.accumulators`:
:class:`~torchgraft.tasks.accumulators.DetectionValue` (one value, the values of one metric set sharing one
``MeanAveragePrecision``, every rank's images gathered before COCO's evaluation) and
:func:`~torchgraft.tasks.accumulators.coco_evaluation` (every value at once, per-class AP and AR included, for the
report after training).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "IOU_THRESHOLDS",
    "MAP_VALUES",
    "RECALL_THRESHOLDS",
    "coco_backend",
    "image_errors",
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


def plain_targets(targets: Sequence[Mapping[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """``{"boxes", "labels"}`` of each target as plain tensors (``tv_tensors.BoundingBoxes`` unwrapped; other
    entries left out): what ``MeanAveragePrecision`` takes as ground truth."""
    return [
        {"boxes": target["boxes"].as_subclass(torch.Tensor).float(), "labels": target["labels"].long()}
        for target in targets
    ]


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
