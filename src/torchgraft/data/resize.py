"""The antialiased resize that validation, prediction and an exported graph share, reproducible anywhere.

torchvision's uint8 resize is not one computation: with AVX2 it runs torch's fixed-point uint8 kernel (int16
weights, rounding after each pass), elsewhere (no AVX2, GPU) a float kernel rounded once — 15% of the pixels
of a photo differ by one level between the two — and Pillow's resize is a third (other fixed-point weights;
its bicubic another filter). :func:`resize_image` is one definition instead: the uint8 image in float32,
torch's float antialiased kernel (``F.interpolate(antialias=True)``; the weights of Pillow's filters: a
triangle for bilinear, Keys' cubic with a = -0.5 for bicubic, widened by the scale when reducing),
clamped and scaled to [0, 1] — not rounded to uint8, since two correct float sums round a value on a half
level (an averaged plateau, often) to different levels. :func:`resize_matrices` gives the same weights as
two matrices built from the image's size with plain tensor operations, so an exported ONNX or
``torch.export`` graph resizes images of any size exactly as validation did (to float rounding; tests
compare the two on odd sizes, reducing and enlarging).

The sizes follow torchvision: :func:`shorter_side_size` (``Resize(int)``) and :func:`center_crop_origin`
(``CenterCrop``), written with integer operations only, so that they also hold for symbolic sizes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

__all__ = [
    "INTERPOLATIONS",
    "ExactResize",
    "center_crop_origin",
    "resize_image",
    "resize_matrices",
    "shorter_side_size",
]

INTERPOLATIONS = ("bilinear", "bicubic")
_TAPS = {"bilinear": 2, "bicubic": 4}  # the filter's width at scale 1 (torch's ``interp_size``)


def shorter_side_size(height: Any, width: Any, shorter: int) -> tuple[Any, Any]:
    """``(height, width)`` scaled so that the shorter side is ``shorter`` (torchvision's ``Resize(shorter)``:
    the longer side is ``int(shorter * long / short)``, the same as the integer floor division used here)."""
    short = torch.sym_min(height, width)
    return shorter * height // short, shorter * width // short


def center_crop_origin(height: Any, width: Any, crop: int) -> tuple[Any, Any]:
    """Top and left of torchvision's ``CenterCrop(crop)``: ``int(round((side - crop) / 2))``, Python's round
    (half to even) written with integers: an odd margin ``2k + 1`` starts at ``k`` if ``k`` is even, else ``k + 1``."""

    def origin(side: Any) -> Any:
        margin = side - crop
        half = margin // 2
        return half + (margin % 2) * (half % 2)

    return origin(height), origin(width)


def resize_image(image: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """uint8 ``(..., 3, H, W)`` -> float32 ``(..., 3, *size)`` in [0, 1]: torch's float antialiased kernel,
    clamped to 0..255 (a cubic overshoots), divided by 255. Not rounded to uint8: where a resized value falls
    on a half level (a plateau averaged, often), two correct float sums round it to different levels.

    Example:
        >>> resize_image(torch.zeros(3, 375, 500, dtype=torch.uint8), (232, 309)).shape
        torch.Size([3, 232, 309])
    """
    _check(interpolation)
    flat = image.reshape(-1, *image.shape[-3:]).to(torch.float32)
    if tuple(image.shape[-2:]) != tuple(size):
        flat = F.interpolate(flat, size=size, mode=interpolation, antialias=True, align_corners=False)
    return (flat.clamp_(0, 255) / 255.0).reshape(*image.shape[:-2], *size)


def _axis_weights(
    length: Any, target: Any, interpolation: str, start: Any = 0, count: int | None = None
) -> torch.Tensor:
    """``(target, length)`` float32 weights of one axis, computed as torch's CPU kernel computes them
    (``_compute_indices_min_size_weights_aa``, in its float32/double mix: a float32 centre of output ``i`` at
    ``scale * (i + 0.5)`` is ~100 float32 steps off for large images, and copying that keeps the two within
    float rounding): the filter widened by ``scale`` when reducing, each row normalised to sum 1. Built from
    ``arange``: ``length`` and ``target`` may be symbolic. ``start``/``count``: only outputs ``start`` to
    ``start + count`` (a crop: the rows have a fixed count even when ``start`` is symbolic)."""
    taps = _TAPS[interpolation]
    outputs = torch.arange(target if count is None else count, dtype=torch.float64) + start
    inputs = torch.arange(length, dtype=torch.float32)
    scale = (inputs.new_ones(()) * length) / (inputs.new_ones(()) * target)  # float32 in / out
    reducing = scale >= 1.0
    wide = scale.double()
    support = torch.where(reducing, wide * (taps * 0.5), wide.new_full((), taps * 0.5)).float()
    inverse = torch.where(reducing, 1.0 / wide, wide.new_ones(())).float()
    centres = (wide * (outputs + 0.5)).float()  # float32, as the kernel stores it
    offsets = inputs[None, :] - centres[:, None]  # int index - float centre: float32
    x = ((offsets.double() + 0.5) * inverse.double()).float().abs()
    if interpolation == "bilinear":
        weights = (1.0 - x).clamp(min=0.0)
    else:  # Keys' cubic convolution, a = -0.5 (what torch and Pillow use when antialiasing)
        a = -0.5
        near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
        weights = torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))
    # the kernel's window [xmin, xmin + xsize): outside it the filter is 0 (bilinear; bicubic beyond 2)
    lower = ((centres - support).double() + 0.5).clamp(min=0.0).floor()
    upper = ((centres + support).double() + 0.5).floor()
    index = inputs.double()[None, :]
    inside = (index >= lower[:, None]) & (index < upper[:, None])
    weights = torch.where(inside, weights, torch.zeros_like(weights))
    total = weights.sum(dim=1, keepdim=True)
    return torch.where(total != 0, weights / total, torch.zeros_like(weights))


def resize_matrices(
    height: Any, width: Any, size: tuple[Any, Any], interpolation: str, *, crop: int | None = None
) -> tuple[torch.Tensor, ...]:
    """The rows ``(size[0], height)`` and columns ``(size[1], width)`` matrices of :func:`resize_image`:
    ``rows @ image @ columns.T`` is its result times 255, before clamping (sizes may be symbolic). ``crop``:
    only the rows and columns of torchvision's centre crop, ``(crop, height)`` and ``(crop, width)``."""
    _check(interpolation)
    if crop is None:
        return _axis_weights(height, size[0], interpolation), _axis_weights(width, size[1], interpolation)
    top, left = center_crop_origin(size[0], size[1], crop)
    return (
        _axis_weights(height, size[0], interpolation, top, crop),
        _axis_weights(width, size[1], interpolation, left, crop),
    )


class ExactResize:
    """A pipeline step: uint8 ``(3, H, W)`` image -> float ``(3, h, w)`` in [0, 1] by :func:`resize_image`, to the
    shorter side ``size`` (an int) or to ``(h, w)``; the ``repr`` names it (the feature cache keys on it)."""

    def __init__(self, size: int | tuple[int, int], interpolation: str = "bilinear") -> None:
        _check(interpolation)
        self.size, self.interpolation = size, interpolation

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        size = self.size
        target = shorter_side_size(int(height), int(width), size) if isinstance(size, int) else size
        return resize_image(image.as_subclass(torch.Tensor), (int(target[0]), int(target[1])), self.interpolation)

    def __repr__(self) -> str:
        return f"ExactResize(size={self.size}, interpolation={self.interpolation}, antialias=float32)"


def _check(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"resize: interpolation {interpolation!r}; choose from {list(INTERPOLATIONS)}.")
