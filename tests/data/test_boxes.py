"""Detection data: one scene of coloured objects on real PNG files, written as COCO, YOLO and Pascal VOC, is
recognised from its path and read to the same pixel boxes; every kind of bad annotation is named by file and
line (or skipped and counted exactly); the dataset and v2 transforms keep boxes on their objects."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from torchgraft.data.annotations import BoxSample
from torchgraft.data.boxes import box_data, box_format
from torchgraft.data.decode import decode_rgb
from torchgraft.data.detection import BoxDataset, box_transforms, collate_boxes
from torchgraft.data.images import EXIF_ORIENTATION, displayed_size
from torchgraft.data.samples import DataError

CLASSES = ["bag", "shirt", "shoe"]
CATEGORY_IDS = [3, 5, 9]  # COCO ids with gaps: labels follow their order
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]
BACKGROUND = 128
# name, width, height, objects (label, x1, y1, x2, y2) in pixels; sizes are powers of two, so YOLO's fractions
# are exact binary numbers and every format must give the same boxes bit for bit
SCENE = [
    ("a", 128, 64, [(0, 8, 4, 40, 36), (2, 64, 16, 120, 56)]),
    ("b", 64, 128, [(1, 4, 8, 60, 72)]),
    ("c", 64, 64, []),  # no objects
    ("d", 128, 64, [(2, 0, 0, 128, 64)]),  # the whole image
    ("e", 64, 64, [(0, 10, 10, 20, 30), (1, 32, 40, 56, 60), (2, 2, 44, 14, 62)]),
]
VALID = {"e"}


def _paint(path: Path, width: int, height: int, objects) -> None:
    pixels = np.full((height, width, 3), BACKGROUND, np.uint8)
    for label, x1, y1, x2, y2 in objects:
        pixels[y1:y2, x1:x2] = COLOURS[label]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _line(path: Path, needle: str, nth: int = 0) -> int:
    """The 1-based number of the ``nth`` line of ``path`` holding ``needle``."""
    return [n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line][nth]


def _split(name: str) -> str:
    return "val" if name in VALID else "train"


def _coco_json(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    """A COCO file with one entry per line (so that an entry's line can be checked)."""
    categories = [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, CLASSES, strict=True)]
    body = ",\n".join(json.dumps(entry) for entry in images)
    notes = ",\n".join(json.dumps(entry) for entry in annotations)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'{{"images": [\n{body}\n],\n"annotations": [\n{notes}\n],\n"categories": {json.dumps(categories)}}}\n'
    )
    return path


def _coco_entries(scene, first_id: int = 1) -> tuple[list[dict], list[dict]]:
    images, annotations = [], []
    for k, (name, width, height, objects) in enumerate(scene):
        images.append({"id": first_id + k, "file_name": f"{name}.png", "width": width, "height": height})
        for label, x1, y1, x2, y2 in objects:
            box = [x1, y1, x2 - x1, y2 - y1]
            note = {"id": 100 + len(annotations), "image_id": first_id + k, "category_id": CATEGORY_IDS[label]}
            annotations.append({**note, "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    return images, annotations


def write_coco(root: Path) -> Path:
    """root/annotations/instances_{train,val}.json with images in root/{train,val}/."""
    for split in ("train", "val"):
        scene = [entry for entry in SCENE if _split(entry[0]) == split]
        for name, width, height, objects in scene:
            _paint(root / split / f"{name}.png", width, height, objects)
        _coco_json(root / "annotations" / f"instances_{split}.json", *_coco_entries(scene))
    return root


def write_yolo(root: Path, *, names_as_dict: bool = False) -> Path:
    """root/data.yaml, root/images/{train,val}/, root/labels/{train,val}/ (no label file for the empty image)."""
    for name, width, height, objects in SCENE:
        _paint(root / "images" / _split(name) / f"{name}.png", width, height, objects)
        if objects:
            lines = []
            for label, x1, y1, x2, y2 in objects:
                cx, cy, w, h = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
                lines.append(f"{label} {cx!r} {cy!r} {w!r} {h!r}")
            (root / "labels" / _split(name)).mkdir(parents=True, exist_ok=True)
            (root / "labels" / _split(name) / f"{name}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES)) if names_as_dict else f"  {CLASSES}"
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnc: 3\nnames:\n{names}\n")
    return root


def _voc_xml(name: str, width: int, height: int, objects, *, filename: str | None = None) -> str:
    parts = [
        "<annotation>",
        f"  <filename>{filename or name + '.png'}</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for label, x1, y1, x2, y2 in objects:  # VOC: 1-based, both ends inclusive
        parts += [
            "  <object>",
            f"    <name>{CLASSES[label]}</name><difficult>0</difficult>",
            f"    <bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
            "  </object>",
        ]
    return "\n".join([*parts, "</annotation>", ""])


def write_voc(root: Path) -> Path:
    """root/Annotations/*.xml, root/JPEGImages/*.png, root/ImageSets/Main/{train,val}.txt."""
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name, width, height, objects in SCENE:
        _paint(root / "JPEGImages" / f"{name}.png", width, height, objects)
        (root / "Annotations" / f"{name}.xml").write_text(_voc_xml(name, width, height, objects))
    for split in ("train", "val"):
        stems = [name for name, *_ in SCENE if _split(name) == split]
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def _expected(name: str) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    _, width, height, objects = next(entry for entry in SCENE if entry[0] == name)
    boxes = torch.tensor([o[1:] for o in objects], dtype=torch.float32).reshape(-1, 4)
    return boxes, torch.tensor([o[0] for o in objects], dtype=torch.int64), (height, width)


def _by_name(samples: list[BoxSample]) -> dict[str, BoxSample]:
    return {Path(s.path).stem: s for s in samples}


WRITERS = {"coco": write_coco, "yolo": write_yolo, "voc": write_voc}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_each_format_is_recognised_and_read_to_the_same_boxes(kind, tmp_path):
    root = WRITERS[kind](tmp_path / kind)
    assert box_format(root) == kind
    data = box_data(root)
    assert data.format == kind and data.classes == CLASSES and data.split_off is None
    assert set(_by_name(data.valid)) == VALID and set(_by_name(data.train)) == {n for n, *_ in SCENE} - VALID
    for name, sample in _by_name(data.train + data.valid).items():
        boxes, labels, size = _expected(name)
        assert sample.boxes.dtype == torch.float32 and sample.labels.dtype == torch.int64
        assert torch.equal(sample.boxes, boxes), (kind, name, sample.boxes, boxes)  # pixel-exact xyxy
        assert torch.equal(sample.labels, labels) and sample.size == size, (kind, name)
    assert _by_name(data.train)["c"].boxes.shape == (0, 4)  # the image without objects is kept
    assert data.summary() == f"detect ({kind}): 3 classes, 4 train / 1 valid images (1 without objects), 7 boxes"
    assert data.skipped == [] and not [w for w in data.warnings if "no training boxes" in w]


def test_paths_inside_a_dataset_are_recognised_too(tmp_path):
    coco, yolo, voc = write_coco(tmp_path / "coco"), write_yolo(tmp_path / "yolo"), write_voc(tmp_path / "voc")
    assert box_format(coco / "annotations") == box_format(coco / "annotations" / "instances_val.json") == "coco"
    assert box_format(yolo / "data.yaml") == "yolo" and box_format(voc / "Annotations") == "voc"
    assert [len(box_data(voc / "Annotations").train), len(box_data(coco / "annotations").valid)] == [4, 1]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"other: not a detection dataset: expected a COCO \.json file"):
        box_format(tmp_path / "other")


def test_one_coco_file_with_an_images_folder_is_split_by_seed(tmp_path):
    for name, width, height, objects in SCENE:
        _paint(tmp_path / "images" / f"{name}.png", width, height, objects)
    path = _coco_json(tmp_path / "annotations" / "instances_all.json", *_coco_entries(SCENE))
    first, again = box_data(path, valid_pct=0.4, seed=3), box_data(path, valid_pct=0.4, seed=3)
    assert (len(first.train), len(first.valid), first.split_off) == (3, 2, 0.4)
    assert [s.path for s in first.valid] == [s.path for s in again.valid]
    assert str(tmp_path / "images" / "a.png") in {s.path for s in first.train + first.valid}
    other = box_data(tmp_path / "annotations", images=tmp_path / "images", valid_pct=0.4, seed=4)
    assert len(other.valid) == 2 and {s.path for s in other.valid} != {s.path for s in first.valid}


@pytest.mark.parametrize("names_as_dict", [False, True], ids=["names-list", "names-dict"])
def test_yolo_names_as_a_list_or_a_dict(names_as_dict, tmp_path):
    data = box_data(write_yolo(tmp_path, names_as_dict=names_as_dict))
    assert data.classes == CLASSES
    assert "1 images have no label file: taken as images without objects" in data.warnings


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("a.json", '{"images": [\n  {"id": 1,}\n]}', r"a\.json:2: not valid JSON \(Expecting property name"),
        ("a.json", '{"images": [], "annotations": []}', r"a\.json: not a COCO instances file: no 'categories' list"),
        ("data.yaml", "train: images\nval: images\n", r"data\.yaml: not a YOLO data file: needs 'names:'"),
        ("data.yaml", "train: .\nnc: 2\nnames: [a, b, c]\n", r"data\.yaml: nc: 2 but names lists 3 classes"),
        ("data.yaml", "train: .\nnames: {0: a, 2: b}\n", r"names: keys \[0, 2\] must be the class ids 0\.\.1"),
        ("data.yaml", "train: missing\nnames: [a]\n", r"train: .*missing is neither a folder of images nor"),
    ],
)
def test_files_that_cannot_be_read_at_all_are_refused_by_name(file, text, message, tmp_path):
    (tmp_path / file).write_text(text)
    with pytest.raises(DataError, match=message):
        box_data(tmp_path / file)


def _coco_with_bad_entries(root: Path) -> Path:
    """The training scene plus one of each kind of bad entry; returns the JSON file."""
    scene = [entry for entry in SCENE if entry[0] not in VALID]
    for name, width, height, objects in scene:
        _paint(root / "images" / f"{name}.png", width, height, objects)
    images, notes = _coco_entries(scene)
    images += [
        {"id": 40, "file_name": "ghost.png", "width": 64, "height": 64},  # no such file, one annotation
        {"id": 50, "file_name": "a.png", "width": 128, "height": 64},  # id 50 twice, two annotations
        {"id": 50, "file_name": "b.png", "width": 64, "height": 128},
    ]
    bad = [
        (200, 1, 3, [10, 10, 0, 5]),  # zero width
        (201, 1, 3, [10, 10, 8, -3]),  # negative height
        (202, 1, 3, [100, 10, 40, 20]),  # x2 = 140 on a 128 px wide image: 12 px beyond
        (203, 1, 7, [1, 1, 4, 4]),  # unknown category
        (204, 1, 3, [1, 2, 3]),  # malformed bbox
        (205, 99, 3, [1, 1, 4, 4]),  # no image 99
        (206, 40, 3, [1, 1, 4, 4]),
        (207, 50, 3, [1, 1, 4, 4]),
        (208, 50, 5, [1, 1, 4, 4]),
        (209, 1, 3, [120, 0, 8.5, 10]),  # 0.5 px beyond the right edge: within tolerance, clamped
    ]
    notes += [{"id": i, "image_id": image, "category_id": c, "bbox": b, "iscrowd": 0} for i, image, c, b in bad]
    notes.append({"id": 300, "image_id": 1, "category_id": 3, "bbox": [0, 0, 60, 60], "iscrowd": 1})
    return _coco_json(root / "annotations" / "instances_train.json", images, notes)


def test_every_bad_coco_entry_is_named_by_file_line_and_id(tmp_path):
    path = _coco_with_bad_entries(tmp_path)
    with pytest.raises(DataError) as caught:
        box_data(path)
    message, file = str(caught.value), "annotations/instances_train.json"
    assert "8 bad annotations: " in message and "; and 3 more. Fix them, or leave them out (skip_bad=True" in message
    ghost, duplicate = _line(path, '"id": 40,'), _line(path, '"id": 50,', nth=1)
    assert f"{file}:{ghost}: image id 40 (images[4]): no image file {tmp_path / 'images' / 'ghost.png'}" in message
    duplicated = "duplicate image id 50 (also images[5]): every entry with it left out"
    assert f"{file}:{duplicate}: image id 50 (images[6]): {duplicated}" in message
    data = box_data(path, skip_bad=True, valid_pct=0.25)
    reasons = {bad.where: bad.reason for bad in data.skipped}
    expected = {
        200: "zero or negative area: box [10, 10, 10, 15] is 0 wide and 5 high",
        201: "zero or negative area: box [10, 10, 18, 7] is 8 wide and -3 high",
        202: "box [100, 10, 140, 30] is outside the 128x64 image: 12 px beyond its right edge (tolerance 1 px)",
        203: "unknown class: category_id 7 is not in categories (ids 3, 5, 9)",
        204: "malformed bbox [1, 2, 3]: expected [x, y, width, height] numbers",
        205: "image_id 99 is not an id in images",
    }
    index = {200 + k: 4 + k for k in range(6)}  # the 4 annotations of the scene's training images come first
    for note_id, reason in expected.items():
        line = _line(path, f'"id": {note_id},')
        where = f"{file}:{line}: annotation id {note_id} (annotations[{index[note_id]}])"
        assert reasons.get(where) == reason, (where, reasons)
    assert (len(data.skipped), data.skipped_boxes, data.skipped_images) == (8, 9, 3)  # 6 boxes + 1 + 2 with images
    assert data.summary().endswith("; 8 bad annotations skipped (9 boxes, 3 images)")
    kept = _by_name(data.train + data.valid)
    assert set(kept) == {"a", "b", "c", "d"} and sum(len(s.labels) for s in kept.values()) == 4 + 1  # + clamped
    assert torch.equal(kept["a"].boxes[-1], torch.tensor([120.0, 0.0, 128.0, 10.0]))
    assert any("1 crowd annotations (iscrowd=1) left out" in w for w in data.warnings)


def test_bad_yolo_lines_are_named_by_label_file_and_line(tmp_path):
    root = write_yolo(tmp_path)
    label = root / "labels" / "train" / "a.txt"
    good = label.read_text()
    label.write_text(
        good + "0 0.5 0.5 0.25\nx 0.5 0.5 0.25 0.25\n7 0.5 0.5 0.25 0.25\n1 0.5 0.5 0 0.25\n0 0.9375 0.5 0.25 0.25\n"
    )
    (root / "extra.txt").write_text("images/ghost.png\n")
    (root / "data.yaml").write_text(
        (root / "data.yaml").read_text().replace("train: images/train", "train:\n  - images/train\n  - extra.txt")
    )
    with pytest.raises(DataError) as caught:
        box_data(root)
    message = str(caught.value)
    assert message.startswith(f"{root}: 6 bad annotations: ") and "and 1 more" in message
    data = box_data(root, skip_bad=True)
    reasons = {bad.where: bad.reason for bad in data.skipped}
    assert reasons == {
        "labels/train/a.txt:3": "malformed line '0 0.5 0.5 0.25': expected 'class cx cy w h' (5 numbers), got 4 fields",
        "labels/train/a.txt:4": "malformed line 'x 0.5 0.5 0.25 0.25': expected 'class cx cy w h' numbers",
        "labels/train/a.txt:5": "unknown class id 7: data.yaml names 3 classes (0..2)",
        "labels/train/a.txt:6": "zero or negative area: box [64, 24, 64, 40] is 0 wide and 16 high",
        "labels/train/a.txt:7": (
            "box [104, 24, 136, 40] is outside the 128x64 image: 8 px beyond its right edge (tolerance 1 px)"
        ),
        "images/ghost.png": f"no image file {root / 'images' / 'ghost.png'}",
    }
    assert (data.skipped_boxes, data.skipped_images) == (5, 1)
    assert torch.equal(_by_name(data.train)["a"].boxes, _expected("a")[0])  # the good lines kept, in order


def test_bad_voc_objects_and_files_are_named_by_file_and_line(tmp_path):
    root = write_voc(tmp_path)
    objects = [(0, 8, 4, 40, 36), (1, 10, 10, 10, 20), (2, 100, 10, 140, 30)]  # good, zero width, 12 px out
    xml = _voc_xml("a", 128, 64, objects).replace(
        "</annotation>", "  <object>\n    <name>bag</name><bndbox><xmin>1</xmin></bndbox>\n  </object>\n</annotation>"
    )
    (root / "Annotations" / "a.xml").write_text(xml)
    (root / "Annotations" / "b.xml").write_text(_voc_xml("b", 64, 128, [(1, 4, 8, 60, 72)], filename="gone.png"))
    bomb = '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">]>\n<annotation>&lol;</annotation>\n'
    (root / "Annotations" / "c.xml").write_text(bomb)
    (root / "Annotations" / "d.xml").write_text(
        "<annotation>\n  <filename>d.png</filename>\n  <object>\n</annotation>\n"
    )
    with (root / "ImageSets" / "Main" / "val.txt").open("a") as listing:
        listing.write("nothere\n")
    with pytest.raises(DataError, match=r"7 bad annotations: .*Annotations/a\.xml:\d+: <object> 1: zero or negative"):
        box_data(root)
    data = box_data(root, skip_bad=True)
    reasons = {bad.where: bad.reason for bad in data.skipped}
    path = root / "Annotations" / "a.xml"
    assert reasons[f"Annotations/a.xml:{_line(path, '<object>', 1)}: <object> 1"] == (
        "zero or negative area: box [10, 10, 10, 20] is 0 wide and 10 high"
    )
    assert reasons[f"Annotations/a.xml:{_line(path, '<object>', 2)}: <object> 2"].endswith(
        "is outside the 128x64 image: 12 px beyond its right edge (tolerance 1 px)"
    )
    assert reasons[f"Annotations/a.xml:{_line(path, '<object>', 3)}: <object> 3"] == (
        "malformed <object>: <bndbox> needs numeric xmin, ymin, xmax, ymax"
    )
    assert reasons["Annotations/b.xml"] == f"no image file {root / 'JPEGImages' / 'gone.png'}"
    assert reasons["Annotations/c.xml"].startswith("holds a DOCTYPE or ENTITY declaration: refused")
    assert reasons["Annotations/d.xml"].startswith("line 4: not valid XML (mismatched tag")
    assert reasons["ImageSets/Main/val.txt:2"] == "no annotation file Annotations/nothere.xml"
    assert (len(data.skipped), data.skipped_boxes, data.skipped_images) == (7, 4, 4)  # b's one box goes with it
    assert torch.equal(_by_name(data.train)["a"].boxes, torch.tensor([[8.0, 4, 40, 36]]))


def test_skip_bad_spelled_as_the_flag_on_the_command_line(tmp_path):
    from torchgraft.spelling import command_line

    root = write_yolo(tmp_path)
    (root / "labels" / "train" / "b.txt").write_text("5 0.5 0.5 0.5 0.5\n")
    with command_line(), pytest.raises(DataError, match=r"labels/train/b\.txt:1: unknown class id 5.*\(--skip-bad"):
        box_data(root)


def _colour_inside(image: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """The median colour (0..255) of the middle half of ``box`` in a ``(3, H, W)`` image."""
    x1, y1, x2, y2 = box.tolist()
    w, h = x2 - x1, y2 - y1
    patch = image[:, int(y1 + h / 4) : int(y2 - h / 4) + 1, int(x1 + w / 4) : int(x2 - w / 4) + 1]
    scale = 255.0 if image.is_floating_point() else 1.0
    return patch.reshape(3, -1).float().median(dim=1).values * scale


def test_dataset_gives_tv_tensors_and_a_flip_moves_boxes_with_the_objects(tmp_path):
    data = box_data(write_yolo(tmp_path))
    plain = BoxDataset(data.train)
    image, target = plain[0]  # "a"
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 64, 128)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].canvas_size == (64, 128)
    assert target["labels"].dtype == torch.int64
    flipped = BoxDataset(data.train, v2.RandomHorizontalFlip(p=1.0))
    image, target = flipped[0]
    boxes, labels, _ = _expected("a")
    mirrored = torch.stack([128 - boxes[:, 2], boxes[:, 1], 128 - boxes[:, 0], boxes[:, 3]], dim=1)
    assert torch.equal(target["boxes"].as_subclass(torch.Tensor), mirrored) and torch.equal(target["labels"], labels)
    for box, label in zip(target["boxes"], target["labels"], strict=True):
        assert torch.equal(_colour_inside(image, box), torch.tensor(COLOURS[label], dtype=torch.float32))


@pytest.mark.parametrize("iou_crop", [False, True], ids=["scale-jitter", "iou-crop"])
def test_train_transforms_keep_boxes_on_their_objects(iou_crop, tmp_path):
    data = box_data(write_yolo(tmp_path))
    dataset = BoxDataset(data.train, box_transforms(train=True, size=96, iou_crop=iou_crop))
    flips = set()
    for seed in range(6):
        torch.manual_seed(seed)
        for index in (0, 1, 3):  # a, b, d: the images with objects
            image, target = dataset[index]
            assert image.dtype == torch.float32 and max(image.shape[-2:]) <= 96 * 1.5 + 1
            for box, label in zip(target["boxes"], target["labels"], strict=True):
                colour = _colour_inside(image, box)
                assert (colour - torch.tensor(COLOURS[label])).abs().max() < 8, (seed, index, box, colour)
            if index == 0:
                flips.add(bool(target["boxes"][0, 0] > image.shape[-1] / 2))  # the bag is on the left unflipped
    assert iou_crop or flips == {True, False}  # both branches of the random flip were seen


def test_photometric_jitter_changes_colours_not_boxes(tmp_path):
    data = box_data(write_yolo(tmp_path))
    dataset = BoxDataset(data.train, box_transforms(train=True, photometric=True, flip=0.0))
    changed = 0
    for seed in range(4):
        torch.manual_seed(seed)
        image, target = dataset[0]
        assert torch.equal(target["boxes"].as_subclass(torch.Tensor), _expected("a")[0])
        changed += not torch.equal((image * 255).round().to(torch.uint8), BoxDataset(data.train)[0][0])
    assert changed > 0


def test_sanitize_drops_degenerate_boxes_with_their_labels():
    sample = BoxSample(
        "unused.png", torch.tensor([[10.0, 10, 10.5, 30], [20, 20, 40, 40]]), torch.tensor([0, 2]), (64, 64)
    )
    dataset = BoxDataset([sample], box_transforms(train=True, flip=0.0))
    image = tv_tensors.Image(torch.zeros(3, 64, 64, dtype=torch.uint8))
    _, target = dataset.transform(image, dataset.target(0, (64, 64)))
    assert target["boxes"].tolist() == [[20.0, 20.0, 40.0, 40.0]] and target["labels"].tolist() == [2]


def test_collate_keeps_lists_and_eval_resize_scales_the_boxes(tmp_path):
    data = box_data(write_coco(tmp_path))
    dataset = BoxDataset(data.train, box_transforms(train=False, size=64))
    images, targets = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_boxes)))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 3
    assert [tuple(i.shape) for i in images] == [(3, 32, 64), (3, 64, 32), (3, 64, 64)]  # a, b, c: longer side 64
    assert all(i.dtype == torch.float32 for i in images)
    assert [tuple(t["boxes"].shape) for t in targets] == [(2, 4), (1, 4), (0, 4)]
    assert targets[0]["boxes"].tolist() == [[4.0, 2.0, 20.0, 18.0], [32.0, 8.0, 60.0, 28.0]]
    assert targets[0]["labels"].tolist() == [0, 2] and targets[2]["labels"].dtype == torch.int64


# A portrait photo as displayed (64 wide, 128 high), stored turned back the way its EXIF orientation turns it
# forward (PIL's exif_transpose inverted): 5..8 store it as a 128x64 landscape, 3 upside down at 64x128.
PORTRAIT = (64, 128, [(0, 8, 16, 40, 64), (2, 16, 80, 56, 120)])
STORED_AS = {
    3: Image.Transpose.ROTATE_180,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _paint_turned(path: Path, orientation: int) -> Path:
    """A JPEG of :data:`PORTRAIT` that shows as painted once its EXIF ``orientation`` is applied."""
    width, height, objects = PORTRAIT
    _paint(path, width, height, objects)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.open(path).transpose(STORED_AS[orientation]).save(path.with_suffix(".jpg"), quality=95, exif=exif)
    path.unlink()
    return path.with_suffix(".jpg")


def _assert_on_the_portrait(data) -> None:
    """Every sample is the portrait as decoded (size and boxes as displayed), its boxes on their objects."""
    width, height, objects = PORTRAIT
    boxes = torch.tensor([o[1:] for o in objects], dtype=torch.float32)
    for index, sample in enumerate(data.train):
        assert sample.size == tuple(decode_rgb(sample.path).shape[1:]) == (height, width), sample
        assert torch.equal(sample.boxes, boxes) and sample.labels.tolist() == [o[0] for o in objects]
        image, target = BoxDataset(data.train)[index]
        assert image.shape == (3, height, width) and target["boxes"].canvas_size == (height, width)
        for box, label in zip(target["boxes"], target["labels"], strict=True):
            colour = _colour_inside(image, box)
            assert (colour - torch.tensor(COLOURS[label])).abs().max() < 8, (box, colour)


@pytest.mark.parametrize("orientation", [3, 5, 6, 7, 8])
def test_yolo_fractions_are_of_the_image_as_displayed(orientation, tmp_path):
    width, height, objects = PORTRAIT
    lines = [
        f"{label} {(x1 + x2) / 2 / width!r} {(y1 + y2) / 2 / height!r} {(x2 - x1) / width!r} {(y2 - y1) / height!r}"
        for label, x1, y1, x2, y2 in objects
    ]
    for split in ("train", "val"):
        stored = _paint_turned(tmp_path / "images" / split / "p.png", orientation)
        with Image.open(stored) as image:  # the file holds the image turned back
            assert image.size == ((height, width) if orientation >= 5 else (width, height))
        (tmp_path / "labels" / split).mkdir(parents=True)
        (tmp_path / "labels" / split / "p.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {CLASSES}\n")
    data = box_data(tmp_path)
    _assert_on_the_portrait(data)
    assert data.skipped == [] and not [w for w in data.warnings if "EXIF" in w]


def _turned_coco(root: Path, recorded: dict) -> Path:
    """instances_{train,val}.json over one 6-oriented portrait each, recording ``recorded`` as its size."""
    for split in ("train", "val"):
        _paint_turned(root / split / "p.png", 6)
        notes = [
            {"id": 10 + k, "image_id": 1, "category_id": CATEGORY_IDS[label], "bbox": [x1, y1, x2 - x1, y2 - y1]}
            for k, (label, x1, y1, x2, y2) in enumerate(PORTRAIT[2])
        ]
        _coco_json(
            root / "annotations" / f"instances_{split}.json", [{"id": 1, "file_name": "p.jpg", **recorded}], notes
        )
    return root


@pytest.mark.parametrize(
    "recorded",
    [{"width": 64, "height": 128}, {"width": 128, "height": 64}, {}],
    ids=["displayed-size", "stored-size", "no-size"],
)
def test_coco_sizes_are_of_the_image_as_displayed(recorded, tmp_path):
    data = box_data(_turned_coco(tmp_path, recorded))
    _assert_on_the_portrait(data)
    turned = [w for w in data.warnings if "EXIF" in w]
    if recorded.get("width") == 128:  # the stored size: replaced, and said so with the file and line
        train, valid = (
            f"annotations/instances_{split}.json:{_line(tmp_path / 'annotations' / f'instances_{split}.json', 'p.jpg')}"
            f": image id 1 (images[0])"
            for split in ("train", "val")
        )
        assert turned == [
            f"2 images record their width and height as stored, before their EXIF orientation turns them a quarter "
            f"({train}; {valid}): the displayed size is used, and their boxes are read as drawn on the image as "
            f"displayed (as annotation tools draw them)"
        ]
    else:
        assert turned == []


def test_a_recorded_size_that_is_not_the_images_is_bad(tmp_path):
    path = _turned_coco(tmp_path, {"width": 100, "height": 128}) / "annotations" / "instances_train.json"
    image = tmp_path / "train" / "p.jpg"
    where = f"annotations/instances_train.json:{_line(path, 'p.jpg')}: image id 1 (images[0])"
    reason = (
        f"records width 100 and height 128, but {image} is 64x128 as displayed (stored 128x64, turned by its EXIF "
        f"orientation): its boxes would land in the wrong place; give the image's width and height"
    )
    with pytest.raises(DataError, match=re.escape(f"1 bad annotations: {where}: {reason}")):
        box_data(tmp_path / "annotations" / "instances_train.json")
    root = write_voc(tmp_path / "voc")  # an image without an orientation, its <size> wrong
    xml = root / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<width>128</width>", "<width>100</width>"))
    data = box_data(root, skip_bad=True)
    assert [(b.where, b.reason, b.images, b.boxes) for b in data.skipped] == [
        (
            f"Annotations/a.xml:{_line(xml, '<size>')}: <size>",
            f"records width 100 and height 64, but {root / 'JPEGImages' / 'a.png'} is 128x64: its boxes would land "
            f"in the wrong place; give the image's width and height",
            1,
            2,
        )
    ]


def test_a_voc_size_recorded_before_the_turn_is_replaced_with_a_warning(tmp_path):
    root = write_voc(tmp_path)
    width, height, objects = PORTRAIT
    _paint_turned(root / "JPEGImages" / "p.png", 8)
    (root / "Annotations" / "p.xml").write_text(_voc_xml("p", height, width, objects, filename="p.jpg"))
    with (root / "ImageSets" / "Main" / "train.txt").open("a") as listing:
        listing.write("p\n")
    data = box_data(root)
    sample = _by_name(data.train)["p"]
    assert sample.size == tuple(decode_rgb(sample.path).shape[1:]) == (height, width)
    assert torch.equal(sample.boxes, torch.tensor([o[1:] for o in objects], dtype=torch.float32))
    line = _line(root / "Annotations" / "p.xml", "<size>")
    assert next(w for w in data.warnings if "EXIF" in w).startswith(
        f"1 images record their width and height as stored, before their EXIF orientation turns them a quarter "
        f"(Annotations/p.xml:{line}: <size>): the displayed size is used"
    )


def test_displayed_size_reads_a_png_header_without_decoding(tmp_path):
    _paint(tmp_path / "plain.png", 128, 64, [])
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.open(tmp_path / "plain.png").save(tmp_path / "turned.png", exif=exif)  # an eXIf chunk before the pixels
    for name, size in (("plain.png", (128, 64)), ("turned.png", (64, 128))):
        with Image.open(tmp_path / name) as image:
            assert displayed_size(image) == size == tuple(decode_rgb(tmp_path / name).shape[:0:-1])
            assert image._im is None  # Pillow's PngImageFile.getexif would have decoded the pixels


def test_a_run_reads_every_format_with_the_box_recipe_and_tables_of_images_without(tmp_path):
    from torchgraft.app.boxes import looks_like_boxes
    from torchgraft.app.prepare import input_recipe
    from torchgraft.app.settings import TrainSettings

    coco, yolo, voc = write_coco(tmp_path / "coco"), write_yolo(tmp_path / "yolo"), write_voc(tmp_path / "voc")
    compact = tmp_path / "compact.json"  # a COCO file on one line, as json.dump writes it
    compact.write_text(json.dumps({"images": [], "annotations": [], "categories": []}) + "\n")
    paths = [coco, coco / "annotations", coco / "annotations" / "instances_train.json", yolo, yolo / "data.yaml"]
    for path in [*paths, voc, voc / "Annotations", compact]:
        assert looks_like_boxes(path) and input_recipe(path, TrainSettings()).name == "boxes", path
    rows = tmp_path / "rows.json"  # a JSON-lines table of image paths: one object per line
    rows.write_text("\n".join(json.dumps({"path": f"{n}.png", "label": "x", "images": 1}) for n in "ab") + "\n")
    for path in (rows, coco / "train"):  # a table of images, a folder of images
        assert not looks_like_boxes(path) and input_recipe(path, TrainSettings()).name == "images", path
    assert input_recipe(coco / "train", TrainSettings(task="detect")).name == "boxes"  # --task detect: always
