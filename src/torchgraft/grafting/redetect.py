"""Pretrained detectors re-headed for your classes: new class layers, the background convention handled, and
the rows of classes that keep their names copied from the old head.

Works on every torchvision detector (``fasterrcnn_*``, ``maskrcnn_*``, ``keypointrcnn_*``, ``retinanet_*``,
``fcos_*``, ``ssd300_vgg16``, ``ssdlite320_*``) and on :func:`~torchgraft.graft_detector`'s output. What is a
class layer, per family (torchvision's own layouts, read from the modules):

* Faster / Mask / Keypoint R-CNN: ``roi_heads.box_predictor`` (``cls_score`` and the per-class
  ``bbox_pred``) and Mask R-CNN's ``roi_heads.mask_predictor.mask_fcn_logits``; index 0 is the background;
* RetinaNet, FCOS: ``head.classification_head.cls_logits`` (anchor-major channels); no background class;
* SSD, SSDLite: each level's classification convolution (anchor-major); index 0 is the background;
* Hugging Face DETR-style detectors with a ``class_labels_classifier`` (DETR, Conditional DETR, YOLOS, Table
  Transformer): its last linear layer; DETR's and YOLOS' "no object" output is the *last* one and stays; the
  config's ``id2label`` names the classes and is rewritten.

You give your object classes only (a count or names): the head gets one more output where the family has a
background class (:func:`label_offset` says which index your class ``c`` has). Box regression that does not
depend on the class (RetinaNet, FCOS, SSD, the RPN) stays pretrained.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch
from torch import nn

from torchgraft.grafting.dryrun import infer_input_size
from torchgraft.grafting.guard import PretrainedGuard
from torchgraft.grafting.info import GraftInfo

__all__ = [
    "class_layers",
    "is_detector",
    "is_torchvision_detector",
    "label_offset",
    "rebuild_redetected",
    "regraft_detection",
]

_BACKGROUND = "__background__"
_NO_OBJECT = "__no_object__"  # the last output of DETR's and YOLOS' classifiers
_NOT_CLASSES = {"__background__", "__no_object__", "n/a", "no person"}  # placeholders: never a class of yours
_COCO_OUTPUTS = 91  # every torchvision COCO detection head (80 classes, background and N/A placeholders)


def class_count(caller: str, classes: int | Sequence[str]) -> tuple[int, tuple[str, ...] | None]:
    """``(number of object classes, their names or None)`` from an int or a list of names, checked."""
    if isinstance(classes, str) or not isinstance(classes, int | Sequence):
        raise TypeError(f"{caller}: classes must be an int or a list of class names, got {classes!r}.")
    if isinstance(classes, bool) or (isinstance(classes, int) and classes < 1):
        raise ValueError(f"{caller}: the number of object classes must be a positive int, got {classes!r}.")
    if isinstance(classes, int):
        return classes, None
    names = tuple(str(name) for name in classes)
    if not names:
        raise ValueError(f"{caller}: the list of class names is empty; give at least one object class.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{caller}: class names {repeated} appear more than once; each class needs its own name.")
    return len(names), names


def _kind(model: nn.Module) -> str | None:
    """``"rcnn"``, ``"retinanet"``, ``"fcos"``, ``"ssd"`` for a torchvision detector, ``"hf"`` for a Hugging Face
    DETR-style detector, else ``None``."""
    if _hf_classifier(model) is not None:
        return "hf"
    if "torchvision" not in sys.modules:  # nothing can be a torchvision detector: do not import it
        return None
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    for kind, cls in (("rcnn", GeneralizedRCNN), ("retinanet", RetinaNet), ("fcos", FCOS), ("ssd", SSD)):
        if isinstance(model, cls):
            return kind
    return None


def _hf_classifier(model: nn.Module) -> str | None:
    """The name of the last linear layer of a Hugging Face ``*ForObjectDetection``'s ``class_labels_classifier``."""
    if not type(model).__name__.endswith("ForObjectDetection") or getattr(model, "config", None) is None:
        return None
    for name, module in model.named_modules():
        if name.split(".")[-1] == "class_labels_classifier":
            linears = [f"{name}.{n}" if n else name for n, m in module.named_modules() if isinstance(m, nn.Linear)]
            return linears[-1] if linears else None
    return None


def is_torchvision_detector(model: nn.Module) -> bool:
    """Whether ``model`` is a torchvision detector (what :mod:`torchgraft.tune.detection` splits)."""
    return _kind(model) not in (None, "hf")


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is a detector :func:`regraft_detection` re-heads: torchvision's (Faster/Mask/Keypoint
    R-CNN, RetinaNet, FCOS, SSD; grafted or not) or a Hugging Face DETR-style one."""
    return _kind(model) is not None


def label_offset(model: nn.Module) -> int:
    """The label a detector gives your first class: 1 where index 0 is the background (Faster/Mask/Keypoint
    R-CNN, SSD), 0 where there is none (RetinaNet, FCOS, Hugging Face DETR-style detectors, whose "no object"
    output is the last). Class ``c`` of your data is label ``c + offset``.

    Raises:
        TypeError: ``model`` is not a detector.

    Example:
        >>> label_offset(graft_detector(backbone, 3, head="fasterrcnn"))
        1
    """
    kind = _kind(model)
    if kind is None:
        raise TypeError(f"label_offset: {type(model).__name__} is not a torchvision or Hugging Face detector.")
    return 1 if kind in ("rcnn", "ssd") else 0


def _not_a_detector(model: nn.Module) -> TypeError:
    return TypeError(
        f"regraft_detection: {type(model).__name__} is not a torchvision detector (Faster/Mask/Keypoint R-CNN, "
        f"RetinaNet, FCOS, SSD) nor a Hugging Face one with a class_labels_classifier; graft a detector onto a "
        f"backbone with torchgraft.graft_detector(model, classes)."
    )


def class_layers(model: nn.Module) -> list[tuple[str, int]]:
    """``(module name, values per class)`` of each class layer of the torchvision detector ``model``, in
    model order (values per class: 4 for ``bbox_pred``'s box coordinates, else 1).

    Raises:
        TypeError: not a torchvision detector, or one whose class layers are not torchvision's.
    """
    kind = _kind(model)
    if kind is None:
        raise _not_a_detector(model)
    if kind == "hf":
        return [(_hf_classifier(model) or "", 1)]
    if kind == "rcnn":
        predictor = model.roi_heads.box_predictor
        if not isinstance(getattr(predictor, "cls_score", None), nn.Linear):
            raise TypeError(
                f"regraft_detection: {type(model).__name__}.roi_heads.box_predictor is a {type(predictor).__name__}, "
                f"not torchvision's FastRCNNPredictor (cls_score, bbox_pred); replace it yourself."
            )
        layers = [("roi_heads.box_predictor.cls_score", 1), ("roi_heads.box_predictor.bbox_pred", 4)]
        if getattr(model.roi_heads, "mask_predictor", None) is not None:
            layers.append(("roi_heads.mask_predictor.mask_fcn_logits", 1))
        return layers
    if kind in ("retinanet", "fcos"):
        return [("head.classification_head.cls_logits", 1)]
    layers = []
    for i, block in enumerate(model.head.classification_head.module_list):
        name = f"head.classification_head.module_list.{i}"
        layers.append((name if isinstance(block, nn.Conv2d) else f"{name}.{len(block) - 1}", 1))
    return layers


def _old_count(model: nn.Module, kind: str) -> int:
    if kind == "hf":
        return model.get_submodule(_hf_classifier(model) or "").out_features
    if kind == "rcnn":
        return model.roi_heads.box_predictor.cls_score.out_features
    if kind == "ssd":
        return model.head.classification_head.num_columns
    return model.head.classification_head.num_classes


def _coco_names(model: nn.Module, count: int) -> tuple[str, ...] | None:
    """COCO's names (torchvision's weights metadata, read without a download) for a head of COCO's size."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, KeypointRCNN_ResNet50_FPN_Weights
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNN

    if count == _COCO_OUTPUTS:
        return tuple(FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"])
    if isinstance(model, KeypointRCNN) and count == 2:
        return tuple(KeypointRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"])
    return None


def _hf_no_object(model: nn.Module) -> bool:
    """Whether a Hugging Face detector's classifier has a last "no object" output (DETR, YOLOS)."""
    return _old_count(model, "hf") == len(model.config.id2label) + 1


def _old_names(
    model: nn.Module, count: int, background: bool, old_classes: Sequence[str] | None
) -> tuple[str, ...] | None:
    """The old head's name per output (background included), or ``None`` when nothing records them."""
    if old_classes is None and _kind(model) == "hf":  # the config names them; "no object" is the last output
        labels = model.config.id2label
        names = tuple(str(labels[i]) for i in sorted(labels, key=int))
        return (*names, _NO_OBJECT) if _hf_no_object(model) else names
    if old_classes is None:
        info = getattr(model, "info", None)
        if not isinstance(info, GraftInfo):  # a torchvision detector as built: COCO's head, if it has its size
            return _coco_names(model, count)
        recorded = info.options.get("classes")  # ours: the names given, never COCO's by size
        if not recorded:
            return None
        old_classes = tuple(recorded)
    names = tuple(str(name) for name in old_classes)
    if not names:
        return None
    if background and len(names) == count - 1:
        names = (_BACKGROUND, *names)
    elif _kind(model) == "hf" and _hf_no_object(model) and len(names) == count - 1:
        names = (*names, _NO_OBJECT)
    if len(names) != count:
        raise ValueError(
            f"regraft_detection: old_classes has {len(old_classes)} names but the old head has {count} outputs"
            f"{' (background at 0 included)' if background else ''}; give one name per output."
        )
    return names


def _row_map(new: Sequence[str], old: Sequence[str] | None, keep: set[str], background: bool) -> dict[int, int]:
    """New output index -> old output index for the classes that keep their names (and the background)."""
    rows = {0: 0} if background else {}
    if old is None:
        return rows
    where: dict[str, int] = {}
    for i, name in enumerate(old):
        where.setdefault(name.casefold().strip(), i)
    for j, name in enumerate(new):
        key = name.casefold().strip()
        if key in keep and key not in _NOT_CLASSES and key in where:
            rows[j] = where[key]
    return rows


def _new_layer(old: nn.Module, kind: str, per_class: int, old_count: int, count: int, name: str) -> nn.Module:
    """A fresh layer like ``old`` with ``count`` classes, initialised as torchvision initialises it."""
    if isinstance(old, nn.Linear):
        layer: nn.Module = nn.Linear(old.in_features, count * per_class)
    else:
        anchors = old.out_channels // (old_count * per_class)
        layer = nn.Conv2d(old.in_channels, anchors * count * per_class, old.kernel_size, old.stride, old.padding)
        if name.endswith("mask_fcn_logits"):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        elif kind == "ssd":
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        else:  # RetinaNet / FCOS: the focal loss' prior of 0.01
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, -math.log((1 - 0.01) / 0.01))
    return layer.to(old.weight.device, old.weight.dtype)


def _copy_rows(new: nn.Module, old: nn.Module, rows: dict[int, int], per_class: int, old_count: int) -> None:
    """Copy each kept class's outputs (for every anchor, every box coordinate) from ``old`` into ``new``."""
    if not rows:
        return
    anchors = old.weight.shape[0] // (old_count * per_class)
    count = new.weight.shape[0] // (anchors * per_class)
    with torch.no_grad():
        for tensor_name in ("weight", "bias"):
            source, target = getattr(old, tensor_name), getattr(new, tensor_name)
            rest = source.shape[1:]
            source = source.view(anchors, old_count, per_class, *rest)
            view = target.view(anchors, count, per_class, *rest)
            for j, i in rows.items():
                view[:, j] = source[:, i]


def regraft_detection(
    model: nn.Module,
    classes: int | Sequence[str] | None = None,
    *,
    class_subset: Sequence[str] | None = None,
    old_classes: Sequence[str] | None = None,
    guard: bool = True,
) -> nn.Module:
    """Give the pretrained detector ``model`` new class layers for your object classes, in place.

    Rows of classes that keep their names are copied from the old head (their scores, per-class boxes and
    masks start where the pretrained detector was); the background row is always kept; other rows start as
    torchvision initialises them. Everything else stays pretrained.

    Args:
        model: a torchvision detector (pretrained), :func:`~torchgraft.graft_detector`'s output, or a Hugging
            Face DETR-style detector (its config's ``id2label`` names the old classes and is rewritten).
        classes: your object classes (no background): their number, or their names (names let the rows of
            matching old classes be kept). May be left out when ``class_subset`` is given.
        class_subset: names of old classes to keep (each must be one of the old head's classes): the new head
            has exactly these when ``classes`` is not given, and only these keep their rows when it is.
        old_classes: the old head's class names, one per output (background included or not); default: the
            names the graft recorded, else COCO's (torchvision's weights metadata) for a head with COCO's
            91 outputs (every torchvision COCO weight); ``[]`` keeps no row but the background.
        guard: fingerprint the pretrained tensors (see :func:`torchgraft.check_pretrained`).

    Returns:
        ``model``, with ``.info`` (its record: ``options["classes"]``, ``["kept"]``) and ``.guard``.

    Raises:
        TypeError: ``model`` is not a detector this function knows.
        ValueError: no classes, a count below 1, repeated names, names not among the old classes, or
            ``old_classes`` of the wrong length.

    Example:
        >>> model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights="DEFAULT")
        >>> regraft_detection(model, ["person", "dog", "helmet"])   # person and dog keep COCO's rows
        >>> model.roi_heads.box_predictor.cls_score.out_features   # background + 3
        4
    """
    kind = _kind(model)
    if kind is None:
        raise _not_a_detector(model)
    if classes is None and class_subset is None:
        raise ValueError("regraft_detection: give classes (a count or names) or class_subset (old class names).")
    background = kind in ("rcnn", "ssd")
    old_count = _old_count(model, kind)
    old = _old_names(model, old_count, background, old_classes)
    count, names = class_count("regraft_detection", classes if classes is not None else class_subset)
    keep = {name.casefold().strip() for name in names or ()}
    if class_subset is not None:
        subset = [str(name) for name in class_subset]
        known = {name.casefold().strip() for name in old or ()}
        unknown = [name for name in subset if name.casefold().strip() not in known]
        if unknown:
            shown = ", ".join(n for n in (old or ())[:12] if n.casefold() not in _NOT_CLASSES)
            raise ValueError(
                f"regraft_detection: class_subset names {unknown}, which the old head does not have "
                f"({shown or 'no names recorded: pass old_classes='} ...)."
            )
        if names is None:
            raise ValueError("regraft_detection: with class_subset, give classes as names (or leave it out).")
        outside = [name for name in subset if name.casefold().strip() not in keep]
        if outside:
            raise ValueError(
                f"regraft_detection: class_subset names {outside}, which are not in classes {list(names)}; add them."
            )
        keep = {name.casefold().strip() for name in subset}
    no_object = kind == "hf" and _hf_no_object(model)
    own = names or tuple(f"class {i}" for i in range(count))
    new_names = ((_BACKGROUND,) if background else ()) + own + ((_NO_OBJECT,) if no_object else ())
    rows = _row_map(new_names, old, keep, background)
    if no_object:  # DETR's "no object" output is the last, old and new
        rows[len(new_names) - 1] = old_count - 1
    total = len(new_names)
    replaced = []
    removed = sum(p.numel() for name, _ in class_layers(model) for p in model.get_submodule(name).parameters())
    for name, per_class in class_layers(model):
        layer = model.get_submodule(name)
        fresh = _new_layer(layer, kind, per_class, old_count, total, name)
        _copy_rows(fresh, layer, rows, per_class, old_count)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, fresh)
        replaced.append(name)
    if kind in ("retinanet", "fcos"):
        model.head.classification_head.num_classes = total
    elif kind == "ssd":
        model.head.classification_head.num_columns = total
    elif kind == "hf":  # the config names the classes; the loss reads their number from it
        model.config.id2label = dict(enumerate(own))
        model.config.label2id = {name: i for i, name in enumerate(own)}
    kept = tuple(new_names[j] for j in sorted(rows) if new_names[j] not in (_BACKGROUND, _NO_OBJECT))
    return _record(model, kind, count, names, kept, tuple(replaced), removed, guard=guard)


def _record(
    model: nn.Module,
    kind: str,
    count: int,
    names: tuple[str, ...] | None,
    kept: tuple[str, ...],
    replaced: tuple[str, ...],
    removed: int,
    *,
    guard: bool,
) -> nn.Module:
    new = tuple(n for n, _ in model.named_parameters() if any(n.startswith(f"{layer}.") for layer in replaced))
    info = getattr(model, "info", None)
    if isinstance(info, GraftInfo) and info.method == "detector":  # a graft of ours: the same record, new classes
        info.n_out = count
        info.options = {**info.options, "classes": names, "kept": kept}
        info.new = tuple(n for n, _ in model.named_parameters() if n not in set(info.pretrained))
    else:
        transform = getattr(model, "transform", None)  # torchvision's; a Hugging Face detector has none
        if transform is None:
            height, width = infer_input_size(model)[1:]
        elif transform.fixed_size:
            height, width = transform.fixed_size[1], transform.fixed_size[0]
        else:
            height = width = transform.min_size[-1]
        info = GraftInfo(
            source=type(model).__name__,
            method="redetect",
            cut_at=None,
            classifier=replaced,
            removed=replaced,
            removed_params=removed,
            input_size=(3, int(height), int(width)),
            body_output=None,
            layout=None,
            pool="model",
            in_chans=None,
            notes=(f"rows kept from the old head: {', '.join(kept) or 'none'}",),
            n_out=count,
            options={
                "head": kind,
                "classes": names,
                "background": kind in ("rcnn", "ssd"),
                "no_object": kind == "hf" and model.get_submodule(replaced[0]).out_features == count + 1,
                "kept": kept,
            },
        )
        info.pretrained = tuple(n for n, _ in model.named_parameters() if n not in set(new))
        info.new = new
    model.info = info
    model.guard = PretrainedGuard.track(model, info.pretrained) if guard else None
    return model


def rebuild_redetected(model: nn.Module, info: GraftInfo) -> nn.Module:
    """The re-headed detector that ``info`` records, on ``model`` (a fresh detector of the same architecture):
    the same modules under the same names, class layers freshly initialised; no guard."""
    classes = info.options.get("classes") or info.n_out
    return regraft_detection(model, classes, old_classes=(), guard=False)
