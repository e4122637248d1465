"""How a pretrained network expects its images: size, resize, interpolation and normalisation, read from the
weights' own metadata (torchvision's ``Weights.transforms()``, timm's ``pretrained_cfg``), and the
``torchvision.transforms.v2`` pipelines built from it.

The same :class:`Preprocessing` is stored in an exported model, so prediction sees exactly what validation saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torchvision.transforms import v2

__all__ = ["Augment", "Preprocessing", "preprocessing_for"]

Augment = Literal["standard", "flip", "none"]
_INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


@dataclass(frozen=True)
class Preprocessing:
    """Square ``size`` crops of images resized to ``resize`` (shorter side), normalised with ``mean``/``std``.

    Example:
        >>> prep = preprocessing_for("resnet50")
        >>> prep.size, prep.resize, prep.interpolation
        (224, 232, 'bilinear')
        >>> prep.with_size(64).resize
        66
    """

    size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r}: choose from {sorted(_INTERPOLATIONS)}.")
        if self.size < 1 or self.resize < self.size:
            raise ValueError(f"bad sizes: crop {self.size}, resize {self.resize} (need 1 <= crop <= resize).")

    def with_size(self, size: int) -> Preprocessing:
        """The same recipe at crop ``size``, keeping the crop-to-resize ratio of the metadata."""
        return replace(self, size=size, resize=max(size, round(size * self.resize / self.size)))

    def _finish(self) -> list[Any]:
        return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]

    def eval_transform(self) -> v2.Compose:
        """PIL image -> normalised float tensor: resize, centre crop (validation and prediction)."""
        mode = _INTERPOLATIONS[self.interpolation]
        return v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(self.resize, interpolation=mode, antialias=True),
                v2.CenterCrop(self.size),
                *self._finish(),
            ]
        )

    def dense_transform(self) -> v2.Compose:
        """PIL image -> normalised float tensor of the whole image resized to ``size`` x ``size``, nothing
        cropped (segmentation: the predicted mask maps back onto every pixel of the image)."""
        mode = _INTERPOLATIONS[self.interpolation]
        return v2.Compose(
            [v2.ToImage(), v2.Resize((self.size, self.size), interpolation=mode, antialias=True), *self._finish()]
        )

    def train_transform(self, *, augment: Augment = "standard") -> v2.Compose:
        """Training pipeline. ``"standard"``: random resized crop (35-100% of the area) and horizontal flip;
        ``"flip"``: the validation crop plus a horizontal flip; ``"none"``: the validation pipeline."""
        mode = _INTERPOLATIONS[self.interpolation]
        if augment == "none":
            return self.eval_transform()
        if augment == "flip":
            crop = [v2.Resize(self.resize, interpolation=mode, antialias=True), v2.CenterCrop(self.size)]
        elif augment == "standard":
            crop = [v2.RandomResizedCrop(self.size, scale=(0.35, 1.0), interpolation=mode, antialias=True)]
        else:
            raise ValueError(f"augment={augment!r}: choose 'standard', 'flip' or 'none'.")
        return v2.Compose([v2.ToImage(), *crop, v2.RandomHorizontalFlip(), *self._finish()])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`as_dict`."""
        return cls(
            size=int(fields["size"]),
            resize=int(fields["resize"]),
            mean=tuple(fields["mean"]),
            std=tuple(fields["std"]),
            interpolation=fields.get("interpolation", "bilinear"),
        )


def _from_torchvision(name: str) -> Preprocessing:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    preset = weights.transforms()  # a transform object built locally: nothing is downloaded
    return Preprocessing(
        size=int(preset.crop_size[0]),
        resize=int(preset.resize_size[0]),
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        interpolation=preset.interpolation.value,
    )


def _from_timm(name: str) -> Preprocessing:
    from torchgraft.weights.zoo import _timm, check_timm_name

    cfg = _timm().get_pretrained_cfg(check_timm_name(name))
    if cfg is None:
        raise ValueError(f"timm model {name!r} has no pretrained_cfg; pass the preprocessing explicitly.")
    size = int(cfg.input_size[-1])
    interpolation = cfg.interpolation if cfg.interpolation in _INTERPOLATIONS else "bicubic"
    return Preprocessing(
        size=size,
        resize=max(size, round(size / (cfg.crop_pct or 1.0))),
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        interpolation=interpolation,
    )


def preprocessing_for(model: str, *, size: int | None = None) -> Preprocessing:
    """The preprocessing of ``model``'s pretrained weights (a torchvision builder or ``timm/NAME``), at
    ``size`` if given (the metadata's crop ratio kept).

    Raises:
        UnknownModelError: ``model`` is not a known name.
    """
    from torchgraft.weights.zoo import UnknownModelError, torchvision_classifiers

    if model.startswith(("timm/", "timm:")):
        prep = _from_timm(model[5:])
    elif model in torchvision_classifiers():
        prep = _from_torchvision(model)
    else:
        raise UnknownModelError(f"unknown model {model!r} (a torchvision builder or timm/<name>).")
    return prep.with_size(size) if size is not None else prep
