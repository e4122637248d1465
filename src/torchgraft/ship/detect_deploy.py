"""Detection as one ONNX file: uint8 images of any batch and size in, padded boxes, scores and labels out.

:class:`DetectionDeployable` calls the torchvision detector as :class:`~torchgraft.tasks.Detect` does (pixels
scaled to ``[0, 1]``; the detector's own transform normalises and resizes, its post-processing runs NMS and maps
the boxes back to the input's pixels) and lays the detections out with a fixed size per image, so that a batch
is one tensor: ``boxes (N, K, 4)``, ``scores (N, K)``, ``labels (N, K)`` with ``K`` the detector's
``detections_per_img``, best first, the run's ``score_threshold`` applied and the rest padding (score 0,
label -1, box 0).

:func:`export_detection` exports it for one image with ``torch.export`` (strict: the dynamo tracer keeps the
transform's resize symbolic in height and width, where the non-strict tracer fixes it to the example's size)
and the dynamo ONNX exporter, then makes the batch axis dynamic with an ONNX ``Loop``
(:func:`~torchgraft.ship.onnx_batch.loop_over_batch`): torchvision's detectors loop over a Python list of
images, which ``torch.export`` cannot give a dynamic length. The file is checked against the model on single
images and on a batch of four (:func:`compare_detections`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchgraft.ship.program import DeployError, _quietly

__all__ = ["DetectionDeployable", "compare_detections", "detections_per_image", "export_detection", "traceable_nms"]

OUTPUTS = ("boxes", "scores", "labels")
_TIE = 1e-6  # scores this close are a tie: the model itself may keep either box


def detections_per_image(detector: nn.Module) -> int:
    """The most detections ``detector`` returns per image (torchvision's ``detections_per_img``: on the model for
    FCOS and RetinaNet, on ``roi_heads`` for the R-CNNs)."""
    for owner in (detector, getattr(detector, "roi_heads", None)):
        count = getattr(owner, "detections_per_img", None)
        if isinstance(count, int):
            return count
    raise DeployError(
        f"deploy: {type(detector).__name__} records no detections_per_img, so the file's outputs have no fixed "
        f"size; deploy a torchvision detector (graft_detector, regraft_detection)."
    )


class DetectionDeployable(nn.Module):
    """``forward(image)``: uint8 RGB ``(N, H, W, 3)`` -> ``boxes (N, K, 4)`` xyxy pixels of the input,
    ``scores (N, K)``, ``labels (N, K)`` int64 in ``0..C-1`` (see the module docstring for the padding).

    Example:
        >>> boxes, scores, labels = DetectionDeployable(detector, label_offset=0, score_threshold=0.5)(images)
        >>> boxes[0][labels[0] >= 0]     # the first image's detections
    """

    input_names = ("image",)
    output_names = OUTPUTS
    output_name = "boxes"

    def __init__(self, detector: nn.Module, *, label_offset: int, score_threshold: float) -> None:
        super().__init__()
        self.model = detector
        self.label_offset, self.score_threshold = int(label_offset), float(score_threshold)
        self.detections = detections_per_image(detector)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The padded detections of each image of ``image`` (see the class docstring)."""
        images = list(image.permute(0, 3, 1, 2).to(torch.float32).div(255).unbind(0))
        rows = [self._padded(found) for found in self.model(images)]
        boxes, scores, labels = (torch.stack(parts) for parts in zip(*rows, strict=True))
        return boxes, scores, labels

    def _padded(self, found: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image's detections, those under the threshold and the missing rows as padding, ``K`` rows."""
        scores = found["scores"].to(torch.float32)
        keep = scores >= self.score_threshold
        missing = self.detections - scores.shape[0]
        boxes = torch.where(keep[:, None], found["boxes"].to(torch.float32), 0.0)
        labels = torch.where(keep, found["labels"].to(torch.int64) - self.label_offset, -1)
        return (
            nn.functional.pad(boxes, (0, 0, 0, missing)),
            nn.functional.pad(torch.where(keep, scores, 0.0), (0, missing)),
            nn.functional.pad(labels, (0, missing), value=-1),
        )

    def record(self) -> dict[str, Any]:
        """What the outputs are, for ``preprocessing.json`` (readable without torchgraft)."""
        k = self.detections
        return {
            "outputs": {
                "boxes": f"(N, {k}, 4) float32 x1, y1, x2, y2 in pixels of the input image",
                "scores": f"(N, {k}) float32",
                "labels": f"(N, {k}) int64 class index 0..C-1 into 'classes'; -1 marks padding",
            },
            "detections": (
                f"per image at most {k} (the detector's detections_per_img), best first; the valid ones are "
                f"those with labels >= 0 (scores >= score_threshold, applied in the graph), then padding "
                f"(score 0, label -1, box 0): boxes[i][labels[i] >= 0]"
            ),
            "score_threshold_applied": True,
        }


def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou: float) -> torch.Tensor:
    """torchvision's ``batched_nms`` by its coordinate trick, without the Python branches on the box count that
    ``torch.export`` cannot trace (the same kept boxes: each class's boxes are moved apart, then one NMS)."""
    from torchvision.ops import nms

    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()  # 0 when there is no box
    offsets = idxs.to(boxes) * (top + 1)
    return nms(boxes + offsets[:, None], scores, iou)


@contextlib.contextmanager
def traceable_nms() -> Iterator[None]:
    """While exporting: torchvision's detectors call :func:`_batched_nms` (they look ``batched_nms`` up on
    ``torchvision.ops.boxes`` at each call); restored afterwards."""
    from torchvision.ops import boxes

    original = boxes.batched_nms
    boxes.batched_nms = _batched_nms
    try:
        yield
    finally:
        boxes.batched_nms = original


def _export_one_image(module: DetectionDeployable, example: torch.Tensor) -> Any:
    """The ONNX model of ``module`` for one image ``(1, H, W, 3)``, height and width dynamic: ``torch.export``
    (strict) and the dynamo exporter, else (the R-CNNs' region pooling and proposal top-k stop the dynamo
    tracer) the TorchScript tracer, whose paths through torchvision's detectors torchvision keeps exportable
    (``torchvision._is_tracing()``: sizes kept as tensors)."""
    if hasattr(module.model, "rpn"):  # an R-CNN: its proposal top-k and region pooling stop the dynamo tracer
        return _traced_one_image(module, example)
    height, width = torch.export.Dim("height", min=16, max=8192), torch.export.Dim("width", min=16, max=8192)
    shapes = ({1: height, 2: width},)
    try:
        with traceable_nms():
            program = _quietly(lambda: torch.export.export(module, (example,), dynamic_shapes=shapes, strict=True))
    except Exception:  # any tracer failure: the TorchScript exporter is the fallback
        return _traced_one_image(module, example)
    onnx_program = _quietly(
        lambda: torch.onnx.export(program, (example,), input_names=["image"], output_names=list(OUTPUTS), dynamo=True)
    )
    return onnx_program.model_proto


def _traced_one_image(module: DetectionDeployable, example: torch.Tensor) -> Any:
    """``module`` for one image through the TorchScript exporter (opset 17), height and width dynamic."""
    import io

    import onnx

    buffer = io.BytesIO()
    axes = {"image": {1: "height", 2: "width"}}
    _quietly(
        lambda: torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=["image"],
            output_names=list(OUTPUTS),
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    )
    return onnx.load_from_string(buffer.getvalue())


def compare_detections(
    got: Sequence[np.ndarray], expected: Sequence[np.ndarray], *, tolerance: float, threshold: float, side: float
) -> float:
    """The largest difference between two padded detection outputs (``boxes``, ``scores``, ``labels``), scores
    absolute and boxes relative to ``side``, the image's longer side in pixels (in a 512 px image a box corner may
    move ``tolerance`` x 512 px).

    Each expected detection is matched to the unmatched one of the same label with the closest box (NMS may
    order near-equal scores either way); a detection without a match is accepted only when its score lies
    within ``tolerance`` of ``threshold`` (it may fall on either side), or, in an image whose detections fill
    every row (the detector cut its list), when an unmatched detection of its label has its score to 1e-6 (a
    tie at the cut: the top-k may keep either of two boxes of one score, as an untrained head's anchors have).

    Raises:
        DeployError: a detection has no match, or a matched pair differs by more than ``tolerance``.
    """
    worst = 0.0
    for image, (got_boxes, got_scores, got_labels, boxes, scores, labels) in enumerate(
        zip(*got, *expected, strict=True)
    ):
        free = list(np.flatnonzero(got_labels >= 0))
        full = bool((labels >= 0).all())  # every row used: the detector cut its list at detections_per_img
        for j in np.flatnonzero(labels >= 0):
            same = [i for i in free if got_labels[i] == labels[j]]
            gaps = [float(np.abs(got_boxes[i] - boxes[j]).max()) / side for i in same]
            if not gaps or min(gaps) > tolerance or abs(got_scores[same[int(np.argmin(gaps))]] - scores[j]) > tolerance:
                if abs(scores[j] - threshold) <= tolerance:
                    continue
                tied = [i for i in same if abs(float(got_scores[i]) - float(scores[j])) <= _TIE] if full else []
                if tied:  # a cut list, boxes of one score: which of them the top-k keeps is a tie
                    free.remove(tied[0])
                    continue
                raise DeployError(
                    f"export: image {image}'s detection {j} (label {labels[j]}, score {scores[j]:.4f}, box "
                    f"{np.round(boxes[j], 2).tolist()}) has no detection within {tolerance:g} in the file's outputs."
                )
            match = same[int(np.argmin(gaps))]
            free.remove(match)
            worst = max(worst, min(gaps), float(abs(got_scores[match] - scores[j])))
        extra = [i for i in free if abs(got_scores[i] - threshold) > tolerance]
        if extra:
            raise DeployError(
                f"export: image {image}: the file finds {len(extra)} detection(s) the model does not (first: score "
                f"{got_scores[extra[0]]:.4f}, box {np.round(got_boxes[extra[0]], 2).tolist()})."
            )
    return worst


def _batch_check(images: Sequence[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor]:
    """A batch of four from the first check image: itself and its mirror images (one size, four contents)."""
    first = images[0][0][:1]
    return (torch.cat([first, first.flip(2), first.flip(1), first.flip(1, 2)]).contiguous(),)


def export_detection(
    module: DetectionDeployable,
    checks: Sequence[tuple[torch.Tensor, ...]],
    path: str | Path,
    *,
    format: str = "onnx",
    tolerance: float = 1e-4,
    reference: nn.Module | None = None,
    on_check: Callable[[int, int], None] | None = None,
) -> float:
    """Write ``module`` as an ONNX file taking any batch and image size and check it with ONNX Runtime on
    ``checks`` (one image each) and on a batch of four; returns :func:`compare_detections`' largest difference.

    Raises:
        DeployError: ``format`` is not ``"onnx"``, the exporter failed, or the file's detections differ.
    """
    import onnx
    import onnxruntime

    from torchgraft.ship.onnx_batch import loop_over_batch

    if format != "onnx":
        raise DeployError(
            f"deploy: format {format!r} is not available for detection: torchvision's detectors loop over a Python "
            f"list of images, which a torch.export program cannot take with a dynamic batch; use format='onnx' "
            f"(the batch axis is an ONNX Loop)."
        )
    path = Path(path)
    try:
        onnx.save(loop_over_batch(_export_one_image(module, checks[0][0][:1].contiguous())), str(path))
    except Exception as error:
        path.unlink(missing_ok=True)
        raise DeployError(
            f"onnx export of the detector failed: {str(error).strip().splitlines()[-1][:400]}. Ship "
            f"model.safetensors + model.json instead (runs with torchgraft)."
        ) from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    calls, worst = [*checks, _batch_check(checks)], 0.0
    for done, (image,) in enumerate(calls, 1):
        with torch.no_grad():
            expected = [x.numpy() for x in (reference or module)(image)]
        try:
            got = session.run(None, {"image": image.numpy()})
            side = float(max(image.shape[1], image.shape[2]))
            difference = compare_detections(
                got, expected, tolerance=tolerance, threshold=module.score_threshold, side=side
            )
            worst = max(worst, difference)
        except DeployError as error:
            path.unlink(missing_ok=True)
            raise DeployError(f"{error} (on a batch of {len(image)}; the file was removed)") from None
        if on_check is not None:
            on_check(done, len(calls))
    return worst
