"""Dense grafts: a segmentation decoder on any pretrained backbone, reading its multi-scale features.

:func:`graft_dense` finds the backbone's taps by a dry run (:func:`~torchgraft.grafting.taps.find_taps`),
cuts it after its deepest tap (later modules are pruned), hooks the taps, and adds a decoder
(:mod:`~torchgraft.grafting.decoders`: ``"unet"`` or ``"fpn"``) and a 1x1 classifier; logits are resized
to the input size, so inputs whose size is not a multiple of the stride work. :func:`rebuild_segmenter`
makes the same model again from its record, without the dry run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchgraft.grafting.body import Body, rebuild_body
from torchgraft.grafting.classifier import ClassifierNotFoundError, find_classifier
from torchgraft.grafting.decoders import DECODERS, UNET_WIDTHS, build_decoder
from torchgraft.grafting.dryrun import Trace, infer_input_size
from torchgraft.grafting.grafted import Grafted
from torchgraft.grafting.guard import PretrainedGuard
from torchgraft.grafting.info import GraftInfo
from torchgraft.grafting.resegment import Resegmented, regraft_segmentation, segmentation_classifiers
from torchgraft.grafting.surgery import Cut, _trace, cut_body
from torchgraft.grafting.taps import Tap, find_taps

__all__ = ["PackedDecoder", "Segmenter", "graft_dense", "network_taps", "rebuild_segmenter", "tap_note", "tapped_info"]


def _to_nchw(feature: torch.Tensor, tap: Tap, size: tuple[int, int]) -> torch.Tensor:
    if tap.layout == "nchw":
        return feature
    if tap.layout == "nhwc":
        return feature.permute(0, 3, 1, 2)
    height, width = size[0] // tap.stride, size[1] // tap.stride
    tokens = feature[:, tap.prefix :]
    if tokens.shape[1] != height * width:
        raise ValueError(
            f"taps: tap '{tap.name}' gives {tokens.shape[1]} tokens, not a {height}x{width} grid for a "
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


def network_taps(model: nn.Module, run: Trace, size: Sequence[int]) -> list[Tap]:
    """The taps (:func:`~torchgraft.grafting.taps.find_taps`) of ``model``'s dry run ``run`` at ``size``,
    before its old classifier: the classifier and what follows it are no features."""
    try:
        first = find_classifier(model, run).names[0]
        classifier_start = min(call.start for call in run.by_name[first])
    except (ClassifierNotFoundError, KeyError, IndexError):
        classifier_start = None
    return find_taps(run, size, before=classifier_start)


def tap_note(tap: Tap) -> str:
    """What a graft's notes say of one tap."""
    return f"tap '{tap.name}': stride {tap.stride}, {tap.channels} channels [{tap.layout}]"


def tapped_info(
    source: str,
    method: str,
    cut: Cut,
    total: int,
    size: tuple[int, ...],
    *,
    pool: str,
    taps: Sequence[Tap],
    n_out: int,
    options: dict[str, Any],
    notes: Sequence[str] | None = None,
) -> GraftInfo:
    """The record of a graft on multi-scale taps (``graft_dense``, ``graft_detector``): the body ``cut`` from a
    network of ``total`` parameters after its deepest tap, with ``notes`` (default: one per tap)."""
    return GraftInfo(
        source=source,
        method=method,
        cut_at=cut.body.exit_at,
        classifier=(),
        removed=tuple(cut.removed),
        removed_params=total - sum(p.numel() for p in cut.body.parameters()),
        input_size=size,
        body_output=None,
        layout="nchw",
        pool=pool,
        in_chans=None,
        notes=tuple(notes if notes is not None else map(tap_note, taps)),
        n_out=n_out,
        options=options,
        dropped=tuple(cut.dropped),
        pruned=tuple(cut.pruned),
        body_method=cut.body.method,
        select_main=cut.body.select_main,
        taps=tuple(taps),
    )


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
    taps = network_taps(model, run, size)
    if not taps:
        raise ValueError(
            f"graft_dense: {source} gives no spatial feature map in a dry run at {size}; it cannot be a "
            f"segmentation backbone (pass input_size= if it needs another size)."
        )
    cut = cut_body(model, taps[-1].name, None, size)
    options = {"decoder": decoder, "widths": tuple(widths)}
    info = tapped_info(source, "dense", cut, total, size, pool=decoder, taps=taps, n_out=n_classes, options=options)
    return _segmenter(cut.body, info, guard=guard)


def _segmenter(body: Body, info: GraftInfo, *, guard: bool) -> Segmenter:
    """The decoder and classifier that ``info`` records on ``body``, with the parameter names recorded."""
    channels, strides = [t.channels for t in info.taps], [t.stride for t in info.taps]
    dense = build_decoder(info.options["decoder"], channels, strides, info.options.get("widths", UNET_WIDTHS))
    head = nn.Conv2d(dense.out_channels, info.n_out, 1)
    reference = next(body.parameters(), None)
    if reference is not None:
        dense, head = dense.to(reference.device, reference.dtype), head.to(reference.device, reference.dtype)
    segmenter = Segmenter(body, dense, head, info.taps, info)
    info.pretrained = tuple(f"body.{n}" for n, _ in body.named_parameters())
    info.new = tuple(n for n, _ in segmenter.named_parameters() if not n.startswith("body."))
    if guard:
        segmenter.guard = PretrainedGuard.track(segmenter, info.pretrained)
    return segmenter


def rebuild_segmenter(model: nn.Module, info: GraftInfo) -> Segmenter:
    """The :func:`graft_dense` decoder graft that ``info`` records, rebuilt on ``model`` (a fresh backbone of
    the same architecture) without a dry run: the same modules under the same names, decoder and classifier
    weights fresh; no guard."""
    return _segmenter(rebuild_body(model, info), info, guard=False)
