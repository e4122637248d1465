"""Heads to graft onto a body: pooling for every feature layout, a linear head and a fastai-style MLP head.

A body returns pooled vectors ``(B, C)`` (layout ``"nc"``), feature maps ``(B, C, H, W)`` (``"nchw"``) or
``(B, H, W, C)`` (``"nhwc"``, timm's Swin), or token sequences ``(B, L, D)`` (``"nlc"``, ViT and text
encoders). :class:`Pool` turns any of them into vectors, so every head works on every body.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "LAYOUTS",
    "POOLS",
    "Pool",
    "SigmoidRange",
    "infer_layout",
    "linear_head",
    "make_head",
    "mlp_head",
    "pooled_features",
    "run_head",
]

Layout = Literal["nc", "nchw", "nhwc", "nlc"]
PoolMode = Literal["avg", "mean", "max", "concat", "token"]
LAYOUTS: tuple[str, ...] = ("nc", "nchw", "nhwc", "nlc")
POOLS: tuple[str, ...] = ("avg", "mean", "max", "concat", "token")


def infer_layout(shape: Sequence[int], *, channels: int | None = None, fmt: str | None = None) -> Layout:
    """Guess the layout of a feature tensor of ``shape``.

    Args:
        shape: the shape including the batch dimension.
        channels: the number of feature channels if known (e.g. the removed classifier's ``in_features``);
            tells ``(B, C, H, W)`` from ``(B, H, W, C)``.
        fmt: a format declared by the model itself (timm's ``output_fmt``: ``"NCHW"``/``"NHWC"``).
    """
    if len(shape) == 2:
        return "nc"
    if len(shape) == 3:
        return "nlc"
    if len(shape) != 4:
        raise ValueError(f"heads: cannot pool features of shape {tuple(shape)}; pass head=<your module>.")
    if fmt is not None and fmt.upper() in ("NCHW", "NHWC"):
        return "nhwc" if fmt.upper() == "NHWC" else "nchw"
    if channels is not None and shape[-1] == channels and shape[1] != channels:
        return "nhwc"
    return "nchw"


def pooled_features(channels: int, mode: str) -> int:
    """Width of the vector :class:`Pool` produces from ``channels`` channels."""
    return 2 * channels if mode == "concat" else channels


def run_head(head: nn.Module, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``head(features)``, passing the attention ``mask`` to a leading :class:`Pool` when there is one."""
    if mask is not None and isinstance(head, nn.Sequential) and len(head) and isinstance(head[0], Pool):
        pooled = head[0](features, mask)
        for layer in list(head)[1:]:
            pooled = layer(pooled)
        return pooled
    return head(features)


class Pool(nn.Module):
    """Pool features of any layout to ``(B, C)`` (``(B, 2C)`` for ``"concat"``: max and average, as fastai).

    ``"token"`` takes the first token of a sequence (a class token); on feature maps it means ``"avg"``.
    ``"mean"`` is ``"avg"`` (the name text models use). Token sequences (``"nlc"``) padded to a common
    length pool only over the real tokens when the attention ``mask`` (1 = token, 0 = padding) is given:
    one sentence padded to 16 or to 128 tokens gives the same vector.

    Example:
        >>> Pool(mode="concat", layout="nchw")(torch.randn(2, 8, 7, 7)).shape
        torch.Size([2, 16])
    """

    def __init__(self, *, mode: PoolMode = "avg", layout: Layout = "nchw") -> None:
        super().__init__()
        if mode not in POOLS:
            raise ValueError(f"Pool: unknown mode {mode!r}. Choose one of {POOLS}.")
        if layout not in LAYOUTS:
            raise ValueError(f"Pool: unknown layout {layout!r}. Choose one of {LAYOUTS}.")
        self.mode = mode
        self.layout = layout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.layout == "nc":
            return x.flatten(1)
        if self.layout == "nlc" and self.mode == "token":
            return x[:, 0]
        if self.layout == "nlc" and mask is not None:
            return self._masked(x, mask)
        dims = (1,) if self.layout == "nlc" else (1, 2) if self.layout == "nhwc" else (2, 3)
        if self.mode == "max":
            return x.amax(dim=dims)
        average = x.mean(dim=dims)
        if self.mode == "concat":
            return torch.cat([x.amax(dim=dims), average], dim=1)
        return average

    def _masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool ``(B, L, D)`` tokens over the positions where ``mask`` ``(B, L)`` is non-zero."""
        if mask.shape != x.shape[:2]:
            raise ValueError(f"Pool: attention mask {tuple(mask.shape)} does not fit tokens {tuple(x.shape)}.")
        keep = mask.to(dtype=torch.bool).unsqueeze(-1)  # (B, L, 1)
        count = keep.sum(dim=1).clamp(min=1).to(x.dtype)  # (B, 1)
        average = x.masked_fill(~keep, 0).sum(dim=1) / count
        if self.mode in ("avg", "mean"):
            return average
        largest = x.masked_fill(~keep, torch.finfo(x.dtype).min).amax(dim=1)
        return largest if self.mode == "max" else torch.cat([largest, average], dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, layout={self.layout!r}"


class SigmoidRange(nn.Module):
    """Squash outputs into ``(low, high)`` with a scaled sigmoid (for regression targets with known range)."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        if not high > low:
            raise ValueError(f"SigmoidRange: y_range=({low}, {high}) must have high > low.")
        self.low, self.high = float(low), float(high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) * (self.high - self.low) + self.low

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"


def _finish(layers: list[nn.Module], y_range: tuple[float, float] | None) -> nn.Sequential:
    if y_range is not None:
        layers.append(SigmoidRange(*y_range))
    return nn.Sequential(*layers)


def linear_head(
    channels: int,
    n_out: int,
    *,
    layout: Layout = "nc",
    pool: PoolMode = "avg",
    dropout: float = 0.0,
    y_range: tuple[float, float] | None = None,
) -> nn.Sequential:
    """Pool (if needed), optional dropout, one ``Linear`` layer.

    Example:
        >>> linear_head(512, 10)
        Sequential((0): Pool(mode='avg', layout='nc'), (1): Linear(in_features=512, out_features=10, ...))
    """
    layers: list[nn.Module] = [Pool(mode=pool, layout=layout)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(pooled_features(channels, pool if layout != "nc" else "avg"), n_out))
    return _finish(layers, y_range)


def mlp_head(
    channels: int,
    n_out: int,
    *,
    layout: Layout = "nchw",
    pool: PoolMode = "concat",
    hidden: Sequence[int] = (512,),
    dropout: float = 0.5,
    batch_norm: bool = True,
    y_range: tuple[float, float] | None = None,
) -> nn.Sequential:
    """fastai's head: concat pooling, then ``[BatchNorm, Dropout, Linear, ReLU]`` per hidden size, then the
    output layer. Dropout is ``dropout / 2`` before the first layer and ``dropout`` after, as fastai does.

    Example:
        >>> mlp_head(2048, 10, hidden=(512,))  # Pool → BN(4096) → Drop → Linear(4096, 512) → ReLU → ...
    """
    widths = [pooled_features(channels, pool if layout != "nc" else "avg"), *hidden, n_out]
    layers: list[nn.Module] = [Pool(mode=pool, layout=layout)]
    for i, (width_in, width_out) in enumerate(pairwise(widths)):
        if batch_norm:
            layers.append(nn.BatchNorm1d(width_in))
        p = dropout / 2 if i == 0 else dropout
        if p > 0:
            layers.append(nn.Dropout(p))
        layers.append(nn.Linear(width_in, width_out, bias=not batch_norm or i == len(widths) - 2))
        if i < len(widths) - 2:
            layers.append(nn.ReLU(inplace=True))
    return _finish(layers, y_range)


def make_head(
    head: str, n_out: int, shape: Any, layout: str | None, pool: str, options: dict[str, Any]
) -> nn.Sequential:
    """The ``"linear"`` or ``"mlp"`` head for body outputs of ``shape`` (with batch dimension) in ``layout``,
    pooled by ``pool`` (``"model"``: the body pooled already), with ``options`` (``hidden``, ``dropout``,
    ``batch_norm``, ``y_range``; ``None`` values take the defaults).

    Example:
        >>> make_head("linear", 10, torch.Size([1, 512]), "nc", "model", {})
        Sequential((0): Pool(mode='avg', layout='nc'), (1): Linear(in_features=512, out_features=10, ...))
    """
    if layout is None or not isinstance(shape, torch.Size):
        raise ValueError(
            f"graft: the body returns {shape}, not one tensor, so head={head!r} cannot be built. "
            f"Pass head=<a module that takes that output>."
        )
    channels = int(shape[1] if layout in ("nc", "nchw") else shape[-1])
    mode: Any = "avg" if pool == "model" else pool
    if head == "linear":
        return linear_head(
            channels,
            n_out,
            layout=layout,  # type: ignore[arg-type]
            pool=mode,
            dropout=options.get("dropout") or 0.0,
            y_range=options.get("y_range"),
        )
    if head == "mlp":
        mode = "concat" if pool == "model" and layout != "nc" else mode
        kwargs = {k: v for k, v in options.items() if v is not None}
        return mlp_head(channels, n_out, layout=layout, pool=mode, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"graft: unknown head={head!r}. Choose 'linear', 'mlp', an nn.Module or a callable(shape).")
