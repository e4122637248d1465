"""Build a network by name: any torchvision classification, segmentation or detection builder, or a timm model
as ``timm/NAME``."""

from __future__ import annotations

import contextlib
import difflib
import importlib
from collections.abc import Callable, Iterator

import torch
import torchvision
from torch import nn

from torchgraft.weights.timm_names import UnknownModelError, check_timm_name, remember_timm_names

__all__ = [
    "UnknownModelError",
    "build_model",
    "check_timm_name",
    "parameters_on_meta",
    "torchvision_classifiers",
    "torchvision_detectors",
]


def torchvision_classifiers() -> list[str]:
    """Names of every torchvision classification builder."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_detectors() -> list[str]:
    """Names of every torchvision detection builder (``fasterrcnn_*``, ``retinanet_*``, ``fcos_*``, ``ssd*``,
    ``maskrcnn_*``, ``keypointrcnn_*``)."""
    return sorted(torchvision.models.list_models(module=torchvision.models.detection))


def _timm() -> object:
    try:
        timm = importlib.import_module("timm")
    except ImportError as error:
        raise ImportError("timm models need timm: pip install 'torchgraft[timm]'") from error
    if not getattr(_timm, "remembered", False):  # once a process: the next check answers without timm
        remember_timm_names(timm)
        _timm.remembered = True  # type: ignore[attr-defined]
    return timm


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Move every parameter and buffer to the meta device as modules register them.

    For builders that compute with real tensors while they construct (torchvision's RegNet width
    arithmetic calls ``.item()``), which ``with torch.device("meta")`` cannot run. Each layer is still
    initialised on the CPU, one at a time, so memory stays at one layer.
    """
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def on_meta_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def on_meta_buffer(module: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        register_buffer(module, name, tensor.to("meta") if tensor is not None else None, persistent)

    nn.Module.register_parameter = on_meta_parameter  # type: ignore[method-assign]
    nn.Module.register_buffer = on_meta_buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def _on_device(builder: Callable[[], nn.Module], device: str | torch.device) -> nn.Module:
    if torch.device(device).type != "meta":
        with torch.device(device):
            return builder()
    try:
        with torch.device("meta"):
            return builder()
    except NotImplementedError:  # the builder needs real tensors while it constructs
        with parameters_on_meta():
            return builder()


def build_model(name: str, *, device: str | torch.device = "meta") -> nn.Module:
    """Build ``name`` with random weights on ``device`` (``"meta"``: no memory, any size).

    ``name`` is a torchvision builder (``"resnet50"``; the segmentation builders ``"deeplabv3_resnet50"``... with
    their auxiliary head where their weights have one; the detection builders ``"fcos_resnet50_fpn"``... with
    the class count of their COCO weights) or ``"timm/<name>"`` (``"timm/convnext_tiny"``).

    Raises:
        UnknownModelError: listing the closest known names.

    Example:
        >>> build_model("vit_h_14").heads.head.weight.device
        device(type='meta')
    """
    if name.startswith(("timm/", "timm:")):
        arch = check_timm_name(name[5:])
        return _on_device(lambda: _timm().create_model(arch, pretrained=False), device)
    segmenters = torchvision.models.list_models(module=torchvision.models.segmentation)
    if name in segmenters:  # as their pretrained weights are: with the auxiliary head (FCN, DeepLabV3)
        options = {"weights_backbone": None, **({} if name.startswith("lraspp") else {"aux_loss": True})}
        return _on_device(lambda: torchvision.models.get_model(name, weights=None, **options), device)
    if name in torchvision_detectors():  # as their COCO weights are: 91 classes (background at 0), no backbone download
        return _on_device(lambda: torchvision.models.get_model(name, weights=None, weights_backbone=None), device)
    known = torchvision_classifiers()
    if name not in known:
        close = difflib.get_close_matches(name, [*known, *segmenters, *torchvision_detectors()], n=5)
        hint = f"close names: {', '.join(close)}" if close else "see torchvision.models.list_models()"
        raise UnknownModelError(f"unknown model {name!r} ({hint}; timm models: timm/<name>).")
    return _on_device(lambda: torchvision.models.get_model(name, weights=None), device)
