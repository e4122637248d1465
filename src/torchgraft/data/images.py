"""Reading image files as RGB, whatever they hold: grayscale, palette, alpha, CMYK, 16-bit, EXIF-rotated.

Pillow opens all of these, but ``Image.convert("RGB")`` gets several wrong for training: a 16-bit PNG
(mode ``I;16``/``I``) is clipped to white, transparent pixels keep whatever colour they had under the alpha,
and an EXIF orientation is ignored. :func:`load_rgb` handles each case; :func:`scan_images` checks every
file before training — its header (:func:`check_header`: fast, what Pillow reads before decoding) or a full
decode — so a corrupt file is reported with its path instead of crashing an epoch.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import sys
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from torchgraft.choices import CHECKS

__all__ = [
    "CHECKS",
    "EXIF_ORIENTATION",
    "IMAGE_SUFFIXES",
    "BadImage",
    "check_header",
    "displayed_size",
    "io_processes",
    "load_rgb",
    "scan_images",
    "to_rgb",
    "usable_cores",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BACKGROUND = (255, 255, 255)  # what transparent pixels become
PROCESS_CHECKS = 10_000  # header checks of at least this many files run in processes
_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
EXIF_ORIENTATION = 0x0112  # the EXIF tag; values 5..8 turn the image a quarter (transpose, 90, transverse, 270)
_QUARTER_TURNS = (5, 6, 7, 8)


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
    except _ERRORS as error:
        raise BadImage(path, f"{type(error).__name__}: {error}") from None


def check_header(path: str | Path) -> tuple[int, int, str]:
    """Open the image at ``path`` and verify what Pillow reads without decoding the pixels (the format, size
    and mode; ``Image.verify``: a PNG's chunk checksums); returns ``(width, height, mode)``. About 30x faster
    than :func:`load_rgb`; a file whose pixel data is cut short passes (training replaces it when it fails to
    decode).

    Raises:
        BadImage: the file is missing, not an image, or its header is truncated or empty.
    """
    try:
        with Image.open(path) as image:
            width, height, mode = *image.size, image.mode
            image.verify()
    except _ERRORS as error:
        raise BadImage(path, f"{type(error).__name__}: {error}") from None
    if width < 1 or height < 1:
        raise BadImage(path, f"empty image ({width}x{height})")
    return width, height, mode


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an opened image as displayed — the size of the pixels :func:`load_rgb` and
    :func:`~torchgraft.data.decode.decode_rgb` give, EXIF orientation applied — from its header, no decode:
    ``image.size`` swapped where the orientation tag is 5..8. A PNG's EXIF is taken from the chunks before its
    pixels only (Pillow's ``getexif`` decodes a PNG to look past them). An EXIF block that does not parse
    counts as no orientation.

    Example:
        >>> with Image.open("portrait.jpg") as image:  # stored 4032x3024, EXIF orientation 6
        ...     image.size, displayed_size(image)
        ((4032, 3024), (3024, 4032))
    """
    width, height = image.size
    if image.format == "PNG" and "exif" not in image.info:
        return width, height
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION)
    except (OSError, ValueError, SyntaxError, struct.error):
        return width, height
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def _check_chunk(check: str, chunk: list[str]) -> list[tuple[str, str]]:
    """``(path, reason)`` of each file of ``chunk`` that fails ``check`` (plain tuples: they cross processes)."""
    read = check_header if check == "header" else load_rgb
    failed = []
    for path in chunk:
        try:
            read(path)
        except BadImage as error:
            failed.append((error.path, error.reason))
    return failed


def usable_cores() -> int:
    """The cores this process may run on (``os.sched_getaffinity``, else the CPU count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def io_processes() -> int:
    """Forked processes for work over many small files (header checks, stats): four per core, at most 32.
    Files out of the page cache make it wait on the disk, not the cores, and more requests in flight read
    them faster (99k tiny JPEGs not cached, header check on 2 cores: 12.4 s with 2 processes, 5.6 s with 8;
    cached: 1.5 s either way; measured 2026-12-03)."""
    return min(32, 4 * usable_cores())


def _executor(check: str, count: int, workers: int | None) -> Executor:
    """Threads, or for a large header check forked processes (:func:`io_processes`): Pillow parses headers in
    Python, holding the interpreter lock, while it decodes pixels without it."""
    if check == "header" and count >= PROCESS_CHECKS and usable_cores() > 1 and sys.platform == "linux":
        return ProcessPoolExecutor(workers or io_processes(), mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers or min(8, usable_cores() + 2))


def scan_images(
    paths: Sequence[str | Path], *, check: str = "full", progress: bool = False, workers: int | None = None
) -> list[BadImage]:
    """Check every file once and return the ones that fail, in input order: ``check="full"`` decodes each
    (:func:`load_rgb`, in threads), ``"header"`` reads its header (:func:`check_header`; from
    ``PROCESS_CHECKS`` files on, in forked processes: :func:`io_processes`), ``"none"`` reads nothing (returns
    ``[]``). ``workers``: the threads or processes (default: the CPU count + 2, at most 8, or
    :func:`io_processes`).

    Example:
        >>> bad = scan_images(["cat.jpg", "truncated.png"])
        >>> [b.path for b in bad]
        ['truncated.png']
    """
    if check not in CHECKS:
        raise ValueError(f"scan_images: check={check!r}; choose from {', '.join(CHECKS)}.")
    if check == "none" or not paths:
        return []
    size = 1024 if check == "header" else 16  # one task per file costs more than a header check
    chunks = [[str(p) for p in paths[i : i + size]] for i in range(0, len(paths), size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), desc=f"checking images ({check})", unit="img", leave=False, mininterval=0.5)
    bad: list[BadImage] = []
    with _executor(check, len(paths), workers) as pool:
        for chunk, failed in zip(chunks, pool.map(partial(_check_chunk, check), chunks), strict=True):
            bad += [BadImage(path, reason) for path, reason in failed]
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return bad
