"""Segmentation decoders over a backbone's taps: U-Net (upsampling blocks with skip connections, down to
stride 1) and FPN (a feature pyramid merged at the finest tap)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchgraft.choices import DECODERS

__all__ = ["DECODERS", "UNET_WIDTHS", "FPNDecoder", "UNetDecoder", "build_decoder"]

UNET_WIDTHS = (256, 128, 64, 32, 16)  # U-Net block widths, coarsest first (as smp's Unet)


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNetDecoder(nn.Module):
    """U-Net decoder: from the coarsest feature, blocks that upsample x2 (to the next tap's size), concatenate
    that tap and apply two 3x3 conv-BN-ReLU; blocks without a tap continue down to stride 1.

    Args:
        channels: channels of the taps, finest first.
        strides: their strides.
        widths: output channels of the blocks, coarsest first (the last is repeated as needed).
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], widths: Sequence[int]) -> None:
        super().__init__()
        steps = max(1, math.ceil(math.log2(strides[-1])))
        skips = list(channels[:-1])[::-1]  # finest-but-one .. finest: the skip of each block, while there are taps
        blocks, width_in = [], channels[-1]
        for i in range(steps):
            skip = skips[i] if i < len(skips) else 0
            width = widths[min(i, len(widths) - 1)]
            blocks.append(nn.Sequential(_conv(width_in + skip, width), _conv(width, width)))
            width_in = width
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = width_in

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Decode ``features`` (finest first) towards ``size`` (the input's height and width)."""
        x, skips = features[-1], features[:-1][::-1]
        for i, block in enumerate(self.blocks):
            if i < len(skips):
                x = F.interpolate(x, size=skips[i].shape[-2:], mode="nearest")
                x = torch.cat([x, skips[i]], dim=1)
            else:
                remaining = len(self.blocks) - i
                target = (
                    size if remaining == 1 else (max(1, size[0] >> (remaining - 1)), max(1, size[1] >> (remaining - 1)))
                )
                x = F.interpolate(x, size=target, mode="nearest")
            x = block(x)
        return x


class FPNDecoder(nn.Module):
    """Feature pyramid decoder: 1x1 laterals, a top-down pathway, each level refined by 3x3 conv-BN-ReLU,
    upsampled to the finest tap and summed.

    Args:
        channels: channels of the taps, finest first.
        pyramid: channels of the pyramid.
        width: channels of the merged output.
    """

    def __init__(self, channels: Sequence[int], pyramid: int = 256, width: int = 128) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, pyramid, 1) for c in channels)
        self.smooth = nn.ModuleList(_conv(pyramid, width) for _ in channels)
        self.out_channels = width

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Merge ``features`` (finest first) at the finest tap's resolution."""
        levels = [lateral(f) for lateral, f in zip(self.laterals, features, strict=True)]
        for i in range(len(levels) - 2, -1, -1):  # top-down
            levels[i] = levels[i] + F.interpolate(levels[i + 1], size=levels[i].shape[-2:], mode="nearest")
        finest = levels[0].shape[-2:]
        merged = [
            F.interpolate(s(level), size=finest, mode="bilinear", align_corners=False)
            for s, level in zip(self.smooth, levels, strict=True)
        ]
        return torch.stack(merged).sum(dim=0)


def build_decoder(decoder: str, channels: Sequence[int], strides: Sequence[int], widths: Sequence[int]) -> nn.Module:
    """A ``"unet"`` (block ``widths``, coarsest first) or ``"fpn"`` decoder for taps of ``channels`` and
    ``strides`` (finest first)."""
    if decoder not in DECODERS:
        raise ValueError(f"graft_dense: decoder={decoder!r}; choose one of {DECODERS}.")
    return UNetDecoder(channels, strides, widths) if decoder == "unet" else FPNDecoder(channels)
