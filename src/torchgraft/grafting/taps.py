"""Multi-scale features of any pretrained backbone, found by a dry run.

:func:`find_taps` runs the network once on the meta device and keeps, for each spatial stride (2, 4, 8, 16,
32, ...), the output of the module that finishes *last* at that stride — the end of each stage — whatever
the layout: ``(N, C, H, W)`` (CNNs), ``(N, H, W, C)`` (channels-last stages: timm Swin, ConvNeXt's norms) or
``(N, L, C)`` tokens (ViT, DeiT, DINO: the patch grid after the class/register tokens). Nothing is listed
per family; channel counts and sizes come from the shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from torchgraft.grafting.dryrun import Trace

__all__ = ["Tap", "find_taps"]

_MAX_PREFIX = 8  # class, distillation and register tokens before a token grid


@dataclass(frozen=True)
class Tap:
    """A multi-scale feature: the output of ``name`` (a module of the source network).

    Attributes:
        name: dotted module name.
        stride: input size / feature size.
        channels: feature channels.
        layout: ``"nchw"``, ``"nhwc"`` or ``"nlc"`` (tokens).
        prefix: leading tokens before the grid (``"nlc"`` only: class / register tokens).
    """

    name: str
    stride: int
    channels: int
    layout: str
    prefix: int = 0


def _stride(size: int, extent: int) -> int | None:
    """The power-of-two stride that maps an input of ``size`` to ``extent`` (valid convolutions make it
    inexact: Inception's 299 px give 35, 17, 8), or ``None`` for a global (1 px) or fixed-size output."""
    if extent < 2 or extent >= size:
        return None
    ratio = size / extent
    stride = 2 ** round(math.log2(ratio))
    return stride if 2 <= stride <= 64 and 0.8 <= ratio / stride <= 1.25 else None


def _as_tap(name: str, shape: torch.Size, height: int, width: int) -> Tap | None:
    if len(shape) == 4:
        channels_first = _stride(height, shape[2]), _stride(width, shape[3])
        if channels_first[0] is not None and channels_first[0] == channels_first[1]:
            return Tap(name, channels_first[0], int(shape[1]), "nchw")
        channels_last = _stride(height, shape[1]), _stride(width, shape[2])
        if channels_last[0] is not None and channels_last[0] == channels_last[1]:
            return Tap(name, channels_last[0], int(shape[3]), "nhwc")
        return None
    if len(shape) == 3:
        for stride in (4, 8, 14, 16, 32):
            grid = (height // stride) * (width // stride)
            if grid > 1 and 0 <= shape[1] - grid <= _MAX_PREFIX:
                return Tap(name, stride, int(shape[2]), "nlc", int(shape[1] - grid))
    return None


_GENERIC = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NOT_FEATURES = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)  # fixed size, copies


def _inside_a_resampling_block(name: str, modules: dict[str, nn.Module], strides: dict[str, int | None]) -> bool:
    """Whether ``name`` lies inside a block (not a plain container, not the root) whose own output has
    another stride: the expansion convolution of a block that downsamples is not a stage's output."""
    parts = name.split(".")
    own = strides.get(name)
    for depth in range(1, len(parts)):
        ancestor = ".".join(parts[:depth])
        if ancestor in strides and not isinstance(modules[ancestor], _GENERIC) and strides[ancestor] != own:
            return True
    return False


def find_taps(run: Trace, input_size: Sequence[int], *, before: int | None = None) -> list[Tap]:
    """The last module output at each spatial stride in the dry run ``run`` (input ``(C, H, W)``), ordered
    from the finest stride to the coarsest; only calls that start before call number ``before`` (the old
    classifier) count. Outputs of fixed size (adaptive pooling) and the insides of blocks that change the
    resolution are left out. Empty when the network has no spatial features.

    Example:
        >>> [(t.name, t.stride, t.channels) for t in find_taps(trace(resnet50(), (3, 224, 224)), (3, 224, 224))]
        [('relu', 2, 64), ('layer1', 4, 256), ('layer2', 8, 512), ('layer3', 16, 1024), ('layer4', 32, 2048)]
    """
    height, width = int(input_size[-2]), int(input_size[-1])
    candidates = {}
    for call in run.calls:
        if not call.name or not isinstance(call.main_shape, torch.Size) or isinstance(call.module, _NOT_FEATURES):
            continue
        if before is not None and call.start >= before:
            continue
        tap = _as_tap(call.name, call.main_shape, height, width)
        candidates[call.name] = (call, tap)
    modules = {name: call.module for name, (call, _) in candidates.items()}
    strides = {name: (tap.stride if tap else None) for name, (_, tap) in candidates.items()}
    last: dict[int, tuple[int, Tap]] = {}
    for name, (call, tap) in candidates.items():
        if tap is None or _inside_a_resampling_block(name, modules, strides):
            continue
        if tap.stride not in last or call.finish > last[tap.stride][0]:
            last[tap.stride] = (call.finish, tap)
    # a coarser stride must come later in the network: drop taps that finish before a finer one (side branches)
    kept: list[tuple[int, Tap]] = []
    for stride in sorted(last):
        finish, tap = last[stride]
        if not kept or finish > kept[-1][0]:
            kept.append((finish, tap))
    return [tap for _, tap in kept]
