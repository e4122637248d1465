"""Dense grafts: a segmentation decoder on any pretrained backbone, its multi-scale features found by a dry run.

:func:`find_taps` runs the network once on the meta device and keeps, for each spatial stride (2, 4, 8, 16,
32, ...), the output of the module that finishes *last* at that stride — the end of each stage — whatever
the layout: ``(N, C, H, W)`` (CNNs), ``(N, H, W, C)`` (channels-last stages: timm Swin, ConvNeXt's norms) or
``(N, L, C)`` tokens (ViT, DeiT, DINO: the patch grid after the class/register tokens). Nothing is listed
per family; channel counts and sizes come from the shapes.

:func:`graft_dense` cuts the backbone after its deepest tap (later modules are pruned), hooks the taps, and
adds a decoder — ``"unet"`` (upsampling blocks with skip connections, down to stride 1) or ``"fpn"`` (a
feature pyramid merged at the finest tap) — and a 1x1 classifier; logits are resized to the input size, so
inputs whose size is not a multiple of the stride work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from torchgraft.grafting.classifier import ClassifierNotFoundError, find_classifier
from torchgraft.grafting.dryrun import Trace, infer_input_size
from torchgraft.grafting.guard import PretrainedGuard
from torchgraft.grafting.resegment import Resegmented, regraft_segmentation, segmentation_classifiers
from torchgraft.grafting.surgery import Grafted, GraftInfo, _cut_body, _trace

__all__ = [
    "DECODERS",
    "UNET_WIDTHS",
    "FPNDecoder",
    "PackedDecoder",
    "Segmenter",
    "Tap",
    "UNetDecoder",
    "find_taps",
    "graft_dense",
]

DECODERS = ("unet", "fpn")
UNET_WIDTHS = (256, 128, 64, 32, 16)  # U-Net block widths, coarsest first (as smp's Unet)
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


def _to_nchw(feature: torch.Tensor, tap: Tap, size: tuple[int, int]) -> torch.Tensor:
    if tap.layout == "nchw":
        return feature
    if tap.layout == "nhwc":
        return feature.permute(0, 3, 1, 2)
    height, width = size[0] // tap.stride, size[1] // tap.stride
    tokens = feature[:, tap.prefix :]
    if tokens.shape[1] != height * width:
        raise ValueError(
            f"segmenter: tap '{tap.name}' gives {tokens.shape[1]} tokens, not a {height}x{width} grid for a "
            f"{size[0]}x{size[1]} input; give the network inputs of the size it was built for."
        )
    return tokens.transpose(1, 2).reshape(feature.shape[0], tap.channels, height, width)


_KEPT = "_torchgraft_tap_output"


def _keep_output(module: nn.Module, args: object, output: object) -> None:
    """Forward hook of a tap: keep its output on the module (a plain function, so copies of the model work)."""
    module.__dict__[_KEPT] = output[0] if isinstance(output, tuple | list) else output


def _take_output(module: nn.Module) -> torch.Tensor:
    output = module.__dict__.pop(_KEPT, None)
    if output is None:
        raise RuntimeError(f"segmenter: tap {type(module).__name__} did not run in this forward pass.")
    return output


def _logits(decoder: nn.Module, head: nn.Module, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    logits = head(decoder(maps, size))
    return (
        logits if logits.shape[-2:] == size else F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    )


class Segmenter(Grafted):
    """A pretrained backbone, a decoder and a 1x1 classifier: ``forward(x)`` gives ``(N, classes, H, W)``
    logits at the input's size. ``taps`` name the backbone modules whose outputs the decoder reads."""

    def __init__(
        self, body: nn.Module, decoder: nn.Module, head: nn.Module, taps: Sequence[Tap], info: GraftInfo
    ) -> None:
        super().__init__(body, head, info, None)
        self.decoder = decoder
        self.taps = tuple(taps)
        self._packing: tuple[list[tuple[int, ...]], tuple[int, int]] | None = None
        for tap in self.taps[:-1]:  # the deepest is what the body returns
            body.model.get_submodule(tap.name).register_forward_hook(_keep_output)

    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The taps' outputs for ``x``, as ``(N, C, h, w)`` maps, finest first."""
        deepest = self.body(x)
        size = (x.shape[-2], x.shape[-1])
        found = [*(_take_output(self.body.model.get_submodule(t.name)) for t in self.taps[:-1]), deepest]
        return [_to_nchw(feature, tap, size) for feature, tap in zip(found, self.taps, strict=True)]

    def decode(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Logits ``(N, classes, H, W)`` at ``size`` from the taps' maps."""
        return _logits(self.decoder, self.head, maps, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Per-pixel logits ``(N, classes, H, W)`` for images ``x`` of shape ``(N, C, H, W)``."""
        return self.decode(self.maps(x), (x.shape[-2], x.shape[-1]))

    def features(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The taps' maps flattened into one ``(N, D)`` tensor (what the feature cache stores while the
        backbone is frozen); :meth:`pooled_head` decodes it."""
        maps = self.maps(x)
        self._packing = ([tuple(m.shape[1:]) for m in maps], (x.shape[-2], x.shape[-1]))
        return torch.cat([m.flatten(1) for m in maps], dim=1)

    def pooled_head(self) -> nn.Module:
        """The decoder and classifier as one module reading :meth:`features`' packed maps."""
        if getattr(self, "_packing", None) is None:
            raise RuntimeError("Segmenter.pooled_head: call features() first (it records the maps' shapes).")
        shapes, size = self._packing
        return PackedDecoder(self, shapes, size)


class PackedDecoder(nn.Module):
    """A segmenter's decoder and classifier (the same modules) reading the flattened taps of
    :meth:`Segmenter.features`: what trains on cached features while the backbone is frozen."""

    def __init__(self, segmenter: Segmenter, shapes: Sequence[tuple[int, ...]], size: tuple[int, int]) -> None:
        super().__init__()
        self.decoder, self.head = segmenter.decoder, segmenter.head
        self.shapes, self.size = [tuple(s) for s in shapes], size

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        """Logits at the recorded input size."""
        sizes = [math.prod(shape) for shape in self.shapes]
        maps = [part.reshape(-1, *shape) for part, shape in zip(packed.split(sizes, dim=1), self.shapes, strict=True)]
        return _logits(self.decoder, self.head, maps, self.size)


def graft_dense(
    model: nn.Module,
    n_classes: int,
    *,
    decoder: str = "unet",
    input_size: Sequence[int] | None = None,
    widths: Sequence[int] = UNET_WIDTHS,
    aux: str = "drop",
    backbone: str | None = None,
    guard: bool = True,
) -> Segmenter | Resegmented:
    """Graft a segmentation decoder and an ``n_classes`` classifier onto the pretrained ``model``.

    A network that already segments (its dry run returns per-pixel logits: torchvision ``fcn_*``,
    ``deeplabv3_*``, ``lraspp_*``, Hugging Face Segformer) keeps its own decoder and gets new classifiers
    instead (:func:`~torchgraft.grafting.resegment.regraft_segmentation`; ``decoder`` and ``widths`` are
    then not used).

    Args:
        model: a pretrained image network (torchvision, timm, your own); modified in place (it becomes the
            backbone, cut after its deepest tap).
        n_classes: classes per pixel.
        decoder: ``"unet"`` (default) or ``"fpn"``.
        input_size: ``(C, H, W)`` for the dry run (default: the model's metadata, else 224 px).
        widths: U-Net block widths, coarsest first.
        aux: for a network that already segments: ``"drop"`` its auxiliary head or ``"replace"`` its classifier.
        backbone: for a network that already segments: the name of its backbone part (your own network's
            ``"encoder"``...; found by name for torchvision and Hugging Face networks).
        guard: fingerprint the pretrained tensors (see :func:`torchgraft.check_pretrained`).

    Raises:
        ValueError: an unknown decoder, or a network with no spatial features.

    Example:
        >>> model = graft_dense(torchvision.models.resnet34(weights="DEFAULT"), 21)
        >>> model(torch.randn(2, 3, 250, 300)).shape
        torch.Size([2, 21, 250, 300])
    """
    if decoder not in DECODERS:
        raise ValueError(f"graft_dense: decoder={decoder!r}; choose one of {DECODERS}.")
    if not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"graft_dense: n_classes must be a positive int, got {n_classes!r}.")
    source, total = type(model).__name__, sum(p.numel() for p in model.parameters())
    size = tuple(input_size) if input_size is not None else infer_input_size(model)
    run = _trace(model, size)
    if segmentation_classifiers(model, run):  # it segments already: keep its decoder, new classifiers
        return regraft_segmentation(model, n_classes, aux=aux, backbone=backbone, input_size=size, guard=guard, run=run)
    try:  # the old classifier and what follows it are no features
        first = find_classifier(model, run).names[0]
        classifier_start = min(call.start for call in run.by_name[first])
    except (ClassifierNotFoundError, KeyError, IndexError):
        classifier_start = None
    taps = find_taps(run, size, before=classifier_start)
    if not taps:
        raise ValueError(
            f"graft_dense: {source} gives no spatial feature map in a dry run at {size}; it cannot be a "
            f"segmentation backbone (pass input_size= if it needs another size)."
        )
    body, _, _, removed, _ = _cut_body(model, taps[-1].name, None, size)
    channels, strides = [t.channels for t in taps], [t.stride for t in taps]
    dense = UNetDecoder(channels, strides, widths) if decoder == "unet" else FPNDecoder(channels)
    head = nn.Conv2d(dense.out_channels, n_classes, 1)
    reference = next(body.parameters(), None)
    if reference is not None:
        dense, head = dense.to(reference.device, reference.dtype), head.to(reference.device, reference.dtype)
    info = GraftInfo(
        source=source,
        method="dense",
        cut_at=body.exit_at,
        classifier=(),
        removed=tuple(removed),
        removed_params=total - sum(p.numel() for p in body.parameters()),
        input_size=size,
        body_output=None,
        layout="nchw",
        pool=decoder,
        in_chans=None,
        notes=tuple(f"tap '{t.name}': stride {t.stride}, {t.channels} channels [{t.layout}]" for t in taps),
    )
    segmenter = Segmenter(body, dense, head, taps, info)
    info.pretrained = tuple(f"body.{n}" for n, _ in body.named_parameters())
    info.new = tuple(n for n, _ in segmenter.named_parameters() if not n.startswith("body."))
    if guard:
        segmenter.guard = PretrainedGuard.track(segmenter, info.pretrained)
    return segmenter
