"""YOLO detection labels: a ``data.yaml`` naming the classes (``names:`` a list, or a dict ``{0: name}``) and
the image folders (``train:``, ``val:``; relative to ``path:`` or to the YAML file's folder; a folder, a
``.txt`` list of images, or a list of either), with one ``.txt`` label file per image in the sibling
``labels/`` tree (``images/train/a.jpg`` -> ``labels/train/a.txt``).

Each label line is ``class cx cy w h``, the centre and size as fractions of the image's width and height.
An image without a label file, or with an empty one, has no objects. Bad lines are named by label file and
line number. The YAML is read with ``yaml.safe_load`` (no Python objects built from tags).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from torchgraft.data.annotations import Annotations, BadAnnotation, shown
from torchgraft.data.images import IMAGE_SUFFIXES
from torchgraft.data.samples import DataError, list_files

__all__ = ["YAML_NAMES", "label_path", "read_yolo", "yolo_config"]

YAML_NAMES = ("data.yaml", "dataset.yaml")
_SPLITS = (("train", "train"), ("val", "valid"))  # data.yaml key -> split


def yolo_config(source: Path) -> Path | None:
    """The YOLO ``data.yaml`` of ``source``: the file itself, or ``data.yaml`` / ``dataset.yaml`` in the
    folder, or its one ``.yaml`` file; ``None`` if there is none.

    Example:
        >>> yolo_config(Path("shapes"))
        PosixPath('shapes/data.yaml')
    """
    if source.is_file():
        return source if source.suffix.lower() in (".yaml", ".yml") else None
    named = [source / name for name in YAML_NAMES if (source / name).is_file()]
    found = named or sorted([*source.glob("*.yaml"), *source.glob("*.yml")])
    return found[0] if len(found) == 1 or named else None


def _settings(config: Path) -> dict[str, Any]:
    try:
        settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DataError(f"{config}{line}: not valid YAML ({getattr(error, 'problem', error)}).") from None
    if not isinstance(settings, dict) or "names" not in settings or "train" not in settings:
        raise DataError(
            f"{config}: not a YOLO data file: needs 'names:' (the classes) and 'train:' (the training images), "
            f"and 'val:' for validation images."
        )
    return settings


def _names(settings: dict[str, Any], config: Path) -> list[str]:
    """The class names of ``names:`` (a list, or a dict whose keys are 0..C-1), checked against ``nc:``."""
    names = settings["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{config}: names: keys {sorted(names)} must be the class ids 0..{len(names) - 1}.")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{config}: names: expected a list of class names or a dict {{0: name, ...}}, got {names!r}.")
    count = settings.get("nc")
    if count is not None and count != len(names):
        raise DataError(f"{config}: nc: {count} but names lists {len(names)} classes; make them agree.")
    return [str(name) for name in names]


def _base(settings: dict[str, Any], config: Path) -> Path:
    """The folder ``train:`` and ``val:`` are relative to: ``path:`` (itself relative to the YAML's folder)."""
    base = config.parent / str(settings["path"]) if settings.get("path") else config.parent
    if not base.is_dir():
        raise DataError(f"{config}: path: {base} is not a folder.")
    return base


def _images_of(entry: Any, base: Path, config: Path, key: str) -> list[str]:
    """The image files a ``train:`` / ``val:`` entry names: folders (searched recursively), ``.txt`` lists of
    image paths (relative to the list's folder), or a list of those."""
    found: list[str] = []
    for item in entry if isinstance(entry, list) else [entry]:
        place = base / str(item)
        if place.is_dir():
            found += list_files(place, IMAGE_SUFFIXES)
        elif place.is_file() and place.suffix.lower() == ".txt":
            listed = (line.strip() for line in place.read_text(encoding="utf-8").splitlines())
            found += [str(place.parent / line) for line in listed if line]
        else:
            raise DataError(f"{config}: {key}: {place} is neither a folder of images nor a .txt list of them.")
    return found


def label_path(image: str | Path) -> Path:
    """The label file of ``image``: the last ``images`` folder of its path read as ``labels``, suffix ``.txt``
    (beside the image when its path has no ``images`` folder).

    Example:
        >>> label_path("shapes/images/train/a.png")
        PosixPath('shapes/labels/train/a.txt')
    """
    parts = list(Path(image).with_suffix(".txt").parts)
    if "images" in parts[:-1]:
        at = len(parts) - 2 - parts[-2::-1].index("images")
        parts[at] = "labels"
    return Path(*parts)


def _parsed_line(text: str, n_classes: int) -> tuple[int, list[float]] | str:
    """``(class, [cx, cy, w, h])`` of a label line, or why it is bad."""
    parts = text.split()
    if len(parts) != 5:
        hint = " (a segment polygon? give boxes)" if len(parts) > 5 else ""
        return f"malformed line {text!r}: expected 'class cx cy w h' (5 numbers), got {len(parts)} fields{hint}"
    try:
        values = [float(part) for part in parts]
    except ValueError:
        return f"malformed line {text!r}: expected 'class cx cy w h' numbers"
    if not values[0].is_integer():
        return f"malformed line {text!r}: class id {parts[0]} is not an integer"
    label = int(values[0])
    if not 0 <= label < n_classes:
        return f"unknown class id {label}: data.yaml names {n_classes} classes (0..{n_classes - 1})"
    return label, values[1:]


def _read_labels(found: Annotations, image: int, label: Path, lines: list[int], root: Path) -> None:
    """Add the boxes of ``label`` (image ``image``'s file) to ``found``, bad lines to ``found.bad``."""
    for number, text in enumerate(label.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not text.strip():
            continue
        parsed = _parsed_line(text.strip(), len(found.classes))
        if isinstance(parsed, str):
            found.bad.append(BadAnnotation(f"{shown(label, root)}:{number}", parsed))
            continue
        found.box_image.append(image)
        found.labels.append(parsed[0])
        found.coords.append(parsed[1])
        lines.append(number)


def read_yolo(config: Path, *, root: Path) -> Annotations:
    """The boxes of the YOLO dataset that ``config`` (a ``data.yaml``) describes; messages show paths relative
    to ``root``.

    Raises:
        DataError: a YAML that is not a YOLO data file, bad ``names:``, or image folders that do not exist.

    Example:
        >>> found = read_yolo(Path("shapes/data.yaml"), root=Path("shapes"))
        >>> found.classes, found.box_format
        (['bag', 'shirt', 'shoe'], 'cxcywh-normalised')
    """
    settings = _settings(config)
    base, lines = _base(settings, config), []

    def locate_box(box: int) -> str:
        return f"{shown(label_path(found.paths[found.box_image[box]]), root)}:{lines[box]}"

    found = Annotations(
        _names(settings, config),
        "cxcywh-normalised",
        locate_image=lambda image: shown(found.paths[image], root),
        locate_box=locate_box,
    )
    marked = settings.get("val") is not None
    unlabelled = 0
    for key, split in _SPLITS:
        if settings.get(key) is None:
            continue
        for path in _images_of(settings[key], base, config, key):
            image, label = len(found.paths), label_path(path)
            found.paths.append(path)
            found.sizes.append(None)  # YOLO records no sizes: read from the image header
            found.splits.append(split if marked else None)
            if label.is_file():
                _read_labels(found, image, label, lines, root)
            else:
                unlabelled += 1
    if unlabelled:
        found.warnings.append(f"{unlabelled} images have no label file: taken as images without objects")
    return found
