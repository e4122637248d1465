"""Detectors on any pretrained backbone: the dense graft's taps, torchvision's FPN and a torchvision detector.

:func:`graft_detector` finds the backbone's multi-scale features by the same dry run as
:func:`~torchgraft.graft_dense` (CNNs, channels-last stages, token grids), cuts it after its deepest tap, and
gives the taps to :class:`torchvision.ops.FeaturePyramidNetwork` with the extra levels torchvision's own
builders use (``LastLevelP6P7`` for FCOS and RetinaNet, ``LastLevelMaxPool`` for Faster R-CNN); the pyramid
feeds torchvision's ``FCOS``, ``RetinaNet`` or ``FasterRCNN``, with their anchors, losses, transform and
post-processing. No detection maths lives here: :class:`TapPyramid` is the backbone torchvision's detectors
take (a module with ``out_channels`` returning an ``OrderedDict`` of maps).

The result *is* the torchvision detector (``model(images, targets)`` gives the loss dict in training mode,
``model(images)`` the boxes in evaluation mode), with torchgraft's record as ``model.info`` (a
:class:`~torchgraft.grafting.info.GraftInfo`, ``method="detector"``) and the pretrained-weights guard as
``model.guard``. :func:`rebuild_detector` makes the same model again from the record, without a dry run.

**Who normalises.** The detector does: torchvision's ``GeneralizedRCNNTransform`` resizes, normalises with the
backbone's pretrained mean/std (timm's ``pretrained_cfg``, else ImageNet's) and batches the images, so a
detector takes float images in ``[0, 1]``, as every torchvision detector does. Data pipelines feeding a
detector must therefore *not* normalise (``normalize=False`` gives an identity normalisation for pipelines
that already do). Keeping it in the model also puts it in the exported program.

**BatchNorm.** Detection trains on a few large images per batch, where BatchNorm statistics are noise; as
torchvision's pretrained detectors (and detectron2, MMDetection) do, the backbone's ``BatchNorm2d`` layers
become :class:`torchvision.ops.FrozenBatchNorm2d` (statistics and affine fixed, for good) by default;
``batch_norm="train"`` keeps them as they are (then :func:`torchgraft.freeze`'s BatchNorm policy governs them).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from torchgraft.choices import DETECTOR_BATCH_NORM, DETECTOR_HEADS
from torchgraft.grafting.body import Body, rebuild_body
from torchgraft.grafting.dense import _keep_output, _take_output, _to_nchw, network_taps, tap_note, tapped_info
from torchgraft.grafting.dryrun import infer_input_size
from torchgraft.grafting.guard import PretrainedGuard
from torchgraft.grafting.info import GraftInfo
from torchgraft.grafting.redetect import class_count, is_detector, regraft_detection
from torchgraft.grafting.surgery import _trace, cut_body
from torchgraft.grafting.taps import Tap, find_taps

__all__ = [
    "DETECTOR_BATCH_NORM",
    "DETECTOR_HEADS",
    "TapPyramid",
    "freeze_batch_norm",
    "graft_detector",
    "rebuild_detector",
]

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# per head: the finest stride the pyramid starts at, how many taps it reads (torchvision's returned_layers)
_PYRAMID = {"fcos": (8, 3), "retinanet": (8, 3), "fasterrcnn": (4, 4)}
_MADE_HERE = ("num_classes", "min_size", "max_size", "image_mean", "image_std", "fixed_size", "size_divisible",
              "anchor_generator", "rpn_anchor_generator", "box_roi_pool")  # fmt: skip


class TapPyramid(nn.Module):
    """The backbone a torchvision detector takes: the cut pretrained network (``body``), its taps as
    ``(N, C, h, w)`` maps, and a :class:`torchvision.ops.FeaturePyramidNetwork` (``fpn``) over them.

    ``forward(x)`` returns the pyramid as an ``OrderedDict`` (``"0"``, ``"1"``, ... finest first, then the
    extra levels: ``"p6"``, ``"p7"`` or ``"pool"``); ``out_channels`` is the pyramid's width. Parameter names
    follow torchvision's ``BackboneWithFPN`` (``backbone.body.*``, ``backbone.fpn.*``).
    """

    def __init__(self, body: Body, taps: Sequence[Tap], fpn: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.taps = tuple(taps)
        self.out_channels = out_channels
        for tap in self.taps[:-1]:  # the deepest is what the body returns
            body.model.get_submodule(tap.name).register_forward_hook(_keep_output)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """The pyramid's maps for a batch ``x`` of shape ``(N, C, H, W)`` (already normalised and padded)."""
        deepest = self.body(x)
        size = (x.shape[-2], x.shape[-1])
        found = [*(_take_output(self.body.model.get_submodule(t.name)) for t in self.taps[:-1]), deepest]
        pairs = enumerate(zip(found, self.taps, strict=True))
        maps = OrderedDict((str(i), _to_nchw(feature, tap, size)) for i, (feature, tap) in pairs)
        return self.fpn(maps)


def freeze_batch_norm(model: nn.Module) -> int:
    """Replace every ``BatchNorm2d`` (and ``SyncBatchNorm``) under ``model`` by a
    :class:`torchvision.ops.FrozenBatchNorm2d` with the same statistics and affine values, in place (timm's
    ``BatchNormAct2d`` by timm's ``FrozenBatchNormAct2d``, which keeps its activation). Returns how many
    were replaced. Layers without running statistics are left as they are.

    Example:
        >>> freeze_batch_norm(resnet)   # resnet.bn1 is now a FrozenBatchNorm2d
        53
    """
    from torchvision.ops import FrozenBatchNorm2d

    count = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.BatchNorm2d | nn.SyncBatchNorm) or module.running_mean is None:
            continue
        if type(module) in (nn.BatchNorm2d, nn.SyncBatchNorm):
            frozen: nn.Module = FrozenBatchNorm2d(module.num_features, eps=module.eps)
            frozen = frozen.to(module.running_mean.device, module.running_mean.dtype)
            with torch.no_grad():
                if module.affine:
                    frozen.weight.copy_(module.weight)
                    frozen.bias.copy_(module.bias)
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        elif type(module).__module__.startswith("timm."):
            from timm.layers import freeze_batch_norm_2d

            frozen = freeze_batch_norm_2d(module)
        else:  # a subclass whose forward may do more than normalise: not ours to rewrite
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, frozen)
        count += 1
    return count


def _check(head: str, batch_norm: str, classes: int | Sequence[str]) -> tuple[int, tuple[str, ...] | None]:
    if head not in DETECTOR_HEADS:
        raise ValueError(f"graft_detector: head={head!r}; choose one of {DETECTOR_HEADS}.")
    if batch_norm not in DETECTOR_BATCH_NORM:
        raise ValueError(f"graft_detector: batch_norm={batch_norm!r}; choose one of {DETECTOR_BATCH_NORM}.")
    return class_count("graft_detector", classes)


def _pyramid_taps(taps: Sequence[Tap], head: str) -> tuple[Tap, ...]:
    """The taps the pyramid reads: the deepest few at or above the head's finest stride (the deepest alone
    when the network has a single scale, as a plain ViT)."""
    finest, count = _PYRAMID[head]
    coarse = [tap for tap in taps if tap.stride >= finest]
    return tuple(coarse[-count:]) if coarse else (taps[-1],)


def _fixed_size(model: nn.Module, size: tuple[int, ...], taps: Sequence[Tap]) -> bool:
    """Whether the network only runs at its own input size (a ViT's position embedding, a Swin window
    grid): a second dry run, 32 px larger, fails or finds other stage outputs."""
    bigger = (*size[:-2], size[-2] + 32, size[-1] + 32)
    try:
        found = find_taps(_trace(model, bigger), bigger)
    except Exception:  # the network refuses the other size
        return True
    return [t.name for t in found] != [t.name for t in taps]


def _anchors(head: str, strides: Sequence[int]) -> Any:
    """torchvision's anchor generator for the pyramid's levels, sized per stride as torchvision's builders
    size them (FCOS: one anchor of the stride; RetinaNet: 4x the stride at 3 scales and 3 ratios; Faster
    R-CNN: 8x the stride at 3 ratios), so the standard strides give torchvision's own anchors."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    if head == "fcos":
        return AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    if head == "retinanet":
        sizes = tuple((4 * s, int(4 * s * 2 ** (1 / 3)), int(4 * s * 2 ** (2 / 3))) for s in strides)
        return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
    return AnchorGenerator(tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))


def _build(body: Body, info: GraftInfo) -> nn.Module:
    """The pyramid and the torchvision detector that ``info`` records, on ``body``."""
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    options = info.options
    head, channels = options["head"], int(options["channels"])
    extra = LastLevelMaxPool() if head == "fasterrcnn" else LastLevelP6P7(channels, channels)
    fpn = FeaturePyramidNetwork([t.channels for t in info.taps], channels, extra_blocks=extra)
    reference = next(body.parameters(), None)
    if reference is not None:
        fpn = fpn.to(reference.device, reference.dtype)
    backbone = TapPyramid(body, info.taps, fpn, channels)
    strides = [t.stride for t in info.taps]
    strides += [strides[-1] * 2] if head == "fasterrcnn" else [strides[-1] * 2, strides[-1] * 4]
    transform: dict[str, Any] = {
        "min_size": options["min_size"],
        "max_size": options["max_size"],
        "image_mean": list(options["image_mean"]),
        "image_std": list(options["image_std"]),
    }
    if options.get("fixed_size"):
        height, width = options["fixed_size"]
        transform["fixed_size"] = (width, height)  # torchvision's order
        transform["size_divisible"] = 1  # every image has that size: no padding the backbone would refuse
    extra_options = dict(options.get("detector_options") or {})
    if head == "fcos":
        model: nn.Module = FCOS(
            backbone, info.n_out, anchor_generator=_anchors(head, strides), **transform, **extra_options
        )
    elif head == "retinanet":
        model = RetinaNet(backbone, info.n_out, anchor_generator=_anchors(head, strides), **transform, **extra_options)
    else:
        pool = MultiScaleRoIAlign([str(i) for i in range(len(info.taps))], output_size=7, sampling_ratio=2)
        model = FasterRCNN(
            backbone,
            info.n_out + 1,  # index 0 is the background class
            rpn_anchor_generator=_anchors(head, strides),
            box_roi_pool=pool,
            **transform,
            **extra_options,
        )
    if reference is not None:  # the new parts on the backbone's device and dtype
        for name, child in model.named_children():
            if name != "backbone":
                child.to(reference.device, reference.dtype)
    return model


def _finish(model: nn.Module, info: GraftInfo, *, guard: bool) -> nn.Module:
    info.pretrained = tuple(n for n, _ in model.named_parameters() if n.startswith("backbone.body."))
    info.new = tuple(n for n, _ in model.named_parameters() if not n.startswith("backbone.body."))
    model.info = info
    model.guard = PretrainedGuard.track(model, info.pretrained) if guard else None
    return model


def _image_stats(model: nn.Module, channels: int, normalize: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not normalize:
        return (0.0,) * channels, (1.0,) * channels
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("mean") and len(cfg["mean"]) == channels:
        return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    if channels == 3:
        return _IMAGENET_MEAN, _IMAGENET_STD
    return (0.5,) * channels, (0.25,) * channels


def graft_detector(
    model: nn.Module,
    classes: int | Sequence[str],
    *,
    head: str = "fcos",
    input_size: Sequence[int] | None = None,
    channels: int = 256,
    batch_norm: str = "frozen",
    normalize: bool = True,
    min_size: int | None = None,
    max_size: int | None = None,
    detector_options: Mapping[str, Any] | None = None,
    guard: bool = True,
) -> nn.Module:
    """Make a torchvision detector for ``classes`` object classes on the pretrained ``model``.

    A torchvision detector given as ``model`` (``fasterrcnn_*``, ``retinanet_*``, ``fcos_*``, ``ssd*``,
    ``maskrcnn_*``, ``keypointrcnn_*``; or a Hugging Face DETR-style detector) keeps everything but its class
    layers, which :func:`~torchgraft.grafting.redetect.regraft_detection` replaces (``head``, ``input_size`` and
    the pyramid options are then not used).

    Args:
        model: a pretrained image network (torchvision, timm, your own; CNN, channels-last or tokens);
            modified in place (it becomes the backbone, cut after its deepest tap).
        classes: the number of object classes, or their names (recorded; background is not a class: Faster
            R-CNN's head gets one more output for it at index 0, see :func:`label_offset`).
        head: ``"fcos"`` (default), ``"retinanet"`` or ``"fasterrcnn"``.
        input_size: ``(C, H, W)`` for the dry run (default: the model's metadata, else 224 px).
        channels: the pyramid's width (torchvision's: 256).
        batch_norm: ``"frozen"`` (default): the backbone's BatchNorm layers become ``FrozenBatchNorm2d``, as in
            torchvision's pretrained detectors; ``"train"``: kept (then ``freeze``'s ``bn=`` policy applies).
        normalize: whether the detector normalises its inputs with the backbone's mean/std (default: it does,
            so feed it images in ``[0, 1]``); ``False`` for pipelines that normalise already.
        min_size: the shorter side images are resized to (default: the dry run's height).
        max_size: the longest side after resizing (default: ``min_size`` x 1333/800, torchvision's ratio).
        detector_options: more keyword options of the torchvision detector (``score_thresh``,
            ``detections_per_img``, ...), JSON values.
        guard: fingerprint the pretrained tensors (see :func:`torchgraft.check_pretrained`).

    Returns:
        The torchvision ``FCOS``/``RetinaNet``/``FasterRCNN`` with ``.info`` (its record) and ``.guard``.
        A network that only runs at its own size (ViT, Swin) gets a transform that resizes every image to it.

    Raises:
        ValueError: an unknown head or batch_norm, a class count below 1, a network with no spatial features.

    Example:
        >>> detector = graft_detector(timm.create_model("convnext_atto"), 3, head="fcos")
        >>> detector.train(); losses = detector(images, targets)     # images in [0, 1]
        >>> detector.eval(); detector(images)[0].keys()
        dict_keys(['boxes', 'scores', 'labels'])
    """
    if is_detector(model):
        return regraft_detection(model, classes, guard=guard)
    n_classes, names = _check(head, batch_norm, classes)
    taken = sorted(set(detector_options or {}) & set(_MADE_HERE))
    if taken:
        raise ValueError(
            f"graft_detector: detector_options {taken} are set by graft_detector itself (from the taps and its "
            f"own options: min_size=, max_size=, normalize=); leave them out of detector_options."
        )
    source = type(model).__name__
    size = tuple(int(v) for v in input_size) if input_size is not None else infer_input_size(model)
    run = _trace(model, size)
    taps = network_taps(model, run, size)
    if not taps:
        raise ValueError(
            f"graft_detector: {source} gives no spatial feature map in a dry run at {size}; it cannot be a "
            f"detection backbone (pass input_size= if it needs another size)."
        )
    chosen = _pyramid_taps(taps, head)
    fixed = _fixed_size(model, size, taps)
    frozen = freeze_batch_norm(model) if batch_norm == "frozen" else 0
    total = sum(p.numel() for p in model.parameters())
    cut = cut_body(model, chosen[-1].name, None, size)
    shorter = int(min_size) if min_size is not None else int(size[-2])
    mean, std = _image_stats(model, int(size[0]), normalize)
    notes = [tap_note(t) for t in chosen]
    notes.append(f"{frozen} BatchNorm layers frozen (FrozenBatchNorm2d)" if frozen else "BatchNorm kept as it is")
    if fixed:
        notes.append(f"the backbone runs at {size[-2]}x{size[-1]} only: every image is resized to it")
    options = {
        "head": head,
        "channels": channels,
        "batch_norm": batch_norm,
        "normalize": normalize,
        "image_mean": mean,
        "image_std": std,
        "min_size": shorter,
        "max_size": int(max_size) if max_size is not None else math.ceil(shorter * 1333 / 800),
        "fixed_size": (int(size[-2]), int(size[-1])) if fixed else None,
        "classes": names,
        "background": head == "fasterrcnn",
        "detector_options": dict(detector_options or {}),
    }
    info = tapped_info(
        source, "detector", cut, total, size, pool=head, taps=chosen, n_out=n_classes, options=options, notes=notes
    )
    return _finish(_build(cut.body, info), info, guard=guard)


def rebuild_detector(model: nn.Module, info: GraftInfo) -> nn.Module:
    """The :func:`graft_detector` detector that ``info`` records, rebuilt on ``model`` (a fresh backbone of the
    same architecture) without a dry run: the same modules under the same names (so a trained state dict
    loads with ``strict=True``), new parts freshly initialised; no guard."""
    if info.options.get("batch_norm") == "frozen":
        freeze_batch_norm(model)  # before the body: its exit hook may sit on a BatchNorm
    return _finish(_build(rebuild_body(model, info), info), info, guard=False)
