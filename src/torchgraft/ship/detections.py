"""Predict boxes with an exported detector: each image whole, as the detector resizes and normalises it
itself, its detections at or above a score threshold in the image's own pixels, and a copy of the image with
them drawn (:func:`draw_predictions`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchgraft.data.decode import decode_rgb
from torchgraft.ship.export import Exported
from torchgraft.ship.inputs import Inputs, expand_images
from torchgraft.tasks.detect import Detect, drawn_boxes

__all__ = ["BoxPrediction", "draw_predictions", "predict_boxes"]

OnBatch = Callable[[int, int], None]  # (inputs done, inputs in all), after each batch
_COLOUR = "#ef4444"


@dataclass
class BoxPrediction:
    """What a detector says about one image.

    Attributes:
        path: the image file.
        size: ``(height, width)`` of the image.
        boxes: its detections at or above the threshold, best first: ``{"label", "score", "box"}`` with
            ``box`` ``[x1, y1, x2, y2]`` in the image's pixels.
        threshold: the score threshold they passed.
    """

    path: str
    size: tuple[int, int]
    boxes: list[dict[str, Any]]
    threshold: float

    def as_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return {"path": self.path, "size": list(self.size), "score_threshold": self.threshold, "boxes": self.boxes}

    def line(self, shown_at_most: int = 5) -> str:
        """``"2 boxes: cat 0.93 [12,30,220,198]  cup 0.71 [...]"`` (the best ``shown_at_most``, then how many
        more), or ``"no box scores >= 0.5"``."""
        if not self.boxes:
            return f"no box scores >= {self.threshold:g}"
        best = self.boxes[:shown_at_most]
        shown = "  ".join(f"{b['label']} {b['score']:.2f} [{','.join(f'{v:.0f}' for v in b['box'])}]" for b in best)
        more = f"  (+{len(self.boxes) - shown_at_most} more)" if len(self.boxes) > shown_at_most else ""
        return f"{len(self.boxes)} box{'es' if len(self.boxes) != 1 else ''}: {shown}{more}"


def _task(exported: Exported, score_threshold: float | None) -> Detect:
    task = exported.task
    if not isinstance(task, Detect):
        raise TypeError(
            f"predict_boxes: this model's task is {task.name}, not detect; use predict_images (or predict_masks)."
        )
    if score_threshold is None:
        return task
    return Detect(score_threshold=score_threshold, label_offset=task.label_offset, backend=task.backend)


@torch.no_grad()
def predict_boxes(
    exported: Exported,
    inputs: Inputs,
    *,
    score_threshold: float | None = None,
    batch_size: int = 4,
    x_col: str | None = None,
    on_batch: OnBatch | None = None,
) -> list[BoxPrediction]:
    """Run a detector (from :func:`torchgraft.load_exported`) on images (``inputs``: files, folders, CSVs of
    paths, a list, as :func:`~torchgraft.ship.predict.predict_images` takes them). Each image goes in whole,
    as validation fed it (floats in ``[0, 1]``; the detector resizes and normalises it itself and maps its
    boxes back), and the detections scoring at least ``score_threshold`` (default: the run's, recorded in
    ``model.json``) come back in the image's pixels, best first. ``on_batch(done, total)`` is called after each
    batch.

    Raises:
        TypeError: the model is no detector.
        BadImage: a file cannot be decoded (its path is named).

    Example:
        >>> prediction = predict_boxes(load_exported("runs/scenes"), "street.jpg", score_threshold=0.3)[0]
        >>> prediction.boxes[0]
        {'label': 'car', 'score': 0.91, 'box': [12.0, 40.5, 230.0, 198.25]}
    """
    task = _task(exported, score_threshold)
    if not 0 <= task.score_threshold <= 1:
        raise ValueError(f"predict_boxes: score_threshold must lie in [0, 1], got {task.score_threshold}.")
    paths = expand_images(inputs, x_col=x_col)
    device = next(exported.model.parameters()).device
    exported.model.eval()
    results: list[BoxPrediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = [str(p) for p in paths[start : start + batch_size]]
        images = [decode_rgb(path).to(device, torch.float32) / 255 for path in chunk]
        found = task.forward(exported.model, images, None, training=False)
        for path, image, detections in zip(chunk, images, found, strict=True):
            rows = task.detections(task.decode([{k: v.cpu() for k, v in detections.items()}]), exported.classes)
            boxes = [{k: row[k] for k in ("label", "score", "box")} for row in rows]
            results.append(BoxPrediction(path, (image.shape[-2], image.shape[-1]), boxes, task.score_threshold))
        if on_batch is not None:
            on_batch(len(results), len(paths))
    return results


def draw_predictions(predictions: list[BoxPrediction], out: str | Path | None = None) -> list[Path]:
    """Write ``NAME.boxes.png`` for each prediction (into ``out``, else beside the image): the image with its
    boxes drawn and captioned with their class and score."""
    from PIL import Image

    written = []
    for prediction in predictions:
        image = Path(prediction.path)
        folder = Path(out) if out is not None else image.parent
        folder.mkdir(parents=True, exist_ok=True)
        boxes = torch.tensor([b["box"] for b in prediction.boxes], dtype=torch.float32).reshape(-1, 4)
        captions = [f"{b['label']} {b['score']:.2f}" for b in prediction.boxes]
        pixels = drawn_boxes(decode_rgb(image), boxes, captions, _COLOUR)
        path = folder / f"{image.stem}.boxes.png"
        Image.fromarray(pixels).save(path)
        written.append(path)
    return written
