"""Object detection: boxes and classes per image, with the model's own losses and COCO-exact mAP.

A batch is ``(images, targets)`` as :func:`~torchgraft.data.detection.collate_boxes` makes it: a list of ``(3, H,
W)`` images (uint8 are scaled to ``[0, 1]`` here) and one ``{"boxes": (N, 4) xyxy pixels, "labels": (N,) int64
0..C-1}`` per image (``N`` may be 0). torchvision's detectors compute their own loss: while training
:meth:`Detect.forward` calls ``model(images, targets)`` and :meth:`Detect.loss` sums the losses it returns; in
evaluation ``model(images)`` gives one ``{"boxes", "scores", "labels"}`` per image, which the metrics read
(:class:`torchgraft.tasks.accumulators.DetectionValue`: ``map``, ``map_50``, ``map_75``, ... over the whole
validation set, every rank's images gathered). There is no validation loss (the detections are not what the loss reads).

Labels stay ``0..C-1`` for the user: models that keep label 0 for the background (Faster/Mask/Keypoint R-CNN, SSD)
get them shifted by one while training and their detections shifted back (:func:`label_offset_of`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from torchgraft.tasks.base import Task, TaskReport
from torchgraft.tasks.boxmetrics import MAP_VALUES, image_errors, plain_targets
from torchgraft.tasks.metrics import TargetError

if TYPE_CHECKING:
    import torchmetrics

    from torchgraft.tasks.pictures import ValidationInputs

__all__ = ["Detect", "DetectionModelError", "drawn_boxes", "label_offset_of", "model_classes"]

Detections = list[dict[str, torch.Tensor]]  # one {"boxes" (K, 4), "scores" (K,), "labels" (K,)} per image
_TRUE, _PREDICTED = "#22c55e", "#ef4444"  # green: true boxes, red: predicted


class DetectionModelError(TypeError):
    """The model does not behave as a detector: no dict of losses while training, or no boxes in evaluation."""


def label_offset_of(model: nn.Module) -> int:
    """What the model's labels add to the data's ``0..C-1``: the model's own ``label_offset`` attribute when it
    records one, else :func:`torchgraft.grafting.label_offset` for a detector (1 for torchvision's that keep
    label 0 for the background: Faster/Mask/Keypoint R-CNN, SSD, SSDLite, grafted or not; 0 for RetinaNet and
    FCOS), else 0 (a detector of your own).

    Example:
        >>> label_offset_of(fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, num_classes=4))
        1
    """
    from torchgraft.grafting.redetect import is_detector, label_offset

    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    recorded = getattr(inner, "label_offset", None)
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        return recorded
    return label_offset(inner) if is_detector(inner) else 0


def model_classes(model: nn.Module) -> int | None:
    """How many classes a torchvision detector's head scores (the background included where it has one), or
    ``None`` when the model is of another kind."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    predictor = getattr(getattr(inner, "roi_heads", None), "box_predictor", None)  # Faster/Mask/Keypoint R-CNN
    if isinstance(getattr(predictor, "cls_score", None), nn.Linear):
        return int(predictor.cls_score.out_features)  # type: ignore[union-attr]
    head = getattr(getattr(inner, "head", None), "classification_head", None)
    for name in ("num_classes", "num_columns"):  # RetinaNet and FCOS; SSD
        if isinstance(getattr(head, name, None), int):
            return int(getattr(head, name))
    return None


def _check_labels(targets: Sequence[Mapping[str, torch.Tensor]], shift: int, model: nn.Module) -> None:
    """Refuse labels the model has no output for (a class count built without the background, or too small)."""
    classes = model_classes(model)
    labels = [target["labels"] for target in targets if target["labels"].numel()]
    if classes is None or not labels:
        return
    top = int(torch.cat(labels).max())
    if top + shift >= classes:
        background = " + 1 for the background (label 0)" if shift else ""
        raise TargetError(
            f"detect: the data has class index {top} but the model scores {classes} classes{background}; build it "
            f"with num_classes={top + 1 + shift} or more (the number of classes{background})."
        )


def _images(inputs: Any) -> list[torch.Tensor]:
    """The batch's images as a list of float ``(3, H, W)`` in ``[0, 1]`` (uint8 scaled; a 4-D tensor split)."""
    if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
        inputs = list(inputs)
    if not isinstance(inputs, list | tuple) or not all(isinstance(x, torch.Tensor) and x.ndim == 3 for x in inputs):
        raise TargetError(
            f"detect: the batch's inputs are {type(inputs).__name__}; a detection batch is (list of (3, H, W) "
            f"images, list of target dicts): DataLoader(..., collate_fn=torchgraft.data.detection.collate_boxes)."
        )
    return [x.as_subclass(torch.Tensor).float().div(255) if x.dtype == torch.uint8 else x.as_subclass(torch.Tensor)
            for x in inputs]  # fmt: skip


def _targets(targets: Any, count: int) -> list[Mapping[str, torch.Tensor]]:
    """``targets`` checked: one mapping with ``boxes`` ``(N, 4)`` and integer ``labels`` ``(N,)`` per image."""
    if not isinstance(targets, list | tuple) or len(targets) != count:
        size = len(targets) if isinstance(targets, list | tuple) else type(targets).__name__
        raise TargetError(
            f"detect: {count} images but targets {size}; give one {{'boxes', 'labels'}} dict per image "
            f"(torchgraft.data.detection.BoxDataset with collate_boxes)."
        )
    for k, target in enumerate(targets):
        if not isinstance(target, Mapping) or "boxes" not in target or "labels" not in target:
            keys = sorted(target) if isinstance(target, Mapping) else type(target).__name__
            raise TargetError(f"detect: target {k} of the batch is {keys}; each needs 'boxes' and 'labels'.")
        boxes, labels = target["boxes"], target["labels"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape != (boxes.shape[0],) or labels.is_floating_point():
            raise TargetError(
                f"detect: target {k} has boxes {tuple(boxes.shape)} and labels {tuple(labels.shape)} "
                f"{labels.dtype}; need (N, 4) xyxy pixel boxes and (N,) integer class indices."
            )
    return list(targets)


def _checked_detections(found: Any, count: int) -> Detections:
    if (
        not isinstance(found, list | tuple)
        or len(found) != count
        or not all(isinstance(d, Mapping) and {"boxes", "scores", "labels"} <= set(d) for d in found)
    ):
        raise DetectionModelError(
            f"detect: in evaluation mode the model returned {type(found).__name__}, not one {{'boxes', 'scores', "
            f"'labels'}} dict per image ({count} images); use a torchvision detection model "
            f"(torchvision.models.detection) or one that returns the same."
        )
    return list(found)


class Detect(Task):
    """Boxes and classes per image, for torchvision's detection models (and any model that behaves like them:
    ``model(images, targets)`` returns a dict of losses in training mode, ``model(images)`` a list of
    ``{"boxes", "scores", "labels"}`` in evaluation mode).

    Args:
        score_threshold: detections scoring below it are left out of predictions and pictures (never of the
            metrics: COCO's mAP ranks every detection).
        label_offset: what the model's labels add to the data's ``0..C-1`` (1: label 0 is the background);
            ``None`` reads it from the model (:func:`label_offset_of`).
        backend: the COCO evaluation backend, ``"faster_coco_eval"`` or ``"pycocotools"`` (``None``: the first
            installed).
        target_key: key of the targets in mapping batches.

    Metrics: ``map`` (AP over IoU .50:.95), ``map_50``, ``map_75``, ``map_small``/``medium``/``large``,
    ``mar_1``/``mar_10``/``mar_100`` (AR given that many detections per image): COCO's values over the whole
    validation set, higher is better.

    Example:
        >>> model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=4)
        >>> train_dl = DataLoader(train_set, batch_size=4, shuffle=True, collate_fn=collate_boxes)
        >>> Learner(model, train_dl, valid_dl, task="detect").fit(3, 1e-4)
    """

    name: ClassVar[str] = "detect"
    metric_names: ClassVar[tuple[str, ...]] = MAP_VALUES
    default_metrics: ClassVar[tuple[str, ...]] = ("map", "map_50", "map_75")
    targets: ClassVar[str] = "detect"
    output: ClassVar[str] = "boxes"
    validation_loss: ClassVar[bool] = False

    def __init__(
        self,
        *,
        score_threshold: float = 0.5,
        label_offset: int | None = None,
        backend: str | None = None,
        target_key: str = "labels",
    ) -> None:
        super().__init__(target_key=target_key)
        if not 0 <= score_threshold <= 1:
            raise ValueError(f"Detect: score_threshold must lie in [0, 1], got {score_threshold}.")
        if label_offset is not None and label_offset not in (0, 1):
            raise ValueError(f"Detect: label_offset={label_offset!r}; 1 (label 0 is the background), 0, or None.")
        self.score_threshold, self.label_offset, self.backend = float(score_threshold), label_offset, backend

    @classmethod
    def for_run(cls, **options: Any) -> Detect:
        """The run's ``score_threshold`` (``torchgraft train --threshold``; default 0.5)."""
        threshold = options.get("score_threshold", options.get("threshold"))
        return cls(score_threshold=0.5 if threshold is None else threshold)

    def offset(self, model: nn.Module) -> int:
        """The label offset for ``model``: the one given, else :func:`label_offset_of`."""
        return self.label_offset if self.label_offset is not None else label_offset_of(model)

    def forward(self, model: nn.Module, inputs: Any, targets: Any, *, training: bool) -> Any:
        """Training: the dict of losses of ``model(images, targets)`` (labels shifted by :meth:`offset`);
        evaluation: ``model(images)``'s detections, float boxes and scores, labels back in ``0..C-1``.

        Raises:
            TargetError: the batch is not a list of images and one target dict per image, or has a class the
                model scores no output for.
            DetectionModelError: the model returns no dict of losses while training, or no detections in
                evaluation.
        """
        images, shift = _images(inputs), self.offset(model)
        if training:
            checked = _targets(targets, len(images))
            _check_labels(checked, shift, model)
            shifted = [
                {**target, "boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"] + shift}
                for target in checked
            ]
            losses = model(images, shifted)
            if not isinstance(losses, Mapping) or not all(isinstance(v, torch.Tensor) for v in losses.values()):
                raise DetectionModelError(
                    f"detect: in training mode model(images, targets) returned {type(losses).__name__}, not a dict "
                    f"of losses. torchvision detection models compute their losses in training mode (model.train()); "
                    f"a model without its own loss needs loss=your_loss(outputs, targets) and a task of its kind."
                )
            return dict(losses)
        found = _checked_detections(model(images), len(images))
        return [
            {"boxes": d["boxes"].float(), "scores": d["scores"].float(), "labels": d["labels"].long() - shift}
            for d in found
        ]

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """The sum of the model's losses (torchvision: classification and box regression of each stage)."""
        if not isinstance(outputs, Mapping) or not outputs:
            raise TargetError(
                f"detect: the loss reads the model's dict of losses (its training-mode output), got "
                f"{type(outputs).__name__}; detections have no loss."
            )
        return torch.stack([value.float() for value in outputs.values()]).sum()

    def loss_description(self) -> str:
        """Says that the loss is the model's own."""
        return "the detector's own losses, summed (classification and box regression of each stage)"

    def check(self, outputs: Any, targets: Any) -> None:
        """Detections (one ``{"boxes", "scores", "labels"}`` per image) and one target dict per image."""
        if isinstance(outputs, Mapping):
            raise TargetError(
                "detect: the metrics read detections (the model in evaluation mode), got a dict of losses."
            )
        detections = _checked_detections(outputs, len(outputs) if isinstance(outputs, list | tuple) else -1)
        _targets(targets, len(detections))

    def check_metric_name(self, name: str) -> None:
        """Raise ``ValueError`` naming the detection metrics when ``name`` is not one of them."""
        if name not in self.metric_names:
            raise ValueError(
                f"unknown metric {name!r} for the detect task (COCO's values over the validation set). Choose from "
                f"{', '.join(self.metric_names)}, or pass a torchmetrics Metric that takes (detections, targets)."
            )

    def metric(self, name: str, outputs: Any) -> torchmetrics.Metric:
        """The COCO value ``name`` over the validation set (its own accumulator)."""
        return self.build_metrics([name], outputs)[name]

    def build_metrics(self, names: Sequence[str], outputs: Any) -> dict[str, torchmetrics.Metric]:
        """The COCO values ``names``, sharing one accumulator (one evaluation per compute)."""
        from torchgraft.tasks.accumulators import detection_metrics

        for name in names:
            self.check_metric_name(name)
        return dict(detection_metrics(list(names), backend=self.backend))

    def update_inputs(self, outputs: Any, targets: Any) -> tuple[Any, Any]:
        """The detections, and the targets as plain ``{"boxes", "labels"}`` tensors."""
        return outputs, plain_targets(targets)

    def kept(self, outputs: Any, targets: Any) -> tuple[Any, Any]:
        """Each image's detections and true boxes on the CPU, with ``canvas_size`` (the image's ``(H, W)`` as
        the model saw it) when the boxes record it (``tv_tensors.BoundingBoxes``): all the report reads."""
        detections = [{k: v.detach().cpu() for k, v in d.items()} for d in outputs]
        truth = []
        for target, plain in zip(targets, plain_targets(targets), strict=True):
            canvas = getattr(target["boxes"], "canvas_size", None)
            sized = {"canvas_size": torch.tensor(canvas)} if canvas is not None else {}
            truth.append({**{k: v.cpu() for k, v in plain.items()}, **sized})
        return detections, truth

    def decode(self, outputs: Any) -> dict[str, torch.Tensor]:
        """The detections scoring at least ``score_threshold``, of every image of the batch in one table:
        ``boxes`` ``(K, 4)`` xyxy pixels, ``scores`` ``(K,)``, ``labels`` ``(K,)`` (``0..C-1``) and ``image``
        ``(K,)`` (the image each belongs to), best first within an image."""
        parts: dict[str, list[torch.Tensor]] = {"boxes": [], "scores": [], "labels": [], "image": []}
        for k, found in enumerate(outputs):
            keep = found["scores"] >= self.score_threshold
            order = found["scores"][keep].argsort(descending=True)
            parts["boxes"].append(found["boxes"][keep][order].float().reshape(-1, 4))
            parts["scores"].append(found["scores"][keep][order].float())
            parts["labels"].append(found["labels"][keep][order].long())
            parts["image"].append(torch.full((len(order),), k, dtype=torch.long))
        empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long),
                 "image": torch.zeros(0, dtype=torch.long)}  # fmt: skip
        return {key: torch.cat(values) if values else empty[key] for key, values in parts.items()}

    def detections(self, decoded: dict[str, torch.Tensor], classes: Sequence[str]) -> list[dict[str, Any]]:
        """The decoded detections (:meth:`decode`) as JSON-ready rows: ``image``, ``label`` (the class name),
        ``score``, ``box`` ``[x1, y1, x2, y2]`` in pixels.

        Example:
            >>> task.detections(task.decode(model_outputs), ["cat", "dog"])[0]
            {'image': 0, 'label': 'dog', 'score': 0.93, 'box': [12.0, 30.5, 220.0, 198.25]}
        """
        return [
            {"image": int(image), "label": classes[int(label)], "score": round(float(score), 4),
             "box": [round(float(v), 2) for v in box]}
            for box, score, label, image in zip(
                decoded["boxes"], decoded["scores"], decoded["labels"], decoded["image"], strict=True
            )
        ]  # fmt: skip

    def prediction(
        self, decoded: dict[str, torch.Tensor], classes: Sequence[str], *, top_k: int
    ) -> tuple[list[tuple[str, float]], dict[str, float]]:
        """One image's ``(top, {})``: the class and score of its ``top_k`` best detections (those at or above
        ``score_threshold``), best first; the boxes are :meth:`detections`."""
        order = decoded["scores"].argsort(descending=True)[: max(1, top_k)]
        return [(classes[int(decoded["labels"][i])], float(decoded["scores"][i])) for i in order.tolist()], {}

    def report(self, batches: Iterable[tuple[Any, Any]], classes: Sequence[str]) -> TaskReport:
        """COCO's values over the validation set: ``map``, ``map_50``, ``map_75``, ``mar_100`` and the per-class
        AP and AR (``per_class_ap``, ``per_class_ar``: ``None`` for a class without boxes), with a table of
        them."""
        from torchgraft.tasks.accumulators import coco_evaluation

        values = coco_evaluation(batches, classes, backend=self.backend)
        final = {key: round(values[key], 6) for key in ("map", "map_50", "map_75", "mar_100")}
        final.update(per_class_ap=values["per_class_ap"], per_class_ar=values["per_class_ar"])
        width = max([5, *map(len, classes)])
        lines = [f"{'class':<{width}}  {'AP':>6}  {'AR@100':>6}"]
        for name in classes:
            ap, ar = values["per_class_ap"][name], values["per_class_ar"][name]
            lines.append(f"{name:<{width}}  {_shown(ap):>6}  {_shown(ar):>6}")
        lines.append(f"{'all':<{width}}  {_shown(values['map']):>6}  {_shown(values['mar_100']):>6}  "
                     f"(AP50 {_shown(values['map_50'])}, AP75 {_shown(values['map_75'])})")  # fmt: skip
        return TaskReport(final=final, lines=lines)

    def per_class(self, batches: Sequence[tuple[Any, Any]], classes: Sequence[str]) -> list[dict[str, Any]]:
        """Per class over the validation set: ``support`` (true boxes), ``ap`` (IoU .50:.95) and ``ar`` (given
        100 detections per image); ``None`` for a class without boxes."""
        from torchgraft.tasks.accumulators import coco_evaluation

        values = coco_evaluation(batches, classes, backend=self.backend)
        support = torch.zeros(len(classes), dtype=torch.long)
        for _, targets in batches:
            for target in targets:
                support += torch.bincount(target["labels"].long(), minlength=len(classes))[: len(classes)]
        return [
            {"class": name, "support": int(support[i]), "ap": values["per_class_ap"][name],
             "ar": values["per_class_ar"][name]}
            for i, name in enumerate(classes)
        ]  # fmt: skip

    def pictures(
        self,
        batches: Sequence[tuple[Any, Any]],
        classes: Sequence[str],
        directory: Path,
        *,
        inputs: ValidationInputs | None = None,
        count: int = 8,
    ) -> list[Path]:
        """``per_class_ap.png`` and ``worst_boxes.png``: the ``min(count, 6)`` validation images of highest
        error (1 - F1 of the detections at or above ``score_threshold`` matched at IoU 0.5), each drawn with its
        true boxes and with the predicted ones (label and score), at the size the model saw."""
        from torchgraft.tasks.pictures import plot_bars, plot_grid, worst

        rows = self.per_class(batches, classes)
        ap = [float("nan") if r["ap"] is None else r["ap"] for r in rows]
        files = [plot_bars(classes, ap, directory / "per_class_ap.png", title="AP per class (valid)", label="AP")]
        detections = [d for found, _ in batches for d in found]
        targets = [t for _, truth in batches for t in truth]
        if inputs is None or inputs.kind != "image" or inputs.load is None or len(inputs.items) != len(targets):
            return files
        errors = image_errors(detections, targets, score_threshold=self.score_threshold)
        drawn, names = [], []
        for i in worst(errors, min(count, 6)):
            image = _loaded(inputs.load(inputs.items[i]), targets[i].get("canvas_size"))
            truth = drawn_boxes(image, targets[i]["boxes"], [classes[int(c)] for c in targets[i]["labels"]], _TRUE)
            keep = detections[i]["scores"] >= self.score_threshold
            found = {k: v[keep] for k, v in detections[i].items()}
            captions = [
                f"{classes[int(c)]} {float(s):.2f}" for c, s in zip(found["labels"], found["scores"], strict=True)
            ]
            drawn.append([truth, drawn_boxes(image, found["boxes"], captions, _PREDICTED)])
            names.append(f"{Path(inputs.items[i]).name}: F1 {1 - float(errors[i]):.2f}")
        columns = ["true boxes (worst first)", f"predicted (score >= {self.score_threshold:g})"]
        files.append(plot_grid(drawn, columns, directory / "worst_boxes.png", row_titles=names))
        return files

    def deploy_record(self) -> dict[str, Any]:
        """How the detections are read, and the score threshold (applied inside a deployed file: detections
        under it are padding)."""
        return {"boxes": "xyxy pixels of the input image, with scores and labels (0..C-1) per detection",
                "score_threshold": self.score_threshold}  # fmt: skip

    def record(self) -> dict[str, Any]:
        """The task name, target key, score threshold, label offset and backend."""
        return {**super().record(), "score_threshold": self.score_threshold, "label_offset": self.label_offset,
                "backend": self.backend}  # fmt: skip

    def __repr__(self) -> str:
        return f"Detect(score_threshold={self.score_threshold}, label_offset={self.label_offset})"


def _shown(value: float | None) -> str:
    return "n/a" if value is None or value < 0 else f"{value:.3f}"


def _loaded(image: Any, canvas: torch.Tensor | None) -> torch.Tensor:
    """A PIL image as a uint8 ``(3, H, W)`` tensor, resized to ``canvas`` ``(H, W)`` when given."""
    from torchvision.transforms.v2 import functional as F

    pixels = F.pil_to_tensor(image.convert("RGB"))
    if canvas is not None and tuple(pixels.shape[-2:]) != tuple(canvas.tolist()):
        pixels = F.resize(pixels, list(canvas.tolist()), antialias=True)
    return pixels


def drawn_boxes(image: torch.Tensor, boxes: torch.Tensor, captions: Sequence[str], colour: str) -> Any:
    """The uint8 ``(3, H, W)`` ``image`` with the xyxy pixel ``boxes`` drawn in ``colour`` and captioned, as an
    ``(H, W, 3)`` array (torchvision's ``draw_bounding_boxes``).

    Example:
        >>> drawn_boxes(image, torch.tensor([[10.0, 20.0, 60.0, 90.0]]), ["cat 0.93"], "orange").shape
        (120, 160, 3)
    """
    from torchvision.utils import draw_bounding_boxes

    boxes = boxes.as_subclass(torch.Tensor).float().reshape(-1, 4)
    if not len(boxes):
        return image.permute(1, 2, 0).numpy()
    out = draw_bounding_boxes(image, boxes, labels=list(captions) or None, colors=colour, width=2)
    return out.permute(1, 2, 0).numpy()
