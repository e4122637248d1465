"""Object detection data from disk: COCO JSON, YOLO ``data.yaml`` + label files, or Pascal VOC XML, told
apart from the path alone and read into one :class:`BoxData` — class names, and train and validation
:class:`~torchgraft.data.annotations.BoxSample` lists (image path, float ``(N, 4)`` ``xyxy`` pixel boxes,
int64 labels ``0..C-1``, image size).

:func:`box_data` checks every annotation before anything trains and lists each bad one by file and line —
a malformed line or entry, an unknown class, a box of zero or negative area or outside its image (by how
much), a missing image file, a duplicate COCO image id — raising a :class:`DataError` that names them, or
with ``skip_bad=True`` leaving them out and counting exactly what went with them.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torchgraft.data.annotations import Annotations, BadAnnotation, BoxSample, checked_samples
from torchgraft.data.badfiles import BadFiles
from torchgraft.data.coco import coco_files, read_coco
from torchgraft.data.detection import BoxDataset
from torchgraft.data.samples import DataError
from torchgraft.data.voc import read_voc, voc_root
from torchgraft.data.yolo import YAML_NAMES, read_yolo, yolo_config
from torchgraft.spelling import option

__all__ = ["DETECTION_FORMATS", "BoxData", "BoxSample", "DataError", "box_data", "box_format"]

DETECTION_FORMATS = ("coco", "yolo", "voc")
_SHOWN_BAD = 5  # bad annotations listed in an error; the rest counted


@dataclass
class BoxData:
    """Checked detection samples.

    Attributes:
        classes: class names, label ``i`` is ``classes[i]`` (no background entry).
        train, valid: the samples to train and to validate on.
        format: ``"coco"``, ``"yolo"`` or ``"voc"``: how the annotations were written.
        skipped: the bad annotations left out with ``skip_bad=True`` (each says what it dropped).
        warnings: what was noticed but kept (crowd regions left out, images without label files, classes
            without training boxes).
        split_off: the share split off at random for validation (``None``: the data brought its split).
        task: ``"detect"``.
    """

    classes: list[str]
    train: list[BoxSample]
    valid: list[BoxSample]
    format: str
    skipped: list[BadAnnotation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    split_off: float | None = None
    task: str = "detect"

    @property
    def n_outputs(self) -> int:
        """The object classes a detector for this data needs (its background, if any, is the model's)."""
        return len(self.classes)

    @property
    def task_reason(self) -> str:
        """Why the data is read as detection (empty: box annotations say so themselves)."""
        return ""

    @property
    def bad_rows(self) -> list[str]:
        """None: bad annotations are in :attr:`skipped`, each with its file and line."""
        return []

    @property
    def skipped_boxes(self) -> int:
        """Boxes left out: bad ones, and those of the images left out."""
        return sum(bad.boxes for bad in self.skipped)

    @property
    def skipped_images(self) -> int:
        """Images left out (a missing or unreadable file, a bad annotation file or image entry)."""
        return sum(bad.images for bad in self.skipped)

    def datasets(
        self, train_transform: Callable | None, valid_transform: Callable | None, *, bad_files: BadFiles | None = None
    ) -> tuple[BoxDataset, BoxDataset]:
        """The two datasets with their transforms (:func:`~torchgraft.data.detection.box_transforms`), recording
        files that fail to decode in one ``bad_files`` (default: a new temporary log).

        Example:
            >>> data = box_data("shapes/")
            >>> train, valid = data.datasets(box_transforms(train=True), box_transforms(train=False))
        """
        bad_files = bad_files if bad_files is not None else BadFiles()
        return (
            BoxDataset(self.train, train_transform, bad_files=bad_files),
            BoxDataset(self.valid, valid_transform, bad_files=bad_files),
        )

    def summary(self) -> str:
        """One line: format, classes, images and boxes of each split, what was skipped.

        Example:
            >>> box_data("shapes/").summary()
            'detect (yolo): 3 classes, 8 train / 2 valid images (1 without objects), 17 boxes'
        """
        samples = self.train + self.valid
        empty = sum(1 for s in samples if len(s.labels) == 0)
        without = f" ({empty} without objects)" if empty else ""
        boxes = sum(len(s.labels) for s in samples)
        line = f"detect ({self.format}): {len(self.classes)} classes, "
        line += f"{len(self.train)} train / {len(self.valid)} valid images{without}, {boxes} boxes"
        if self.skipped:
            line += (
                f"; {len(self.skipped)} bad annotations skipped ({self.skipped_boxes} boxes, "
                f"{self.skipped_images} images)"
            )
        return line


def box_format(source: str | Path) -> str:
    """Which annotation format ``source`` holds: ``"coco"`` (a ``.json`` file, or a folder with COCO JSON files
    in it or in its ``annotations/``), ``"yolo"`` (a ``data.yaml``, or a folder holding one) or ``"voc"``
    (a folder holding ``Annotations/``, or that folder).

    Raises:
        DataError: ``source`` is none of these.

    Example:
        >>> box_format("coco/annotations/instances_train.json"), box_format("VOC2012")
        ('coco', 'voc')
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder of box annotations.")
    if source.is_file():
        suffix = source.suffix.lower()
        kind = "coco" if suffix == ".json" else "yolo" if suffix in (".yaml", ".yml") else None
    elif any((source / name).is_file() for name in YAML_NAMES):
        kind = "yolo"
    elif voc_root(source) is not None:
        kind = "voc"
    elif any(source.glob("*.json")) or any((source / "annotations").glob("*.json")):
        kind = "coco"
    else:
        kind = "yolo" if yolo_config(source) is not None else None  # a folder's one other .yaml
    if kind is not None:
        return kind
    raise DataError(
        f"{source}: not a detection dataset: expected a COCO .json file (or a folder with annotations/*.json), a "
        f"YOLO data.yaml (or a folder holding one), or a Pascal VOC folder holding Annotations/."
    )


def _root(source: Path, kind: str) -> Path:
    """The folder that messages show paths relative to."""
    folder = source.parent if source.is_file() else source
    return folder.parent if kind == "coco" and folder.name.lower() == "annotations" else folder


def _annotations(source: Path, kind: str, images: Path | None) -> Annotations:
    root = _root(source, kind)
    readers: dict[str, Callable[[], Annotations]] = {
        "coco": lambda: read_coco(coco_files(source), images=images, root=root),
        "yolo": lambda: read_yolo(yolo_config(source), root=root),  # type: ignore[arg-type]
        "voc": lambda: read_voc(voc_root(source) or source),
    }
    return readers[kind]()


def _in_file_order(bad: list[BadAnnotation]) -> list[BadAnnotation]:
    """Bad annotations by file, then line (``where`` is ``file:line...``; entries without a line after)."""

    def key(entry: BadAnnotation) -> tuple[str, int]:
        found = re.match(r"(.*?):(\d+)", entry.where)
        return (found.group(1), int(found.group(2))) if found else (entry.where, 0)

    return sorted(bad, key=key)


def _check_bad(source: Path, bad: list[BadAnnotation], skip_bad: bool) -> None:
    if bad and not skip_bad:
        listed = "; ".join(str(b) for b in bad[:_SHOWN_BAD])
        more = f"; and {len(bad) - _SHOWN_BAD} more" if len(bad) > _SHOWN_BAD else ""
        skip = option("skip_bad=True", "--skip-bad")
        raise DataError(
            f"{source}: {len(bad)} bad annotations: {listed}{more}. Fix them, or leave them out ({skip}: a bad box "
            f"is dropped, an image whose file is missing is dropped with its boxes)."
        )


def _split(
    samples: list[tuple[BoxSample, str | None]], valid_pct: float, seed: int
) -> tuple[list[BoxSample], list[BoxSample], float | None]:
    """The split the data mark, else ``valid_pct`` of the images (at least one, at most all but one) picked
    at random with ``seed``."""
    if any(split is not None for _, split in samples):
        train = [s for s, split in samples if split == "train"]
        return train, [s for s, split in samples if split == "valid"], None
    if not 0 < valid_pct < 1:
        raise DataError(f"valid_pct must be between 0 and 1, got {valid_pct}.")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    cut = min(len(order) - 1, max(1, round(len(order) * valid_pct)))
    chosen = set(order[:cut])
    train = [s for i, (s, _) in enumerate(samples) if i not in chosen]
    return train, [s for i, (s, _) in enumerate(samples) if i in chosen], valid_pct


def box_data(
    source: str | Path,
    *,
    images: str | Path | None = None,
    valid_pct: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    tolerance: float = 1.0,
) -> BoxData:
    """Read and check the box annotations of ``source``, in the format :func:`box_format` recognises.

    Args:
        source: a COCO JSON file or a folder of them (train and val files: the split), a YOLO ``data.yaml``
            or its folder (``val:`` gives the split), or a Pascal VOC folder (``ImageSets/Main`` gives it).
        images: COCO only: the folder the images' ``file_name`` are relative to (default: the common layouts
            beside the JSON file, see :mod:`torchgraft.data.coco`).
        valid_pct: the share of images split off for validation when the data mark no split.
        seed: the seed of that split.
        skip_bad: leave bad annotations out (counted in ``skipped``) instead of raising.
        tolerance: how many pixels a box may reach past its image before it is bad (it is clamped onto it).

    Raises:
        DataError: bad annotations (without ``skip_bad``), a source of no known format, or no training or no
            validation images.

    Example:
        >>> data = box_data("coco/annotations/instances_train.json", valid_pct=0.2)
        >>> data.classes, data.train[0].boxes.shape
        (['bag', 'shirt', 'shoe'], torch.Size([2, 4]))
    """
    source = Path(source)
    kind = box_format(source)
    found = _annotations(source, kind, Path(images) if images is not None else None)
    samples, bad = checked_samples(found, tolerance=tolerance)
    bad = _in_file_order(bad)
    _check_bad(source, bad, skip_bad)
    train, valid, split_off = _split(samples, valid_pct, seed)
    if not train or not valid:
        raise DataError(
            f"{source}: {len(train)} training and {len(valid)} validation images; need both (mark a validation "
            f"split, or raise valid_pct)."
        )
    counts = Counter(int(label) for sample in train for label in sample.labels)
    missing = [f"class {name!r} has no training boxes" for i, name in enumerate(found.classes) if not counts[i]]
    return BoxData(found.classes, train, valid, kind, bad, found.warnings + missing, split_off)
