"""Decoding image files straight to uint8 ``(3, H, W)`` RGB tensors, the input of the v2 pipelines.

JPEGs and plain PNGs (8-bit or less, gray or RGB, or a palette without transparency) — what photo datasets
hold — are decoded by ``torchvision.io`` (libjpeg-turbo, libpng) with the EXIF orientation applied: no PIL
image is made, no copy from one to the other. Everything the tensor decoder cannot read or reads differently
from :func:`~torchgraft.data.images.load_rgb` — CMYK JPEGs, 16-bit PNGs, alpha and palette transparency
(composited on white), GIF, TIFF, BMP, WebP, PPM, a file torchvision refuses — goes through ``load_rgb``,
so both paths give the same pixels (tests compare them file by file). Both return ``(3, H, W)`` views of
``(H, W, 3)`` memory, the layout in which torch's uint8 antialiased resize is fastest (about 3x faster than
on a contiguous ``(3, H, W)`` tensor).

torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; TorchCodec 0.17 does not apply EXIF
orientation, so torchvision's stay here until it does (:func:`_tensor_decode` is the one place to change).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_jpeg, decode_png
from torchvision.transforms.v2.functional import pil_to_tensor

from torchgraft.data.images import BadImage, load_rgb

__all__ = ["decode_bytes", "decode_rgb"]

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_GRAY, _PNG_RGB, _PNG_PALETTE = 0, 2, 3  # IHDR colour types without an alpha channel


def decode_rgb(path: str | Path) -> torch.Tensor:
    """The image at ``path`` as a uint8 ``(3, H, W)`` RGB tensor: the pixels of
    :func:`~torchgraft.data.images.load_rgb` (EXIF orientation applied, gray expanded to three channels,
    alpha composited on white, CMYK converted, 16-bit scaled), decoded without PIL where torchvision can.

    Raises:
        BadImage: the file is missing, truncated, or not an image either decoder can read.

    Example:
        >>> decode_rgb("cat.jpg").shape, decode_rgb("cat.jpg").dtype
        (torch.Size([3, 375, 500]), torch.uint8)
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise BadImage(path, f"{type(error).__name__}: {error}") from None
    image = _tensor_decode(data)
    return image if image is not None else pil_to_tensor(load_rgb(path))  # (3, H, W) over HWC memory too


def decode_bytes(data: bytes, *, name: str = "image") -> torch.Tensor:
    """An encoded image held in memory (a shard's or a dataset's bytes) as :func:`decode_rgb` decodes a file:
    a uint8 ``(3, H, W)`` RGB tensor, by torchvision where it can, else by PIL.

    Raises:
        BadImage: the bytes are not an image either decoder can read (``name`` says which sample).

    Example:
        >>> decode_bytes(Path("cat.jpg").read_bytes(), name="shard-0.tar:cat").shape
        torch.Size([3, 375, 500])
    """
    image = _tensor_decode(data)
    if image is not None:
        return image
    try:
        return pil_to_tensor(load_rgb(io.BytesIO(data)))  # type: ignore[arg-type]  # PIL opens file objects too
    except BadImage as error:
        raise BadImage(name, error.reason) from None


def _tensor_decode(data: bytes) -> torch.Tensor | None:
    """``data`` decoded by torchvision as ``(3, H, W)`` uint8, or ``None`` where PIL must decide (a format,
    mode or file the tensor decoder does not read as ``load_rgb`` does)."""
    if data.startswith(_JPEG):
        decode, mode = decode_jpeg, ImageReadMode.UNCHANGED  # UNCHANGED: a CMYK file shows as 4 channels
    elif data.startswith(_PNG) and _plain_png(data):
        decode, mode = decode_png, ImageReadMode.RGB
    else:
        return None
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29: "use TorchCodec"
            image = decode(encoded, mode=mode, apply_exif_orientation=True)
    except RuntimeError:
        return None  # truncated or odd: load_rgb reads it or names the error
    if image.dtype != torch.uint8 or image.shape[0] not in (1, 3):
        return None
    return _over_hwc(image.expand(3, -1, -1))  # gray: three equal channels


def _over_hwc(image: torch.Tensor) -> torch.Tensor:
    """``image`` ``(3, H, W)`` as a view of ``(H, W, 3)`` memory (copied only if it is not: gray expanded, or
    transposed by an EXIF orientation)."""
    pixels = image.permute(1, 2, 0)
    return image if pixels.is_contiguous() else pixels.contiguous().permute(2, 0, 1)


def _plain_png(data: bytes) -> bool:
    """Whether a PNG is at most 8-bit gray or RGB, or a palette without a ``tRNS`` (transparency) chunk."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return False
    depth, colour = data[24], data[25]
    if depth > 8 or colour not in (_PNG_GRAY, _PNG_RGB, _PNG_PALETTE):
        return False
    return colour != _PNG_PALETTE or not _has_chunk(data, b"tRNS")


def _has_chunk(data: bytes, kind: bytes) -> bool:
    """Whether the PNG ``data`` holds a chunk ``kind`` before its image data."""
    position = 8
    while position + 8 <= len(data):
        length, name = int.from_bytes(data[position : position + 4], "big"), data[position + 4 : position + 8]
        if name == kind:
            return True
        if name == b"IDAT":
            return False
        position += 12 + length  # length, name, body, CRC
    return False
