"""COCO detection annotations: an ``instances_*.json`` file (``images``, ``annotations``, ``categories``;
``bbox`` is ``[x, y, width, height]`` in pixels), or a folder holding a train and a val file.

Image files are looked for, relative to each image's ``file_name``, in a given folder or the common layouts
beside ``root/annotations/instances_<split>.json``: ``root/<split>/``, ``root/images/<split>/``,
``root/images/``, ``root/``. Categories become labels ``0..C-1`` in the order of their ids. Crowd regions
(``iscrowd: 1``) are left out, as torchvision's COCO detection recipe does. An image's ``width`` and
``height`` are checked against its file's header, EXIF orientation applied (see
:mod:`~torchgraft.data.annotations`).

Every bad entry is named by its file, line, id and index (``annotations.json:41: annotation id 12
(annotations[3])``). The file is read by ``json.loads``; only when an entry is bad is it scanned again, entry
by entry with :meth:`json.JSONDecoder.raw_decode`, for each entry's offset (one Python step per entry, about
as long again as the read). The official COCO files are one line, so there the id and index find an entry.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchgraft.data.annotations import Annotations, BadAnnotation, chained, shown
from torchgraft.data.samples import DataError

__all__ = ["coco_files", "looks_like_coco", "read_coco"]

_SPACE = re.compile(r"[ \t\n\r]*")
_LISTS = ("images", "annotations")  # the lists whose entries' offsets are kept
_KEYS = ("images", "annotations", "categories")
_IDS, _NUMBERS = (int, str), (int, float)  # exact types: JSON gives no subclasses, and True is not an id
_VALID_WORDS = ("val", "valid", "validation")


@dataclass
class _Lines:
    """The line of each entry of ``text``'s ``images`` and ``annotations`` lists. The file is scanned for
    them on the first question only (a file without bad entries is read by ``json.loads`` alone)."""

    text: str
    _offsets: dict[str, list[int]] = field(default_factory=dict, init=False)
    _newlines: list[int] = field(default_factory=list, init=False)

    def at(self, key: str, index: int) -> int:
        """The 1-based line of ``key[index]`` (``key``: ``"images"`` or ``"annotations"``)."""
        if not self._offsets:
            self._offsets = _parsed(self.text)[1]
            self._newlines = [m.start() for m in re.finditer("\n", self.text)]
        return bisect.bisect_left(self._newlines, self._offsets[key][index]) + 1


def _skip(text: str, position: int) -> int:
    return _SPACE.match(text, position).end()  # type: ignore[union-attr]


def _expect(text: str, position: int, allowed: str, what: str) -> str:
    found = text[position : position + 1]
    if not found or found not in allowed:
        raise json.JSONDecodeError(f"Expecting {what}", text, position)
    return found


def _array(text: str, position: int, decoder: json.JSONDecoder) -> tuple[list[Any], list[int], int]:
    """The JSON array starting at ``position`` (a ``[``), each element's offset, and the offset after it."""
    values, starts, position = [], [], _skip(text, position + 1)
    if text[position : position + 1] == "]":
        return values, starts, position + 1
    while True:
        starts.append(position)
        value, position = decoder.raw_decode(text, position)
        values.append(value)
        position = _skip(text, position)
        if _expect(text, position, ",]", "',' or ']'") == "]":
            return values, starts, position + 1
        position = _skip(text, position + 1)


def _parsed(text: str) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The top-level JSON object of ``text`` and the offsets of the entries of its ``images`` and
    ``annotations`` lists."""
    decoder, document, offsets = json.JSONDecoder(), {}, {}
    position = _skip(text, 0)
    _expect(text, position, "{", "a JSON object")
    position = _skip(text, position + 1)
    if text[position : position + 1] == "}":
        return document, offsets
    while True:
        _expect(text, position, '"', "a key in double quotes")
        key, position = decoder.raw_decode(text, position)
        position = _skip(text, position)
        _expect(text, position, ":", "':'")
        position = _skip(text, position + 1)
        if key in _LISTS and text[position : position + 1] == "[":
            document[key], offsets[key], position = _array(text, position, decoder)
        else:
            document[key], position = decoder.raw_decode(text, position)
        position = _skip(text, position)
        if _expect(text, position, ",}", "',' or '}'") == "}":
            return document, offsets
        position = _skip(text, position + 1)


def _read_json(path: Path) -> tuple[dict[str, Any], _Lines]:
    try:
        text = path.read_text(encoding="utf-8-sig")
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno}).") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}).") from None
    if not isinstance(document, dict) or not all(isinstance(document.get(k), list) for k in _KEYS):
        missing = next(k for k in _KEYS if not isinstance(document, dict) or not isinstance(document.get(k), list))
        raise DataError(
            f"{path}: not a COCO instances file: no {missing!r} list (a COCO detection file holds 'images', "
            f"'annotations' and 'categories' lists)."
        )
    return document, _Lines(text)


def _categories(entries: list[Any], path: Path) -> tuple[dict[Any, int], list[str]]:
    """``{category id: label}`` (ids in increasing order give labels 0, 1, ...) and the class names."""
    named: dict[Any, str] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or "name" not in entry:
            raise DataError(f"{path}: categories[{index}] is {entry!r}; each category needs an integer id and a name.")
        if entry["id"] in named:
            raise DataError(f"{path}: category id {entry['id']} appears twice in categories; give each its own id.")
        named[entry["id"]] = str(entry["name"])
    ids = sorted(named)
    return {category: label for label, category in enumerate(ids)}, [named[i] for i in ids]


def _split_name(path: Path) -> str:
    """``instances_train2017.json`` -> ``train2017``."""
    return path.stem.removeprefix("instances_")


def _image_folder(path: Path, file_names: list[str], images: Path | None) -> Path:
    """Where the ``file_names`` of ``path`` lie: ``images`` if given, else the first common layout holding the
    first of them (else the first that exists, so that missing files are named where they were looked for)."""
    if images is not None:
        return images
    root = path.parent.parent if path.parent.name.lower() == "annotations" else path.parent
    split = _split_name(path)
    aliases = [split, *(("val", "valid") if split.lower() in _VALID_WORDS else ())]
    candidates = [root / name for name in aliases] + [root / "images" / name for name in aliases]
    candidates += [root / "images", root, path.parent]
    probe = file_names[:3]
    holding = next((c for c in candidates if any((c / name).is_file() for name in probe)), None)
    return holding or next((c for c in candidates if c.is_dir()), root)


@dataclass
class _Images:
    """The usable image entries of one file and what was wrong with the others."""

    index: dict[Any, int] = field(default_factory=dict)  # image id -> position in Annotations.paths
    unusable: set[Any] = field(default_factory=set)  # ids whose annotations are dropped with their image
    bad: list[tuple[int, str, Any, int]] = field(default_factory=list)  # (entry index, reason, id, images dropped)


def _images(entries: list[Any]) -> _Images:
    """Sort the ``images`` entries into usable ones and bad ones (malformed; duplicate ids, all left out: the
    first report of an id counts its first entry too)."""
    found, first = _Images(), {}
    for k, entry in enumerate(entries):
        image_id = entry.get("id") if isinstance(entry, dict) else None
        image_id = image_id if isinstance(image_id, int | str) else None
        if image_id is None or not isinstance(entry.get("file_name"), str):
            reason = f"malformed image entry {_short(entry)}: needs an 'id' and a 'file_name'"
            found.bad.append((k, reason, image_id, 1))
            if image_id is not None:
                found.unusable.add(image_id)
        elif image_id in first or image_id in found.unusable:
            counted = image_id in first and image_id not in found.unusable  # the first entry goes with this report
            also = f"also images[{first[image_id]}]" if image_id in first else "also a malformed entry"
            reason = f"duplicate image id {image_id!r} ({also}): every entry with it left out"
            found.bad.append((k, reason, image_id, 1 + counted))
            found.unusable.add(image_id)
        else:
            first[image_id] = k
    found.index = {image_id: k for image_id, k in first.items() if image_id not in found.unusable}
    return found


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _size(entry: dict[str, Any]) -> tuple[int, int] | None:
    width, height = entry.get("width"), entry.get("height")
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height))
    return (height, width) if ok else None  # type: ignore[return-value]


def _bbox(value: Any) -> list[float] | None:
    if type(value) is not list or len(value) != 4 or any(type(v) not in _NUMBERS for v in value):
        return None  # a bool is not a number here
    return [float(v) for v in value]


def _verdict(note: Any, unusable: set[Any], position: dict[Any, int], labels: dict[Any, int]) -> list[float] | str:
    """The box of a usable annotation; ``"crowd"``; ``"with its image"`` (its image entry is bad, and counts
    it); else why it is bad."""
    if type(note) is not dict:
        return f"malformed annotation {_short(note)}: expected an object"
    if note.get("iscrowd"):
        return "crowd"
    image_id, category_id, bbox = note.get("image_id"), note.get("category_id"), note.get("bbox")
    if type(image_id) not in _IDS or type(category_id) not in _IDS:
        return f"malformed annotation {_short(note)}: needs an image_id and a category_id"
    if image_id in unusable:
        return "with its image"
    if image_id not in position:
        return f"image_id {image_id!r} is not an id in images"
    if category_id not in labels:
        known = ", ".join(str(c) for c in list(labels)[:10]) + (", ..." if len(labels) > 10 else "")
        return f"unknown class: category_id {category_id!r} is not in categories (ids {known})"
    box = _bbox(bbox)
    return box if box is not None else f"malformed bbox {_short(bbox)}: expected [x, y, width, height] numbers"


def _add_boxes(
    found: Annotations,
    notes: list[Any],
    box_entry: list[int],
    unusable: set[Any],
    position: dict[Any, int],
    labels: dict[Any, int],
    where: Callable[[str, int], str],
) -> tuple[int, Counter[Any]]:
    """Add the usable ``annotations`` entries to ``found`` (their indices to ``box_entry``) and the bad ones
    to ``found.bad``; the number of crowd entries and, per unusable image id, its entries."""
    crowd, dropped_with = 0, Counter()
    for k, note in enumerate(notes):
        verdict = _verdict(note, unusable, position, labels)
        if isinstance(verdict, list):
            found.box_image.append(position[note["image_id"]])
            found.coords.append(verdict)
            found.labels.append(labels[note["category_id"]])
            box_entry.append(k)
        elif verdict == "crowd":
            crowd += 1
        elif verdict == "with its image":
            dropped_with[note["image_id"]] += 1
        else:
            found.bad.append(BadAnnotation(where("annotations", k), verdict))
    return crowd, dropped_with


def _read_file(
    path: Path, split: str | None, *, images: Path | None, root: Path
) -> tuple[Annotations, list[tuple[int, str]]]:
    """One COCO file as :class:`Annotations` (images relative to their folder) and its categories."""
    document, lines = _read_json(path)
    labels, names = _categories(document["categories"], path)
    entries, notes = document["images"], document["annotations"]
    file = shown(path, root)

    def where(key: str, k: int) -> str:
        entry = (entries if key == "images" else notes)[k]
        entry_id = entry.get("id") if isinstance(entry, dict) else None
        what = "image" if key == "images" else "annotation"
        return f"{file}:{lines.at(key, k)}: {what} id {entry_id} ({key}[{k}])"

    sorted_images = _images(entries)
    kept = sorted(sorted_images.index.items(), key=lambda item: item[1])
    position = {image_id: i for i, (image_id, _) in enumerate(kept)}
    folder = _image_folder(path, [entries[k]["file_name"] for _, k in kept], images)
    found = Annotations(
        names,
        "xywh",
        locate_image=lambda i: where("images", kept[i][1]),
        locate_box=lambda b: where("annotations", box_entry[b]),
        paths=[str(folder / entries[k]["file_name"]) for _, k in kept],
        sizes=[_size(entries[k]) for _, k in kept],
        splits=[split] * len(kept),
    )
    box_entry: list[int] = []
    crowd, dropped_with = _add_boxes(found, notes, box_entry, sorted_images.unusable, position, labels, where)
    for k, reason, image_id, dropped in sorted_images.bad:
        counted = dropped_with.pop(image_id, 0)  # a duplicated id's annotations counted once, with its first report
        found.bad.append(BadAnnotation(where("images", k), reason, images=dropped, boxes=counted))
    if crowd:
        found.warnings.append(f"{file}: {crowd} crowd annotations (iscrowd=1) left out")
    return found, list(zip(sorted(labels), names, strict=True))


def _merged(parts: list[Annotations]) -> Annotations:
    """The annotations of several files as one (image indices of later files shifted)."""
    image_starts = [sum(len(p.paths) for p in parts[:i]) for i in range(len(parts))]
    box_starts = [sum(len(p.labels) for p in parts[:i]) for i in range(len(parts))]
    merged = Annotations(
        parts[0].classes,
        parts[0].box_format,
        locate_image=chained([(s, p.locate_image) for s, p in zip(image_starts, parts, strict=True)]),
        locate_box=chained([(s, p.locate_box) for s, p in zip(box_starts, parts, strict=True)]),
    )
    for start, part in zip(image_starts, parts, strict=True):
        merged.paths += part.paths
        merged.sizes += part.sizes
        merged.splits += part.splits
        merged.box_image += [start + i for i in part.box_image]
        merged.coords += part.coords
        merged.labels += part.labels
        merged.bad += part.bad
        merged.warnings += part.warnings
    return merged


def looks_like_coco(path: Path, *, head: int = 65536) -> bool:
    """Whether the JSON file ``path`` is a COCO annotation file: one object naming ``images`` or ``annotations``
    in its first ``head`` bytes (a JSON-lines table of image paths is not; read without parsing the file).

    Example:
        >>> looks_like_coco(Path("annotations/instances_train.json")), looks_like_coco(Path("labels.jsonl"))
        (True, False)
    """
    try:
        with path.open("rb") as handle:
            start = handle.read(head).decode("utf-8", errors="replace")
    except OSError:
        return False
    lines = start.lstrip().splitlines()
    if not lines or not lines[0].startswith("{"):
        return False
    rows = len(lines) > 1 and lines[0].rstrip().endswith("}") and lines[1].lstrip().startswith("{")  # JSON lines
    return not rows and any(f'"{name}"' in start for name in ("images", "annotations"))


def coco_files(source: Path) -> list[tuple[Path, str | None]]:
    """The COCO files of ``source`` with their split: the file itself (no split), or a folder's (or its
    ``annotations/`` folder's) train and val files (``instances_*.json`` preferred), or its one JSON file.

    Raises:
        DataError: no JSON files, or several that none of the names tell apart.

    Example:
        >>> coco_files(Path("coco"))
        [(PosixPath('coco/annotations/instances_train.json'), 'train'), (PosixPath('coco/annotations/instances_val.json'), 'valid')]
    """  # noqa: E501
    if source.is_file():
        return [(source, None)]
    folder = source / "annotations" if (source / "annotations").is_dir() else source
    files = sorted(folder.glob("instances_*.json")) or sorted(folder.glob("*.json"))
    train = [f for f in files if "train" in _split_name(f).lower()]
    valid = [f for f in files if any(w in _split_name(f).lower() for w in _VALID_WORDS) and f not in train]
    if len(train) == 1:
        return [(train[0], "train"), (valid[0], "valid")] if len(valid) == 1 else [(train[0], None)]
    if len(files) == 1:
        return [(files[0], None)]
    names = ", ".join(f.name for f in files) or "none"
    raise DataError(
        f"{folder}: cannot tell which COCO JSON file is which (found: {names}); name them instances_train.json "
        f"and instances_val.json, or pass one file."
    )


def read_coco(files: list[tuple[Path, str | None]], *, images: Path | None, root: Path) -> Annotations:
    """The boxes of COCO ``files`` (from :func:`coco_files`), images in ``images`` or looked for beside them.

    Raises:
        DataError: a file that is not JSON or not COCO, bad categories, or files whose categories differ.

    Example:
        >>> found = read_coco(coco_files(Path("coco")), images=None, root=Path("coco"))
        >>> found.classes, found.box_format
        (['bag', 'shirt', 'shoe'], 'xywh')
    """
    parts, categories = [], None
    for path, split in files:
        part, listed = _read_file(path, split, images=images, root=root)
        if categories is not None and listed != categories:
            raise DataError(
                f"{path}: categories {listed} differ from {files[0][0].name}'s {categories}; the train and val "
                f"files must list the same categories."
            )
        parts.append(part)
        categories = listed
    return parts[0] if len(parts) == 1 else _merged(parts)
