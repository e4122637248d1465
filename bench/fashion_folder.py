"""Write a Fashion-MNIST ImageFolder of real PNGs from Debian's ``dataset-fashion-mnist`` (MIT licence).

``train/`` holds the first N of the 60,000 training images, ``valid/`` the first M of the 10,000 test images, one
sub-folder per class, 28x28 grayscale PNGs as published. Used by the fine-tuning benchmark.

Run: python bench/fashion_folder.py OUT_DIR [--train 2000] [--valid 1000]
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def read_idx(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 28, 28) uint8 and labels (n,) of ``split`` ("train" or "t10k")."""
    if not SOURCE.is_dir():
        raise SystemExit(f"{SOURCE} not found: apt-get install dataset-fashion-mnist")
    with gzip.open(SOURCE / f"{split}-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read()[16:], dtype=np.uint8).reshape(-1, 28, 28)
    with gzip.open(SOURCE / f"{split}-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read()[8:], dtype=np.uint8)
    return images, labels


def make_folder(root: str | Path, *, n_train: int = 2000, n_valid: int = 1000) -> Path:
    """Write the folder (skipped when it already holds the expected number of PNGs); returns ``root``."""
    root = Path(root)
    if len(list(root.glob("*/*/*.png"))) == n_train + n_valid:
        return root
    for folder, split, count in (("train", "train", n_train), ("valid", "t10k", n_valid)):
        images, labels = read_idx(split)
        for i in range(count):
            target = root / folder / CLASSES[labels[i]] / f"{i:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(target)
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--valid", type=int, default=1000)
    args = parser.parse_args()
    print(make_folder(args.out, n_train=args.train, n_valid=args.valid))
