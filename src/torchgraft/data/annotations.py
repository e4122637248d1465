"""Box annotations as a format reader gives them, and the checks that turn them into samples.

Each reader (:mod:`~torchgraft.data.coco`, :mod:`~torchgraft.data.yolo`, :mod:`~torchgraft.data.voc`) fills
one :class:`Annotations`: image files with the size the annotation records (if it does), boxes in the
format's own coordinates, labels ``0..C-1``, and what it already found bad (a malformed line, an unknown
class). :func:`checked_samples` does the checks every format shares — a missing image file, an image header
that does not read, a box of zero or negative area, a box outside its image — and gives one
:class:`BoxSample` per image with boxes as float ``(N, 4)`` ``xyxy`` absolute pixels. Every problem is a
:class:`BadAnnotation` that names its file and line; the box maths is torchvision's.

Sizes are those of the image as displayed, EXIF orientation applied: the pixels
:func:`~torchgraft.data.decode.decode_rgb` gives, and the coordinates annotation tools (and Ultralytics'
``exif_size``) draw boxes in. Each image's header is read (no decode); a recorded size that is the stored
size of an image its orientation turns a quarter (width and height swapped) is replaced by the displayed one
with a warning, and any other recorded size that is not the image's is a bad annotation: its boxes would
land in the wrong place.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torchvision.ops import box_convert

from torchgraft.data.images import displayed_size

__all__ = [
    "BOX_FORMATS",
    "Annotations",
    "BadAnnotation",
    "BoxSample",
    "Locate",
    "chained",
    "checked_samples",
    "shown",
]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh-normalised")  # pixels, pixels (COCO), fractions of the image (YOLO)
Locate = Callable[[int], str]  # index of an image or box -> "file:line: what" (built only for bad ones)


@dataclass(frozen=True)
class BoxSample:
    """One image and its objects.

    Attributes:
        path: the image file.
        boxes: float32 ``(N, 4)`` ``x1, y1, x2, y2`` in pixels of the image (``(0, 4)``: no objects).
        labels: int64 ``(N,)`` class indices ``0..C-1`` (no background class: that is the model's convention).
        size: ``(height, width)`` of the image, as torchvision's ``canvas_size``.
    """

    path: str
    boxes: torch.Tensor
    labels: torch.Tensor
    size: tuple[int, int]


@dataclass(frozen=True)
class BadAnnotation:
    """A problem found before training: ``where`` (``file:line`` and which entry), ``reason``, and what leaving
    it out drops: ``images`` image files and ``boxes`` boxes (an image's boxes go with it)."""

    where: str
    reason: str
    images: int = 0
    boxes: int = 1

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Annotations:
    """What a reader found, one list entry per image (``paths``, ``sizes``, ``splits``) and per box
    (``box_image``, ``coords``, ``labels``).

    Attributes:
        classes: class names, in label order.
        paths: image files (not yet checked to exist).
        sizes: ``(height, width)`` where the annotation records it, else ``None``; :func:`checked_samples`
            sets each to the image's size as displayed (read from its header).
        splits: ``"train"``, ``"valid"`` or ``None`` (the data mark no split) for each image.
        box_image: the index (into ``paths``) of each box's image.
        coords: each box's four numbers in ``box_format``.
        labels: each box's class index.
        box_format: one of :data:`BOX_FORMATS`.
        locate_image, locate_box: where image ``i`` / box ``i`` is written (for messages).
        locate_size: where image ``i``'s recorded size is written (``None``: where the image is).
        bad: what the reader left out already.
        warnings: what the reader noticed but kept.
    """

    classes: list[str]
    box_format: str
    locate_image: Locate
    locate_box: Locate
    locate_size: Locate | None = None
    paths: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int] | None] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)
    box_image: list[int] = field(default_factory=list)
    coords: list[Sequence[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    bad: list[BadAnnotation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def shown(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies under it (shorter messages), else as given.

    Example:
        >>> shown("data/labels/a.txt", Path("data"))
        'labels/a.txt'
    """
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def chained(parts: Sequence[tuple[int, Locate]]) -> Locate:
    """One :data:`Locate` over several readers' entries concatenated: ``parts`` are ``(first index, locate)``
    in increasing order (the files of a COCO split, each with its own lines).

    Example:
        >>> locate = chained([(0, lambda i: f"train.json #{i}"), (5, lambda i: f"val.json #{i}")])
        >>> locate(6)
        'val.json #1'
    """

    def locate(index: int) -> str:
        start, inner = next((s, f) for s, f in reversed(parts) if s <= index)
        return inner(index - start)

    return locate


_HEADER_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_SHOWN_TURNED = 3  # images named in the warning about sizes recorded before the EXIF turn


def _header_sizes(path: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(height, width)`` of the image at ``path`` as stored and as displayed (EXIF orientation applied)."""
    with Image.open(path) as image:  # the header only: no decode
        (width, height), (displayed_width, displayed_height) = image.size, displayed_size(image)
    return (height, width), (displayed_height, displayed_width)


def _size_problem(
    path: str, recorded: tuple[int, int], stored: tuple[int, int], displayed: tuple[int, int]
) -> str | None:
    """Why the ``(height, width)`` recorded for an image is wrong, or ``None`` where it is the displayed size
    (or the stored one of an image its EXIF orientation turns: the caller warns)."""
    if recorded in (displayed, stored):
        return None
    (height, width), (displayed_height, displayed_width) = recorded, displayed
    turned = (
        f" as displayed (stored {stored[1]}x{stored[0]}, turned by its EXIF orientation)" if stored != displayed else ""
    )
    return (
        f"records width {width} and height {height}, but {path} is {displayed_width}x{displayed_height}{turned}: "
        f"its boxes would land in the wrong place; give the image's width and height"
    )


def _image_problem(found: Annotations, index: int) -> tuple[str, Locate] | None:
    """Why image ``index`` is left out and where that is written, or ``None`` (its size then set to the
    displayed one)."""
    path = found.paths[index]
    if not os.path.isfile(path):
        return f"no image file {path}", found.locate_image
    try:
        stored, displayed = _header_sizes(path)
    except _HEADER_ERRORS as error:
        return f"{path} is not a readable image ({type(error).__name__}: {error})", found.locate_image
    recorded, found.sizes[index] = found.sizes[index], displayed
    reason = _size_problem(path, recorded, stored, displayed) if recorded is not None else None
    return (reason, found.locate_size or found.locate_image) if reason is not None else None


def _image_problems(found: Annotations, boxes_of: Counter[int]) -> tuple[list[BadAnnotation], set[int]]:
    """Images whose file is missing, whose header does not read, or whose recorded size is not the image's;
    every kept image's size set to its displayed one (one recorded before an EXIF turn: a warning)."""
    bad, dropped, recorded = [], set(), list(found.sizes)
    for index in range(len(found.paths)):
        problem = _image_problem(found, index)
        if problem is not None:
            reason, where = problem
            bad.append(BadAnnotation(where(index), reason, images=1, boxes=boxes_of[index]))
            dropped.add(index)
    turned = [i for i, size in enumerate(recorded) if size is not None and i not in dropped and size != found.sizes[i]]
    if turned:
        found.warnings.append(_turned_warning(found, turned))
    return bad, dropped


def _turned_warning(found: Annotations, turned: list[int]) -> str:
    locate = found.locate_size or found.locate_image
    named = "; ".join(locate(index) for index in turned[:_SHOWN_TURNED])
    more = f"; and {len(turned) - _SHOWN_TURNED} more" if len(turned) > _SHOWN_TURNED else ""
    return (
        f"{len(turned)} images record their width and height as stored, before their EXIF orientation turns them "
        f"a quarter ({named}{more}): the displayed size is used, and their boxes are read as drawn on the image "
        f"as displayed (as annotation tools draw them)"
    )


def _to_xyxy(coords: torch.Tensor, sizes: torch.Tensor, box_format: str) -> torch.Tensor:
    """``(N, 4)`` boxes in ``box_format`` as ``xyxy`` pixels; ``sizes`` ``(N, 2)`` holds each box's image
    ``(height, width)``."""
    if box_format == "xyxy":
        return coords
    if box_format == "xywh":
        return box_convert(coords, "xywh", "xyxy")
    if box_format == "cxcywh-normalised":
        return box_convert(coords, "cxcywh", "xyxy") * sizes[:, [1, 0, 1, 0]]
    raise ValueError(f"annotations: unknown box format {box_format!r}; expected one of {BOX_FORMATS}.")


def _bad_rows(boxes: torch.Tensor, sizes: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Which ``xyxy`` pixel boxes cannot be trained on (not finite, no area, outside beyond ``tolerance``, or
    nothing left once clamped onto the image), for all boxes at once; :func:`_box_problem` says why."""
    finite = torch.isfinite(boxes).all(1)
    flat = (box_convert(boxes, "xyxy", "xywh")[:, 2:] <= 0).any(1)
    beyond = _beyond(boxes, sizes).amax(1)
    outside = (box_convert(_clamped(boxes, sizes), "xyxy", "xywh")[:, 2:] <= 0).any(1)
    return ~finite | flat | (beyond > tolerance) | outside


def _beyond(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """``(N, 4)``: how far each box reaches past the image's left, top, right and bottom edges (pixels)."""
    return torch.stack([-boxes[:, 0], -boxes[:, 1], boxes[:, 2] - sizes[:, 1], boxes[:, 3] - sizes[:, 0]], dim=1)


def _box_problem(box: torch.Tensor, size: torch.Tensor, tolerance: float) -> str:
    """Why one ``xyxy`` pixel box flagged by :func:`_bad_rows` cannot be trained on."""
    x1, y1, x2, y2 = box.tolist()
    height, width = int(size[0]), int(size[1])
    described = f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
    if not torch.isfinite(box).all():
        return f"{described} has a coordinate that is not a finite number"
    _, _, box_width, box_height = box_convert(box[None], "xyxy", "xywh")[0].tolist()
    if box_width <= 0 or box_height <= 0:
        return f"zero or negative area: {described} is {box_width:g} wide and {box_height:g} high"
    beyond = dict(zip(("left", "top", "right", "bottom"), _beyond(box[None], size[None])[0].tolist(), strict=True))
    side, distance = max(beyond.items(), key=lambda item: item[1])
    if distance > tolerance:
        where = f"{distance:g} px beyond its {side} edge (tolerance {tolerance:g} px)"
        return f"{described} is outside the {width}x{height} image: {where}"
    return f"{described} lies past the edge of the {width}x{height} image: nothing of it is inside"


def _clamped(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Boxes moved onto their image (what ``v2.ClampBoundingBoxes`` does to one image, here all at once)."""
    return torch.minimum(boxes.clamp(min=0), sizes[:, [1, 0, 1, 0]])


def checked_samples(
    found: Annotations, *, tolerance: float
) -> tuple[list[tuple[BoxSample, str | None]], list[BadAnnotation]]:
    """The samples of ``found`` (each with its split) and every problem, the reader's first: images whose file
    is missing or unreadable are left out with their boxes; boxes of zero or negative area, or outside their
    image by more than ``tolerance`` pixels, are left out alone; boxes within it are clamped onto the image.

    Example:
        >>> samples, bad = checked_samples(read_yolo(Path("data.yaml")), tolerance=1.0)
        >>> samples[0][0].boxes.shape, [str(b) for b in bad][:1]
        (torch.Size([2, 4]), ['labels/train/a.txt:3: class id 7, but data.yaml names 3 classes (0..2)'])
    """
    boxes_of = Counter(found.box_image)
    bad, dropped = _image_problems(found, boxes_of)
    kept = torch.tensor([i for i, image in enumerate(found.box_image) if image not in dropped], dtype=torch.long)
    coords = torch.tensor([list(found.coords[i]) for i in kept.tolist()], dtype=torch.float64).reshape(-1, 4)
    image_of = torch.tensor(found.box_image, dtype=torch.long)[kept] if len(kept) else kept
    sizes = torch.tensor([found.sizes[i] for i in image_of.tolist()], dtype=torch.float64).reshape(-1, 2)
    boxes = _to_xyxy(coords, sizes, found.box_format)
    flagged = _bad_rows(boxes, sizes, tolerance)
    for row in flagged.nonzero().flatten().tolist():
        reason = _box_problem(boxes[row], sizes[row], tolerance)
        bad.append(BadAnnotation(found.locate_box(int(kept[row])), reason))
    good = ~flagged
    labels = torch.tensor(found.labels, dtype=torch.int64)[kept[good]] if len(kept) else kept
    boxes = _clamped(boxes[good], sizes[good]).float()
    return _grouped(found, dropped, boxes, labels, image_of[good]), found.bad + bad


def _grouped(
    found: Annotations, dropped: set[int], boxes: torch.Tensor, labels: torch.Tensor, image_of: torch.Tensor
) -> list[tuple[BoxSample, str | None]]:
    """One sample per kept image (in the reader's order), holding its boxes in their order."""
    order = torch.argsort(image_of, stable=True)
    counts = torch.bincount(image_of, minlength=len(found.paths)).tolist()
    per_box = torch.split(boxes[order], counts)
    per_label = torch.split(labels[order], counts)
    samples = []
    for index, path in enumerate(found.paths):
        if index not in dropped:
            size = found.sizes[index]
            assert size is not None  # filled in by _image_problems
            sample = BoxSample(path, per_box[index].reshape(-1, 4), per_label[index], (int(size[0]), int(size[1])))
            samples.append((sample, found.splits[index]))
    return samples
