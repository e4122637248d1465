"""A segmentation dataset made from the packaged Fashion-MNIST items: scenes of several garments on a textured
canvas, each with its pixel mask (0 background, 1..10 the garment classes), written as ``images/*.jpg`` and
``masks/*.png`` (index PNGs) under ``train/`` and ``valid/`` with a ``classes.txt`` — the layout
``torchgraft train DATA --task segment`` reads. Training scenes use the 2,000 training items, validation scenes
the 500 others, so no garment is seen in both.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SCENE_CLASSES", "write_scenes"]

SCENE_CLASSES = (
    "background",
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
_INK = 30  # an item's pixels brighter than this (of 255) belong to it


def _items() -> dict[str, np.ndarray]:
    with resources.files(__package__).joinpath("fashion_mnist.npz").open("rb") as handle:
        return dict(np.load(handle, allow_pickle=False))


def _canvas(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: two colours blended by smooth noise, with stripes of random angle and period."""
    coarse = rng.random((size // 16 + 2, size // 16 + 2))
    blend = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)) / 255.0
    low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    base = low[None, None] * (1 - blend[..., None]) + high[None, None] * blend[..., None]
    y, x = np.mgrid[0:size, 0:size]
    angle, period = rng.random() * np.pi, rng.uniform(4, 14)
    stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)[..., None]
    return np.clip(base + 25 * stripes + rng.normal(0, 8, (size, size, 3)), 0, 255)


def _scene(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    canvas, mask = _canvas(rng, size), np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        index = int(rng.integers(len(images)))
        side = int(rng.integers(size // 3, 2 * size // 3 + 1))
        item = np.asarray(Image.fromarray(images[index]).resize((side, side), Image.BILINEAR)).astype(np.float64)
        top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
        ink = item > _INK
        colour = rng.integers(0, 256, 3)
        region = canvas[top : top + side, left : left + side]
        shade = (item[..., None] / 255.0) * colour[None, None] * 0.6 + item[..., None] * 0.4
        region[ink] = shade[ink]
        mask[top : top + side, left : left + side][ink] = labels[index] + 1
    return canvas.round().astype(np.uint8), mask


def write_scenes(root: str | Path, *, n_train: int = 320, n_valid: int = 80, size: int = 96, seed: int = 0) -> Path:
    """Write ``n_train`` + ``n_valid`` scenes of ``size`` x ``size`` pixels under ``root`` and return it (kept
    as they are when a complete set is already there).

    Example:
        >>> data = segmentation_data(write_scenes("scenes"))
        >>> data.summary()
        'segment: 11 classes, 320 train / 80 valid pairs'
    """
    root = Path(root)
    counts = {"train": n_train, "valid": n_valid}
    if all(len(list((root / s / "masks").glob("*.png"))) == n for s, n in counts.items()):
        return root
    arrays, rng = _items(), np.random.default_rng(seed)
    for split, count in counts.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for n in range(count):
            image, mask = _scene(rng, arrays[f"{split}_images"], arrays[f"{split}_labels"], size)
            Image.fromarray(image).save(root / split / "images" / f"{n:04d}.jpg", quality=92)
            Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{n:04d}.png")
    (root / "classes.txt").write_text("\n".join(SCENE_CLASSES) + "\n")
    return root
