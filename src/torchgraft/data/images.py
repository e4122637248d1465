"""Reading image files as RGB, whatever they hold: grayscale, palette, alpha, CMYK, 16-bit, EXIF-rotated.

Pillow opens all of these, but ``Image.convert("RGB")`` gets several wrong for training: a 16-bit PNG
(mode ``I;16``/``I``) is clipped to white, transparent pixels keep whatever colour they had under the alpha,
and an EXIF orientation is ignored. :func:`load_rgb` handles each case; :func:`scan_images` decodes every
file once before training, so a corrupt file is reported with its path instead of crashing an epoch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["IMAGE_SUFFIXES", "BadImage", "load_rgb", "scan_images", "to_rgb"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BACKGROUND = (255, 255, 255)  # what transparent pixels become


class BadImage(ValueError):
    """An image file that cannot be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def _high_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit (``I;16*``), 32-bit integer (``I``) and float (``F``) grayscale to 8-bit ``L``, keeping contrast."""
    array = np.asarray(image)
    if image.mode == "F":
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 255.0 / max(float(array.max()), 1e-12)
        return Image.fromarray(np.clip(array * scale, 0, 255).round().astype(np.uint8))
    top = 255 if array.max(initial=0) <= 255 else 65535  # 8-bit data stored in an I image, or real 16-bit
    return Image.fromarray((array.astype(np.float64) * (255 / top)).round().clip(0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: alpha composited on white, palettes expanded, CMYK converted, 16-bit scaled."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(canvas, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def load_rgb(path: str | Path) -> Image.Image:
    """Decode the image at ``path`` fully and return it as 8-bit RGB (see :func:`to_rgb`).

    Raises:
        BadImage: the file is missing, truncated, or not an image Pillow can decode.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadImage(path, f"{type(error).__name__}: {error}") from None


def _check(path: str) -> BadImage | None:
    try:
        load_rgb(path)
    except BadImage as error:
        return error
    return None


def scan_images(paths: Sequence[str | Path], *, progress: bool = False, workers: int | None = None) -> list[BadImage]:
    """Decode every file once (in threads) and return the ones that fail, in input order.

    Example:
        >>> bad = scan_images(["cat.jpg", "truncated.png"])
        >>> [b.path for b in bad]
        ['truncated.png']
    """
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    results: Iterable[BadImage | None]
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(_check, [str(p) for p in paths], chunksize=16)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(paths), desc="checking images", unit="img", leave=False)
        return [bad for bad in results if bad is not None]
