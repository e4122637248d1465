"""Adapt a pretrained network to another number of input channels (grayscale, RGBA, multispectral).

The first convolution that reads the input is found by a dry run, so this works for any model, not only
those that declare a ``first_conv``. Its pretrained kernel is rewritten so that the new model, fed the new
channels, computes what the old model would have computed:

* 1 channel: the kernel is summed over its 3 input channels, so ``new(x) == old(x.repeat(1, 3, 1, 1))``.
* N channels: the kernel is tiled to N channels and scaled by ``3 / N``, so the response to an image
  repeated across the N channels keeps its magnitude (timm's rule, for any model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from torchgraft.grafting.dryrun import trace

__all__ = ["InputAdaptation", "adapt_conv_weight", "adapt_input_channels", "find_input_conv"]


@dataclass(frozen=True)
class InputAdaptation:
    """What :func:`adapt_input_channels` changed: which convolution, from how many channels, to how many."""

    module: str
    from_channels: int
    to_channels: int
    rule: str


def adapt_conv_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A copy of convolution ``weight`` (out, in, *kernel) adapted to ``in_chans`` input channels.

    Example:
        >>> adapt_conv_weight(torch.randn(64, 3, 7, 7), 1).shape
        torch.Size([64, 1, 7, 7])
    """
    if weight.ndim < 3:
        raise ValueError(f"adapt_conv_weight: expected a convolution kernel, got shape {tuple(weight.shape)}.")
    if in_chans < 1:
        raise ValueError(f"adapt_conv_weight: in_chans must be >= 1, got {in_chans}.")
    source = weight.shape[1]
    if in_chans == source:
        return weight.detach().clone()
    if in_chans == 1:
        return weight.detach().sum(dim=1, keepdim=True)
    repeats = math.ceil(in_chans / source)
    tiled = weight.detach().repeat(1, repeats, *([1] * (weight.ndim - 2)))[:, :in_chans]
    return tiled * (source / in_chans)


def find_input_conv(model: nn.Module, input_size: tuple[int, ...] | None = None) -> tuple[str, nn.Module]:
    """The first convolution to run on the model's input, as ``(name, module)``.

    Raises:
        ValueError: when no convolution reading the input channels runs (e.g. an MLP on flat vectors).
    """
    cfg = getattr(model, "pretrained_cfg", None)
    first = cfg.get("first_conv") if isinstance(cfg, dict) else None
    modules = dict(model.named_modules())
    if isinstance(first, str) and isinstance(modules.get(first), nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return first, modules[first]
    run = trace(model, input_size)
    channels = run.input_shape[0]
    for call in run.calls:
        conv = call.module
        if isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d) and conv.in_channels == channels:
            return call.name, conv
    raise ValueError(
        f"in_chans: no convolution reading the {channels} input channels runs in {type(model).__name__}; "
        f"adapt the input layer yourself or drop in_chans=."
    )


def adapt_input_channels(
    model: nn.Module, in_chans: int, *, input_size: tuple[int, ...] | None = None, module: str | None = None
) -> InputAdaptation:
    """Rewrite the first convolution of ``model`` (in place) to take ``in_chans`` input channels.

    Grouped first convolutions are refused (their channel groups have no pretrained counterpart). ``module``
    names the convolution (as a recorded :class:`InputAdaptation` does) instead of finding it by a dry run.

    Example:
        >>> m = torchvision.models.resnet18()
        >>> adapt_input_channels(m, 1)
        InputAdaptation(module='conv1', from_channels=3, to_channels=1, rule='sum')
    """
    name, conv = (module, model.get_submodule(module)) if module is not None else find_input_conv(model, input_size)
    if conv.groups != 1:
        raise ValueError(
            f"in_chans: the first convolution '{name}' is grouped (groups={conv.groups}); adapt it yourself."
        )
    source = conv.in_channels
    if in_chans == source:
        return InputAdaptation(name, source, in_chans, "unchanged")
    weight = conv.weight
    conv.weight = nn.Parameter(adapt_conv_weight(weight, in_chans), requires_grad=weight.requires_grad)
    conv.in_channels = in_chans
    _update_channel_attributes(model, name, source, in_chans)
    rule = "sum" if in_chans == 1 else f"repeat, scale {source}/{in_chans}"
    return InputAdaptation(name, source, in_chans, rule)


def _update_channel_attributes(model: nn.Module, conv_name: str, old: int, new: int) -> None:
    """Update the ``num_channels``/``in_chans`` bookkeeping that the convolution's ancestors (e.g. Hugging
    Face patch embeddings) check against the input."""
    for name, module in model.named_modules():
        if name and not conv_name.startswith(name + "."):
            continue
        for attr in ("num_channels", "in_chans"):
            if getattr(module, attr, None) == old:
                setattr(module, attr, new)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "num_channels", None) == old:
        config.num_channels = new
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("input_size"), tuple | list):
        model.pretrained_cfg = {**cfg, "input_size": (new, *cfg["input_size"][1:])}
