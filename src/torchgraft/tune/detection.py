"""Layer groups of a detector: the backbone's own split, then the neck, the proposal network, the box heads and
the class layers.

A torchvision detector (Faster / Mask / Keypoint R-CNN, RetinaNet, FCOS, SSD, and
:func:`~torchgraft.graft_detector`'s output) splits by what each part *is*, read from the modules:

* ``body0``, ``body1``, ... — the backbone network, split as that network splits alone (its family rule,
  timm's ``group_matcher``, else the automatic split; ``backbone.body`` or ``backbone.features``);
* ``neck`` — the FPN (``backbone.fpn``) or SSD's extra layers;
* ``rpn`` — the region proposal network (R-CNN only);
* ``box_heads`` — the pretrained layers that do not depend on the class: R-CNN's box / mask / keypoint heads,
  the one-stage heads' regression and classification towers;
* ``head`` — the class layers (:func:`~torchgraft.grafting.redetect.class_layers`), which a re-head replaces.

:func:`torchgraft.freeze` trains the new groups only: ``head`` on a re-headed (pretrained) detector, everything
after the body on :func:`~torchgraft.graft_detector`'s. BatchNorm in the body follows ``freeze``'s ``bn=``
policy; torchvision's pretrained detectors and ``graft_detector`` (by default) hold ``FrozenBatchNorm2d``,
whose statistics never move.
"""

from __future__ import annotations

from torch import nn

from torchgraft.grafting.body import Body
from torchgraft.grafting.redetect import class_layers, is_torchvision_detector
from torchgraft.tune.archs import FAMILIES, Family
from torchgraft.tune.autosplit import auto_spec
from torchgraft.tune.discovery import body_sizes
from torchgraft.tune.family_rules import family_spec, timm_spec
from torchgraft.tune.group_types import GroupSpec
from torchgraft.tune.names import compress_names, top_modules, under

__all__ = ["detector_parts", "detector_spec"]

_HEADS = ("roi_heads", "head")  # where torchvision keeps the box heads


def detector_parts(model: nn.Module) -> tuple[str, tuple[str, ...]] | None:
    """``(backbone network path, neck module paths)`` of a torchvision detector, else ``None``."""
    if not is_torchvision_detector(model):
        return None
    backbone = model.backbone
    body = getattr(backbone, "body", None)
    if isinstance(body, Body):  # graft_detector's TapPyramid: the source network inside torchgraft's body
        path, top = "backbone.body.model", "body"
    elif isinstance(body, nn.Module):  # torchvision's BackboneWithFPN
        path, top = "backbone.body", "body"
    elif isinstance(getattr(backbone, "features", None), nn.Module):  # SSD's feature extractors
        path, top = "backbone.features", "features"
    else:
        return "backbone", ()
    neck = [f"backbone.{name}" for name, _ in backbone.named_parameters() if not name.startswith(f"{top}.")]
    return path, tuple(neck)


def _wrapped_family(root: nn.Module) -> Family | None:
    """The family of the network inside torchvision's ``IntermediateLayerGetter`` (what its detection backbones
    wrap; it keeps the network's children by name): the first whose split points and needs it has."""
    if type(root).__name__ != "IntermediateLayerGetter":
        return None
    modules = dict(root.named_modules())
    for family in FAMILIES:
        needs = family.needs is None or any(isinstance(m, family.needs) for m in modules.values())
        if needs and all(start in modules for start in family.starts):
            return family
    return None


def _body_split(model: nn.Module, path: str, n_body: int | str | None) -> tuple[list[list[str]], str]:
    """The backbone network's own split (headless: ``n_body`` body groups), as full parameter names, and where
    it came from."""
    root = model.get_submodule(path)
    body, sizes = body_sizes(root, ())
    spec = None
    if n_body is None:
        spec = family_spec(root, (), body, "") or family_spec(root, (), body, "", family=_wrapped_family(root))
    count = 3 if n_body is None else n_body
    spec = spec or timm_spec(root, count, (), body, "") or auto_spec(root, count, (), body, sizes, "", None)
    groups: list[list[str]] = [[] for _ in spec.groups]
    for name in body:
        hits = spec.match(name)
        groups[hits[0] if hits else len(groups) - 1].append(f"{path}.{name}")
    return [group for group in groups if group], spec.method


def detector_spec(model: nn.Module, n: int | str | None) -> GroupSpec | None:
    """The split of a torchvision detector (module docstring), or ``None`` for any other network.

    Args:
        model: the detector.
        n: groups in all (the body gets what the detection groups leave, at least one), ``"blocks"`` (one
            body group per block of the backbone) or ``None`` (the backbone's own default split).

    Raises:
        ValueError: an ``n`` that leaves the body no group.
    """
    parts = detector_parts(model)
    if parts is None:
        return None
    path, neck = parts
    scope = [name for name, _ in model.named_parameters()]
    classes = tuple(name for name, _ in class_layers(model))
    named: list[tuple[str, list[str]]] = [
        ("neck", [name for name in scope if under(name, neck)]),
        ("rpn", [name for name in scope if under(name, ("rpn",))]),
        ("box_heads", [name for name in scope if under(name, _HEADS) and not under(name, classes)]),
    ]
    detection = [(name, members) for name, members in named if members]
    n_body: int | str | None = n
    if isinstance(n, int) and not isinstance(n, bool):
        n_body = n - len(detection) - 1
        if n_body < 1:
            raise ValueError(
                f"layer_groups: n={n} leaves no body group for a {type(model).__name__}, whose detection parts are "
                f"{len(detection) + 1} groups ({', '.join(g for g, _ in detection)}, head); pass n >= "
                f"{len(detection) + 2}."
            )
    elif n is not None and n != "blocks":
        raise ValueError(f"layer_groups: n must be an int >= 2 (body groups + head) or 'blocks', got {n!r}.")
    body, method = _body_split(model, path, n_body)
    groups = [(f"body{i}", tuple(compress_names(top_modules(members, scope)))) for i, members in enumerate(body)]
    groups += [(name, tuple(compress_names(top_modules(members, scope)))) for name, members in detection]
    groups.append(("head", classes))
    info = getattr(model, "info", None)
    grafted = getattr(info, "method", None) == "detector"  # graft_detector: everything after the body is new
    after = ", ".join(g for g, _ in detection)
    how = f"detector {type(model).__name__}: {path} split as alone ({method}), then {after}, head"
    return GroupSpec(tuple(groups), "head", how, "", new=len(detection) + 1 if grafted else 1)
