"""Scenes of real Fashion-MNIST items for the multi-label and regression benchmarks.

Each scene is a 56x56 gray canvas cut into a 2x2 grid; every cell holds a random Fashion-MNIST item with
probability 1/2 (at least one per scene). ``tags.csv``: ``path,tags,split`` with the items' classes joined by
``;`` (multi-label); ``coverage.csv``: ``path,coverage,split`` with the fraction of the canvas the items
cover (pixels above 30 of 255; regression). Train scenes use items of Fashion-MNIST's training set, valid
scenes items of its test set (Debian's ``dataset-fashion-mnist``). Built once under the temp folder.

Run: python bench/scene_data.py [OUT_DIR]
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from fashion_folder import CLASSES, read_idx

ROOT = Path(tempfile.gettempdir()) / "torchgraft-scenes"


def _scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    canvas = np.zeros((56, 56), dtype=np.uint8)
    cells = [c for c in range(4) if rng.random() < 0.5] or [int(rng.integers(4))]
    tags = set()
    for cell in cells:
        index = int(rng.integers(len(images)))
        row, col = divmod(cell, 2)
        canvas[row * 28 : row * 28 + 28, col * 28 : col * 28 + 28] = images[index]
        tags.add(CLASSES[labels[index]])
    return canvas, sorted(tags)


def make_scenes(root: Path = ROOT, *, n_train: int = 2000, n_valid: int = 500) -> Path:
    """Write the scenes and both CSVs under ``root`` (kept when complete)."""
    if (root / "coverage.csv").is_file() and len(list((root / "img").glob("*.png"))) == n_train + n_valid:
        return root
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tags_rows, coverage_rows = [["path", "tags", "split"]], [["path", "coverage", "split"]]
    for split, (images, labels), count in (("train", read_idx("train"), n_train), ("valid", read_idx("t10k"), n_valid)):
        for n in range(count):
            canvas, tags = _scene(rng, images, labels)
            name = f"img/{split}_{n:04d}.png"
            Image.fromarray(canvas, mode="L").save(root / name)
            tags_rows.append([name, ";".join(tags), split])
            coverage_rows.append([name, f"{(canvas > 30).mean():.4f}", split])
    for file, rows in (("tags.csv", tags_rows), ("coverage.csv", coverage_rows)):
        with (root / file).open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    return root


if __name__ == "__main__":
    print(make_scenes(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT))
