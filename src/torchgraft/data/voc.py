"""Pascal VOC detection annotations: ``ROOT/Annotations/*.xml`` (one file per image: ``<filename>``,
``<size>``, an ``<object>`` with ``<name>`` and ``<bndbox>`` per object), images in ``ROOT/JPEGImages/``,
and the split in ``ROOT/ImageSets/Main/train.txt`` + ``val.txt`` when they exist.

Classes are the ``<name>`` values found, in sorted order. VOC coordinates are 1-based pixel indices, both
ends inclusive (a box over a whole 500 px wide image is ``xmin=1, xmax=500``), so the pixel box is
``[xmin - 1, ymin - 1, xmax, ymax]``; a 0-based file's ``xmin=0`` then lies 1 px left of the image, within
the check's tolerance, and is clamped. Annotation files are untrusted: one holding a DOCTYPE or ENTITY
declaration is refused unread (entities can expand without bound, or name other files). Each bad
``<object>`` is named by file and line, and so is a ``<size>`` that is not the image's (checked against its
header, EXIF orientation applied: see :mod:`~torchgraft.data.annotations`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from torchgraft.data.annotations import Annotations, BadAnnotation, shown

__all__ = ["read_voc", "voc_root"]

_DECLARATIONS = tuple(
    word.encode(codec) for word in ("<!DOCTYPE", "<!ENTITY") for codec in ("utf-8", "utf-16-le", "utf-16-be")
)
_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def voc_root(source: Path) -> Path | None:
    """The VOC folder of ``source`` (the one holding ``Annotations/``): ``source``, or its parent when
    ``source`` is the ``Annotations`` folder; ``None`` if neither.

    Example:
        >>> voc_root(Path("VOC2012/Annotations"))
        PosixPath('VOC2012')
    """
    if (source / "Annotations").is_dir():
        return source
    if source.name == "Annotations" and source.is_dir():
        return source.parent
    return None


@dataclass
class _File:
    """One parsed annotation file: its image's name and size (and where ``<size>`` is written), its objects
    ``(name, xyxy, where)``."""

    filename: str
    size: tuple[int, int] | None
    size_where: str
    objects: list[tuple[str, list[float], str]] = field(default_factory=list)
    bad: list[BadAnnotation] = field(default_factory=list)


def _parse(path: Path) -> tuple[ET.Element, dict[ET.Element, int]] | tuple[None, str]:
    """The root element of ``path`` and the line of each ``<object>`` and ``<size>`` (read with ElementTree,
    fed line by line so that each start tag's line is known), or ``(None, why it cannot be read)``."""
    data = path.read_bytes()
    if any(declaration in data for declaration in _DECLARATIONS):
        return None, (
            "holds a DOCTYPE or ENTITY declaration: refused (annotation files are untrusted, and entities can "
            "expand without bound or name other files); remove the declaration"
        )
    parser, root, lines = ET.XMLPullParser(events=("start",)), None, {}
    try:
        for number, chunk in enumerate(data.splitlines(keepends=True), 1):
            parser.feed(chunk)
            for _, element in parser.read_events():
                root = element if root is None else root
                if element.tag in ("object", "size"):
                    lines[element] = number
        parser.close()
    except ET.ParseError as error:
        return None, f"line {error.position[0]}: not valid XML ({error})"
    if root is None or root.tag != "annotation":
        return None, f"not a VOC annotation: the root element is <{getattr(root, 'tag', '')}>, not <annotation>"
    return root, lines


def _number(element: ET.Element | None, tag: str) -> float | None:
    text = element.findtext(tag) if element is not None else None
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _size(root: ET.Element) -> tuple[int, int] | None:
    """``(height, width)`` from ``<size>``, or ``None`` where it is missing or zero."""
    width, height = _number(root.find("size"), "width"), _number(root.find("size"), "height")
    return (int(height), int(width)) if width and height and width > 0 and height > 0 else None


def _read_file(path: Path, shown_path: str) -> _File | BadAnnotation:
    root, lines = _parse(path)
    if root is None:
        return BadAnnotation(shown_path, str(lines), images=1, boxes=0)
    assert isinstance(lines, dict)
    filename = (root.findtext("filename") or "").strip() or f"{path.stem}.jpg"
    size = root.find("size")
    size_where = f"{shown_path}:{lines.get(size, '?')}: <size>" if size is not None else shown_path
    found = _File(filename, _size(root), size_where)
    for index, element in enumerate(root.findall("object")):
        where = f"{shown_path}:{lines.get(element, '?')}: <object> {index}"
        name = (element.findtext("name") or "").strip()
        corners = [_number(element.find("bndbox"), tag) for tag in _CORNERS]
        if not name:
            found.bad.append(BadAnnotation(where, "malformed <object>: no <name>"))
        elif any(value is None for value in corners):
            found.bad.append(BadAnnotation(where, "malformed <object>: <bndbox> needs numeric xmin, ymin, xmax, ymax"))
        else:
            xmin, ymin, xmax, ymax = corners  # 1-based inclusive pixel indices
            found.objects.append((name, [xmin - 1, ymin - 1, xmax, ymax], where))  # type: ignore[operator]
    return found


def _listed(root: Path) -> tuple[list[tuple[Path, str | None]], list[BadAnnotation]]:
    """The annotation files to read, with their split: those ``ImageSets/Main/{train,val}.txt`` name (a name
    without a file is bad), else every ``Annotations/*.xml``."""
    sets = root / "ImageSets" / "Main"
    if not ((sets / "train.txt").is_file() and (sets / "val.txt").is_file()):
        return [(path, None) for path in sorted((root / "Annotations").glob("*.xml"))], []
    files, bad = [], []
    for name, split in (("train.txt", "train"), ("val.txt", "valid")):
        for number, line in enumerate((sets / name).read_text(encoding="utf-8").splitlines(), 1):
            stem = line.split()[0] if line.split() else ""
            path = root / "Annotations" / f"{stem}.xml"
            if not stem:
                continue
            if path.is_file():
                files.append((path, split))
            else:
                where = f"{shown(sets / name, root)}:{number}"
                bad.append(BadAnnotation(where, f"no annotation file {shown(path, root)}", images=1, boxes=0))
    return files, bad


def read_voc(root: Path) -> Annotations:
    """The boxes of the VOC dataset in ``root`` (see the module docstring).

    Example:
        >>> found = read_voc(Path("VOC2012"))
        >>> found.classes[:3], found.box_format
        (['aeroplane', 'bicycle', 'bird'], 'xyxy')
    """
    listed, bad = _listed(root)
    read = [(path, split, _read_file(path, shown(path, root))) for path, split in listed]
    classes = sorted({name for _, _, file in read if isinstance(file, _File) for name, _, _ in file.objects})
    label, image_wheres, box_wheres, size_wheres = {name: i for i, name in enumerate(classes)}, [], [], []
    found = Annotations(
        classes,
        "xyxy",
        locate_image=image_wheres.__getitem__,
        locate_box=box_wheres.__getitem__,
        locate_size=size_wheres.__getitem__,
    )
    found.bad += bad
    for path, split, file in read:
        if isinstance(file, BadAnnotation):
            found.bad.append(file)
            continue
        found.bad += file.bad
        for name, coords, where in file.objects:
            found.box_image.append(len(found.paths))
            found.coords.append(coords)
            found.labels.append(label[name])
            box_wheres.append(where)
        image_wheres.append(shown(path, root))
        size_wheres.append(file.size_where)
        found.paths.append(str(root / "JPEGImages" / file.filename))
        found.sizes.append(file.size)
        found.splits.append(split)
    return found
