"""Networks that already segment (torchvision ``fcn_*``, ``deeplabv3_*``, ``lraspp_*``; Hugging Face
``SegformerForSemanticSegmentation``; your own): keep their pretrained decoder, give them new classifiers.

The meta-device dry run says what the network returns — per-pixel logits ``(N, C, h, w)``, directly, as
torchvision's ``{"out": ..., "aux": ...}`` or as a ``ModelOutput``'s ``logits`` — and which convolutions
produce ``C`` channels: those are the classifiers (LR-ASPP has two, summed; FCN and DeepLabV3 have one, plus
one in the auxiliary head). Each is replaced by a fresh convolution with ``n_classes`` outputs; the auxiliary
head is dropped (default) or gets its new classifier too. :class:`Resegmented` then splits the network into
``body`` (the backbone, its own layer groups), ``decoder`` (the pretrained rest) and ``head`` (the new
classifiers) without moving a module: each classifier's place in the network calls the head's module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchgraft.grafting.dryrun import Trace, infer_input_size, main_tensor
from torchgraft.grafting.grafted import Grafted
from torchgraft.grafting.guard import PretrainedGuard
from torchgraft.grafting.info import GraftInfo
from torchgraft.grafting.surgery import _trace

__all__ = [
    "AUX_CHOICES",
    "Resegmented",
    "dense_output",
    "rebuild_resegmented",
    "regraft_segmentation",
    "segmentation_classifiers",
]

AUX_CHOICES = ("drop", "replace")
_BACKBONES = ("backbone", "segformer", "encoder", "pixel_level_module")  # the encoder's attribute, per family


def dense_output(run: Trace) -> torch.Size | None:
    """The shape of the per-pixel logits a traced network returns (``(N, C, h, w)``), else ``None``."""
    shape = main_tensor(run.output)
    if shape is None or len(shape) != 4:
        return None
    height, width = run.input_shape[-2:]
    return shape if shape[-2] * 8 >= height and shape[-1] * 8 >= width else None


def segmentation_classifiers(model: nn.Module, run: Trace) -> list[str]:
    """Names of the convolutions whose output has the logits' channel count (the classifiers), in call order."""
    shape = dense_output(run)
    if shape is None:
        return []
    found = []
    for call in run.calls:
        module = call.module
        if isinstance(module, nn.Conv2d) and module.out_channels == shape[1] and call.name not in found:
            found.append(call.name)
    return found


class _Backbone(nn.Module):
    """The network's backbone as the model's ``body`` (``body.model``, as every graft names it); the network
    calls the same module itself."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


class _Slot(nn.Module):
    """Stands where a classifier was: calls the head's module, which it does not own (no duplicate tensors)."""

    def __init__(self, target: nn.Module) -> None:
        super().__init__()
        self.__dict__["target"] = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(x)


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "out" in output:
        return output["out"]
    found = main_tensor(output)
    if not isinstance(found, torch.Tensor):
        raise TypeError(f"Resegmented: the network returned {type(output).__name__} without logits.")
    return found


class Resegmented(Grafted):
    """A segmentation network with new classifiers: ``forward(x)`` gives ``(N, classes, H, W)`` logits at the
    input's size. ``body`` is the backbone, ``decoder`` the network's other pretrained parts, ``head`` the new
    classifiers (an ``nn.ModuleList``); the network itself runs them (``network``)."""

    cacheable = False  # the backbone returns several maps to a decoder that is trained: nothing to cache

    def __init__(
        self, network: nn.Module, body_name: str, head: nn.ModuleList, info: GraftInfo, guard: PretrainedGuard | None
    ) -> None:
        super().__init__(_Backbone(network.get_submodule(body_name)), head, info, guard)
        self.__dict__["network"] = network
        self.decoder = nn.ModuleDict({n: m for n, m in network.named_children() if n != body_name})

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Per-pixel logits ``(N, classes, H, W)`` for images ``x`` of shape ``(N, C, H, W)``."""
        logits = _logits(self.network(x))
        size = (x.shape[-2], x.shape[-1])
        return logits if logits.shape[-2:] == size else F.interpolate(logits, size=size, mode="bilinear")


def _aux_parts(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """The classifiers that stay and the auxiliary heads (torchvision's ``aux_classifier``) to drop."""
    aux = [n for n in names if n.split(".")[0].startswith("aux")]
    return [n for n in names if n not in aux], sorted({n.split(".")[0] for n in aux})


def _drop_aux(model: nn.Module, removed: Sequence[str]) -> None:
    """Remove the auxiliary heads ``removed`` and the backbone output that feeds them."""
    for name in removed:
        setattr(model, name, None)
    backbone = getattr(model, "backbone", None)
    layers = getattr(backbone, "return_layers", None)
    if isinstance(layers, dict):
        for key in [k for k, v in layers.items() if v == "aux"]:
            layers.pop(key)


def _body_name(model: nn.Module, backbone: str | None) -> str:
    if backbone is not None:
        children = dict(model.named_children())
        if backbone not in children:
            raise ValueError(
                f"graft_dense: backbone={backbone!r} is not a part of {type(model).__name__}; its parts are "
                f"{list(children)}."
            )
        return backbone
    for name in _BACKBONES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    children = [n for n, _ in model.named_children()]
    raise ValueError(
        f"graft_dense: {type(model).__name__} already segments, but none of its parts is named as a backbone "
        f"({', '.join(_BACKBONES)}); its parts are {children}. Name it: graft_dense(model, n, backbone='<part>')."
    )


def regraft_segmentation(
    model: nn.Module,
    n_classes: int,
    *,
    aux: str = "drop",
    backbone: str | None = None,
    input_size: Sequence[int] | None = None,
    guard: bool = True,
    run: Trace | None = None,
) -> Resegmented:
    """Give a network that already segments new ``n_classes`` classifiers, keeping its decoder (see the module
    docstring); :func:`torchgraft.graft_dense` calls this when the dry run shows per-pixel logits.

    Args:
        model: the pretrained segmentation network; modified in place (it becomes the model's ``network``).
        n_classes: classes per pixel.
        aux: ``"drop"`` (default) removes an auxiliary head; ``"replace"`` gives it a new classifier too (it
            then runs in training only for your own auxiliary loss; the Learner trains the main output).
        backbone: the network's part that is its backbone (its own layer groups; frozen in the frozen stage);
            default: the part named ``backbone``, ``segformer``, ``encoder`` or ``pixel_level_module``.
        input_size: ``(C, H, W)`` for the dry run (default: the model's metadata, else 224 px).
        guard: fingerprint the pretrained tensors (see :func:`torchgraft.check_pretrained`).
        run: the network's dry run, if one was made already.

    Raises:
        ValueError: the network does not return per-pixel logits, or ``aux`` is unknown.
    """
    if aux not in AUX_CHOICES:
        raise ValueError(f"graft_dense: aux={aux!r}; choose one of {AUX_CHOICES}.")
    size = tuple(input_size) if input_size is not None else infer_input_size(model)
    run = run or _trace(model, size)
    names = segmentation_classifiers(model, run)
    if not names:
        raise ValueError(f"graft_dense: {type(model).__name__} does not return per-pixel logits at {size}.")
    total = sum(p.numel() for p in model.parameters())
    names, removed = _aux_parts(names) if aux == "drop" else (names, [])
    info = GraftInfo(
        source=type(model).__name__,
        method="resegment",
        cut_at=None,
        classifier=tuple(names),
        removed=tuple(removed),
        removed_params=0,  # counted below, once the classifiers are replaced
        input_size=size,
        body_output=None,
        layout="nchw",
        pool="model",
        in_chans=None,
        notes=tuple(f"classifier '{n}' replaced: {n_classes} classes" for n in names)
        + tuple(f"auxiliary head '{n}' dropped" for n in removed),
        n_out=n_classes,
        options={"aux": aux, "backbone": _body_name(model, backbone)},
        dropped=tuple(removed),
    )
    segmenter = _resegmented(model, info, guard=guard)
    added = sum(p.numel() for p in segmenter.head.parameters())
    info.removed_params = total - sum(p.numel() for p in model.parameters()) + added
    return segmenter


def _resegmented(model: nn.Module, info: GraftInfo, *, guard: bool) -> Resegmented:
    """``model`` with the auxiliary heads dropped and new classifiers as ``info`` records."""
    if info.options["aux"] == "drop":
        _drop_aux(model, info.dropped)
    reference = next(model.parameters())
    head = nn.ModuleList()
    for name in info.classifier:
        old: nn.Conv2d = model.get_submodule(name)  # type: ignore[assignment]
        new = nn.Conv2d(
            old.in_channels, info.n_out, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
        )
        head.append(new.to(reference.device, reference.dtype))
        model.set_submodule(name, _Slot(head[-1]))
    segmenter = Resegmented(model, info.options["backbone"], head, info, None)
    info.pretrained = tuple(n for n, _ in segmenter.named_parameters() if not n.startswith("head."))
    info.new = tuple(n for n, _ in segmenter.named_parameters() if n.startswith("head."))
    if guard:
        segmenter.guard = PretrainedGuard.track(segmenter, info.pretrained)
    return segmenter


def rebuild_resegmented(model: nn.Module, info: GraftInfo) -> Resegmented:
    """The new-classifier graft that ``info`` records, rebuilt on ``model`` (a fresh segmentation network of
    the same architecture) without a dry run; the new classifiers' weights fresh, no guard."""
    return _resegmented(model, info, guard=False)
