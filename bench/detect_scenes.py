"""Detection scenes with exact boxes for bench/detect.py, from offline material only.

An extended copy of tests/scripts/detect_scenes.py (bench never imports from tests/): crops of scikit-image
photos (the cat of ``chelsea``, the cup of ``coffee``, the astronaut's face) pasted at random sizes onto its
textures (``grass``, ``brick``, ``gravel``), with exact boxes, written as a COCO JSON file per split (every
fifth image without objects). Here the object count and the object sides are parameters, so targets can differ
in crowding and object scale as well as image size and amount of data.

Run: python bench/detect_scenes.py OUT_DIR [TRAIN VALID]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["cat", "cup", "astronaut"]


def _objects() -> list[np.ndarray]:
    from skimage import data

    return [data.chelsea()[40:260, 120:340], data.coffee()[40:320, 180:480], data.astronaut()[20:220, 140:300]]


def _backgrounds() -> list[np.ndarray]:
    from skimage import data

    return [np.stack([texture()] * 3, -1) for texture in (data.grass, data.brick, data.gravel)]


def write_scenes(
    root: Path,
    *,
    train: int = 16,
    valid: int = 8,
    size: tuple[int, int] = (96, 128),
    objects: tuple[int, int] = (1, 3),
    sides: tuple[int, int] = (20, 44),
    seed: int = 0,
) -> Path:
    """``root/images/*.png`` and ``root/annotations/instances_{train,val}.json``; returns the annotations
    folder (what :func:`torchgraft.data.boxes.box_data` and ``torchgraft train`` read). Images are ``size``
    ``(H, W)`` crops of a texture, with ``objects`` (inclusive range) objects of ``sides`` (inclusive range) px
    each, square, none in every fifth image, at places drawn from ``seed``. Written again only when ``root``
    does not already hold these very scenes."""
    recipe = {"train": train, "valid": valid, "size": list(size), "objects": list(objects), "sides": list(sides),
              "seed": seed}  # fmt: skip
    stamp = root / "scenes.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe:
        return root / "annotations"
    height, width = size
    if sides[1] >= min(height, width):
        raise ValueError(f"detect_scenes: objects of up to {sides[1]} px do not fit in {height}x{width} images.")
    rng = np.random.default_rng(seed)
    crops, backgrounds = _objects(), _backgrounds()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    for split, count in (("train", train), ("val", valid)):
        images, annotations = [], []
        for k in range(count):
            name = f"{split}_{k:04d}.png"
            texture = backgrounds[k % len(backgrounds)]
            y0, x0 = rng.integers(0, texture.shape[0] - height), rng.integers(0, texture.shape[1] - width)
            canvas = texture[y0 : y0 + height, x0 : x0 + width].copy()
            for _ in range(0 if k % 5 == 4 else int(rng.integers(objects[0], objects[1] + 1))):
                label = int(rng.integers(0, len(CLASSES)))
                side = int(rng.integers(sides[0], sides[1] + 1))
                crop = np.asarray(Image.fromarray(crops[label]).resize((side, side), Image.BILINEAR))
                x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
                canvas[y : y + side, x : x + side] = crop  # later objects may cover part of earlier ones
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": k + 1, "category_id": label + 1,
                     "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0}
                )  # fmt: skip
            Image.fromarray(canvas).save(root / "images" / name)
            images.append({"id": k + 1, "file_name": name, "width": width, "height": height})
        document = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    stamp.write_text(json.dumps(recipe))
    return root / "annotations"


if __name__ == "__main__":
    counts = [int(v) for v in sys.argv[2:4]] or [16, 8]
    print(write_scenes(Path(sys.argv[1]), train=counts[0], valid=counts[1]))
