"""``torchgraft inspect MODEL --task detect``: the detector ``train --task detect`` would build, without weights.

A backbone gets :func:`torchgraft.graft_detector` (``--detector``: FCOS, RetinaNet or Faster R-CNN) at the input
size ``train`` grafts it at; a torchvision detector builder (``fasterrcnn_*``, ``retinanet_*``, ``fcos_*``,
``ssd*``, ``maskrcnn_*``) gets :func:`torchgraft.regraft_detection`. Both are built with random weights on the CPU
(nothing is downloaded; timm's frozen BatchNorm cannot be made on the meta device). :func:`detection_record`
reads what the detector is from its modules, and :func:`detection_lines` prints it: the taps and the FPN that
reads them, the detector head, the class layers and the background convention, the BatchNorm layers and the
image sizes of the detector's own transform.
"""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

__all__ = ["build_inspected_detector", "check_detector_option", "detection_lines", "detection_record"]


def check_detector_option(args: argparse.Namespace) -> None:
    """Refuse ``--detector`` outside ``--task detect`` (it names the detector grafted on a backbone)."""
    if args.detector is not None and args.task != "detect":
        raise ValueError(
            f"--detector {args.detector} applies to --task detect (the detector grafted on the backbone); "
            f"add --task detect, or leave --detector out."
        )


def build_inspected_detector(args: argparse.Namespace) -> nn.Module:
    """The detector ``torchgraft train --task detect --model TARGET [--detector HEAD]`` builds for ``--n-out``
    object classes, with random weights on the CPU.

    Raises:
        ValueError: options of a classification head (``--cut``, ``--pool``, ``--in-chans``, ``--head``), or
            ``--detector`` / ``--input-size`` with a torchvision detector (it keeps its own head and sizes).

    Example:
        >>> model = build_inspected_detector(parser.parse_args(["inspect", "resnet18", "--task", "detect"]))
        >>> model.info.method
        'detector'
    """
    from torchgraft.data.preprocess import preprocessing_for
    from torchgraft.grafting.detector import graft_detector
    from torchgraft.grafting.redetect import regraft_detection
    from torchgraft.weights.zoo import build_model, torchvision_detectors

    options = (("--cut", args.cut), ("--pool", args.pool), ("--in-chans", args.in_chans))
    given = [flag for flag, value in options if value is not None] + (["--head"] if args.head != "linear" else [])
    if given:
        raise ValueError(f"--task detect builds a detector on the taps it finds; {', '.join(given)} do not apply.")
    if args.target in torchvision_detectors():
        flags = [f for f, v in (("--detector", args.detector), ("--input-size", args.input_size)) if v is not None]
        if flags:
            raise ValueError(
                f"{args.target} is a detector already: it is re-headed (its class layers replaced) and keeps its "
                f"own head and image sizes, so {', '.join(flags)} do not apply; leave them out, or give a backbone "
                f"(resnet50, timm/efficientnet_lite0) to graft --detector on."
            )
        return regraft_detection(build_model(args.target, device="cpu"), args.n_out, guard=False)
    if args.input_size is not None:
        size = tuple(args.input_size)
    else:  # as train grafts it: the weights' input size (train's --size)
        side = preprocessing_for(args.target).size
        size = (3, side, side)
    source = build_model(args.target, device="cpu")
    return graft_detector(source, args.n_out, head=args.detector or "fcos", input_size=size, guard=False)


def _fpn(model: nn.Module) -> dict[str, Any] | None:
    """The torchvision ``FeaturePyramidNetwork`` in the detector's backbone: its in/out channels, extra levels."""
    from torchvision.ops import FeaturePyramidNetwork

    fpn = next((m for m in model.backbone.modules() if isinstance(m, FeaturePyramidNetwork)), None)
    if fpn is None:
        return None
    extra = fpn.extra_blocks
    return {
        "type": type(fpn).__name__,
        "in_channels": [int(block[0].in_channels) for block in fpn.inner_blocks],
        "out_channels": int(fpn.layer_blocks[0][0].out_channels),
        "extra_levels": type(extra).__name__ if extra is not None else None,
        "parameters": sum(p.numel() for p in fpn.parameters()),
    }


def _batch_norm(model: nn.Module) -> dict[str, int]:
    """How many BatchNorm layers are frozen (torchvision's ``FrozenBatchNorm2d``, timm's ``FrozenBatchNormAct2d``)
    and how many still update their statistics in training."""
    frozen = sum("FrozenBatchNorm" in type(m).__name__ for m in model.modules())
    training = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return {"frozen": frozen, "training": training}


def _class_layer(model: nn.Module, name: str, per_class: int, outputs: int) -> dict[str, Any]:
    layer = model.get_submodule(name)
    width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return {
        "name": name,
        "type": type(layer).__name__,
        "out": int(width),
        "per_class": per_class,
        "anchors": int(width) // (outputs * per_class),
        "parameters": sum(p.numel() for p in layer.parameters()),
    }


def detection_record(model: nn.Module) -> dict[str, Any]:
    """What the detector ``model`` (:func:`~torchgraft.graft_detector`'s or :func:`~torchgraft.regraft_detection`'s
    output) is, as data: ``detector`` (its class and head kind), ``classes`` (object classes), ``label_offset``,
    ``outputs`` (class outputs, background included), ``taps``, ``neck``, ``class_layers``, ``batch_norm``
    (policy, frozen and training counts) and ``images`` (its transform's sizes)."""
    from torchgraft.grafting.redetect import class_layers, label_offset

    info = model.info
    offset = label_offset(model)
    outputs = info.n_out + offset + int(bool(info.options.get("no_object")))
    transform = model.transform
    fixed = transform.fixed_size
    return {
        "detector": type(model).__name__,
        "head": info.options.get("head"),
        "grafted": info.method == "detector",
        "classes": info.n_out,
        "label_offset": offset,
        "outputs": outputs,
        "taps": [vars(tap) for tap in info.taps] if info.method == "detector" else [],
        "neck": _fpn(model),
        "class_layers": [_class_layer(model, name, per, outputs) for name, per in class_layers(model)],
        "batch_norm": {"policy": info.options.get("batch_norm"), **_batch_norm(model)},
        "images": {
            "min_size": int(transform.min_size[-1]),
            "max_size": int(transform.max_size),
            "fixed_size": [int(fixed[1]), int(fixed[0])] if fixed else None,  # (height, width)
            "mean": [float(v) for v in transform.image_mean],
            "std": [float(v) for v in transform.image_std],
        },
    }


def _tap_table(taps: list[dict[str, Any]]) -> list[str]:
    rows = [["tap", "stride", "channels", "layout"]]
    rows += [[str(t["name"]), str(t["stride"]), str(t["channels"]), str(t["layout"])] for t in taps]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    cells = [[c.ljust(w) if i in (0, 3) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
             for row in rows]  # fmt: skip
    return [("    " + "  ".join(row)).rstrip() for row in cells]


def _batch_norm_line(record: dict[str, Any]) -> str:
    norm = record["batch_norm"]
    if not norm["frozen"] and not norm["training"]:
        return "none in the backbone (it normalises with LayerNorm or not at all): nothing to freeze"
    counts = f"{norm['frozen']} frozen (FrozenBatchNorm2d), {norm['training']} updating their statistics"
    if norm["policy"] == "frozen":
        return f"{counts}: graft_detector's default (batch_norm='frozen'; 'train' keeps them as they are)"
    if norm["policy"] == "train":
        return f"{counts}: batch_norm='train' keeps them as they are"
    return f"{counts} as built without weights (torchvision's pretrained detectors come with FrozenBatchNorm2d)"


def detection_lines(record: dict[str, Any]) -> list[str]:
    """The ``detection`` block ``inspect`` prints under the graft: :func:`detection_record` as lines."""
    offset, classes = record["label_offset"], record["classes"]
    how = "grafted on the backbone" if record["grafted"] else "re-headed (its class layers replaced)"
    if offset:
        background = f"index 0 is the background: class c of your data is label c + {offset}"
    else:
        background = "no background class: class c of your data is label c"
    lines = [
        "",
        "  detection",
        f"  detector     {record['detector']} ({record['head']}), {how}, for {classes} object classes",
        f"  background   {background} (torchgraft.label_offset: {offset})",
    ]
    for layer in record["class_layers"]:
        anchors = f"{layer['anchors']} anchors x " if layer["type"] != "Linear" else ""
        lines.append(
            f"  class layer  {layer['name']}: {layer['type']}, {layer['out']} outputs = {anchors}"
            f"{record['outputs']} classes x {layer['per_class']} ({layer['parameters']:,} parameters)"
        )
    if record["taps"]:
        lines += ["  taps         what the FPN reads, finest first", *_tap_table(record["taps"])]
    neck = record["neck"]
    if neck is not None:
        extra = f", extra levels {neck['extra_levels']}" if neck["extra_levels"] else ""
        lines.append(
            f"  neck         {neck['type']}: in {tuple(neck['in_channels'])} -> {neck['out_channels']} channels"
            f"{extra} ({neck['parameters']:,} parameters)"
        )
    images = record["images"]
    sizes = f"shorter side resized to {images['min_size']}, longer side at most {images['max_size']}"
    if images["fixed_size"]:
        sizes = f"every image resized to {images['fixed_size'][0]}x{images['fixed_size'][1]}"
    lines += [
        f"  batch norm   {_batch_norm_line(record)}",
        f"  images       {sizes}, normalised inside the model (mean {_rounded(images['mean'])}, "
        f"std {_rounded(images['std'])}): give it images in [0, 1]",
    ]
    return lines


def _rounded(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
