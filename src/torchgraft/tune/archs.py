"""Per-family metadata, written as data: where the body splits into layer groups.

Each family names the modules that *start* a new body group, in forward order. They are fastai's split
points (``m[0][:6]`` for ResNet is "``layer3`` starts the second group") written as module names, so a rule
reads the same on torchvision's and timm's implementations of a family and never silently shifts when a
model differs by one layer. A family applies only when every split point exists in the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["FAMILIES", "Family", "find_family"]


@dataclass(frozen=True)
class Family:
    """A family's layer-group split.

    Attributes:
        name: family name shown in the plan (``"resnet"``).
        classes: model classes it applies to, as ``module.QualName`` (torchvision and timm).
        starts: module names that begin the 2nd, 3rd, ... body group, in forward order.
        needs: a module type that must be present (fastai splits VGG only with BatchNorm).
    """

    name: str
    classes: tuple[str, ...]
    starts: tuple[str, ...]
    needs: type[nn.Module] | None = None


FAMILIES: tuple[Family, ...] = (
    Family("resnet", ("torchvision.models.resnet.ResNet", "timm.models.resnet.ResNet"), ("layer3",)),
    Family(
        "densenet",
        ("torchvision.models.densenet.DenseNet", "timm.models.densenet.DenseNet"),
        ("features.transition2",),
    ),
    Family("vgg_bn", ("torchvision.models.vgg.VGG", "timm.models.vgg.VGG"), ("features.22",), nn.BatchNorm2d),
    Family("alexnet", ("torchvision.models.alexnet.AlexNet",), ("features.6",)),
    Family("squeezenet", ("torchvision.models.squeezenet.SqueezeNet",), ("features.5",)),
)


def _class_path(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def find_family(model: nn.Module) -> Family | None:
    """The family whose split applies to ``model`` (the source network, not a ``Grafted`` wrapper)."""
    path = _class_path(model)
    names = None
    for family in FAMILIES:
        if path not in family.classes:
            continue
        names = names if names is not None else dict(model.named_modules())
        if not all(start in names for start in family.starts):
            continue
        if family.needs is not None and not any(isinstance(m, family.needs) for m in names.values()):
            continue
        return family
    return None
