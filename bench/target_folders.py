"""ImageFolders of real images for the fine-tuning benchmarks: ``train/`` and ``valid/``, one sub-folder per class.

- ``fashion``: Fashion-MNIST (Debian's ``dataset-fashion-mnist``, MIT), 2,000 train / 1,000 valid, 28x28 gray.
- ``digits``: scikit-learn's handwritten digits (UCI, 1,797 images, 8x8 gray, 17 levels), stratified 2:1 split.
- ``lfw``: scikit-image's ``lfw_subset`` (100 faces, 100 non-faces, 25x25 gray), stratified 7:3 split.

PNGs at their published size; each tool resizes them itself. Folders are rebuilt only when incomplete.

Run: python bench/target_folders.py OUT_DIR
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from fashion_folder import make_folder as make_fashion

ROOT = Path(tempfile.gettempdir()) / "torchgraft-targets"


def _write(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str], valid_fraction: float) -> Path:
    """Stratified split (fixed seed): the first ``valid_fraction`` of each class's shuffled indices go to valid."""
    if len(list(root.glob("*/*/*.png"))) == len(images):
        return root
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        indices = rng.permutation(np.flatnonzero(labels == label))
        n_valid = round(len(indices) * valid_fraction)
        for rank, index in enumerate(indices):
            target = root / ("valid" if rank < n_valid else "train") / name / f"{index:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index], mode="L").save(target)
    return root


def make_digits(root: Path) -> Path:
    """scikit-learn digits, 16 gray levels scaled to 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images * (255 / 16)).round().astype(np.uint8)
    return _write(root, images, bunch.target, [f"digit_{d}" for d in range(10)], 1 / 3)


def make_lfw(root: Path) -> Path:
    """scikit-image lfw_subset: the first 100 images are faces, the last 100 are not."""
    from skimage.data import lfw_subset

    images = (lfw_subset() * 255).round().astype(np.uint8)
    labels = np.array([0] * 100 + [1] * 100)
    return _write(root, images, labels, ["face", "not_face"], 0.3)


BUILDERS = {"fashion": make_fashion, "digits": make_digits, "lfw": make_lfw}


def make_target(name: str, root: Path = ROOT) -> Path:
    """Build (if needed) and return the folder of target ``name`` under ``root``."""
    return BUILDERS[name](root / name)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for target in BUILDERS:
        print(make_target(target, out))
