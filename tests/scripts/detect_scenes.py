"""A fixed set of detections and ground truth (:func:`fixed_set`), and a small real detection target on disk:
crops of scikit-image photos (the cat of ``chelsea``, the cup of ``coffee``, the astronaut's face) pasted at random
sizes onto its textures (``grass``, ``brick``, ``gravel``), with exact boxes, written as a COCO JSON file per split
(every fifth image without objects), and a tiny torchvision Faster R-CNN (:func:`tiny_faster_rcnn`). Used by
tests/tasks/test_detect*.py and tests/scripts/ddp_detect.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

CLASSES = ["cat", "cup", "astronaut"]


def _objects() -> list[np.ndarray]:
    from skimage import data

    return [data.chelsea()[40:260, 120:340], data.coffee()[40:320, 180:480], data.astronaut()[20:220, 140:300]]


def _backgrounds() -> list[np.ndarray]:
    from skimage import data

    return [np.stack([texture()] * 3, -1) for texture in (data.grass, data.brick, data.gravel)]


def write_scenes(
    root: Path, *, train: int = 16, valid: int = 8, size: tuple[int, int] = (96, 128), seed: int = 0
) -> Path:
    """``root/images/*.png`` and ``root/annotations/instances_{train,val}.json``; returns the annotations
    folder (what :func:`torchgraft.data.boxes.box_data` reads). Images are ``size`` ``(H, W)``, 1-3 objects of
    20-44 px each (none in every fifth), at places drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    objects, backgrounds = _objects(), _backgrounds()
    height, width = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    for split, count in (("train", train), ("val", valid)):
        images, annotations = [], []
        for k in range(count):
            name = f"{split}_{k:03d}.png"
            texture = backgrounds[k % len(backgrounds)]
            y0, x0 = rng.integers(0, texture.shape[0] - height), rng.integers(0, texture.shape[1] - width)
            canvas = texture[y0 : y0 + height, x0 : x0 + width].copy()
            for _ in range(0 if k % 5 == 4 else int(rng.integers(1, 4))):
                label = int(rng.integers(0, len(CLASSES)))
                side = int(rng.integers(20, 45))
                crop = np.asarray(Image.fromarray(objects[label]).resize((side, side), Image.BILINEAR))
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
    return root / "annotations"


def tiny_faster_rcnn(classes: int = len(CLASSES)) -> Any:
    """torchvision's Faster R-CNN (its RPN, RoI heads, losses and post-processing) on a 3-layer convolutional
    backbone, at 96-128 px: the real detector, trained in seconds on a CPU. ``classes`` + 1 outputs (label 0 is
    the background)."""
    from torch import nn
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    backbone = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
    )  # fmt: skip
    backbone.out_channels = 32  # type: ignore[assignment]
    return FasterRCNN(
        backbone,
        num_classes=classes + 1,
        min_size=96,
        max_size=128,
        rpn_anchor_generator=AnchorGenerator(((16, 32, 48),), ((1.0,),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=64,
    )


def fixed_set(images: int = 24, seed: int = 7) -> tuple[list[dict], list[dict]]:
    """Deterministic detections and ground truth: 0-4 objects per image of classes 0-2 (every 5th image
    empty), detections jittered around them (some wrong class, some missed) plus spurious ones, at sizes from
    small to large."""
    generator = torch.Generator().manual_seed(seed)
    detections, targets = [], []
    for i in range(images):
        n = 0 if i % 5 == 0 else int(torch.randint(1, 5, (), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * 300
        wh = 8 + torch.rand(n, 2, generator=generator) * 150
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, 3, (n,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels})
        kept = torch.rand(n, generator=generator) > 0.2  # some objects missed
        jitter = (torch.rand(n, 4, generator=generator) - 0.5) * wh.repeat(1, 2) * 0.4
        found = (boxes + jitter)[kept]
        found_labels = torch.where(torch.rand(n, generator=generator) < 0.15, (labels + 1) % 3, labels)[kept]
        extra = int(torch.randint(0, 3, (), generator=generator))
        xy2 = torch.rand(extra, 2, generator=generator) * 300
        spurious = torch.cat([xy2, xy2 + 10 + torch.rand(extra, 2, generator=generator) * 80], 1)
        scores = torch.rand(len(found) + extra, generator=generator)
        detections.append(
            {
                "boxes": torch.cat([found, spurious]),
                "scores": scores,
                "labels": torch.cat([found_labels, torch.randint(0, 3, (extra,), generator=generator)]),
            }
        )
    return detections, targets
