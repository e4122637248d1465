"""How a pretrained network expects its images: size, resize, interpolation and normalisation, read from the
weights' own metadata (torchvision's ``Weights.transforms()``, timm's ``pretrained_cfg``), and the
``torchvision.transforms.v2`` pipelines built from it.

The pipelines take a uint8 ``(3, H, W)`` tensor (:func:`torchgraft.data.decode.decode_rgb`; a PIL image is
made one first). Training's random crop and flip run on uint8 (torchvision's fast kernel), and the conversion
to float and the normalisation come last, on the final crop only. Validation and prediction resize with
:class:`~torchgraft.data.resize.ExactResize` (float, the same on every machine, reproduced by an exported
graph), then crop the float image.

The same :class:`Preprocessing` is stored in an exported model, so prediction sees exactly what validation saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from torchgraft.data.resize import ExactResize

__all__ = ["Augment", "PixelBatch", "PixelCollate", "Preprocessing", "preprocessing_for"]

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

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``(..., 3, H, W)`` -> float32 in [0, 1] (float images are taken as already there),
        normalised with ``mean``/``std``, on their own device: the last step of every pipeline, in the loader
        process or (:class:`PixelBatch`) on the device the batch trains on — the same operations either way,
        so the floats are the same.
        """
        scaled = F.to_dtype(images.as_subclass(torch.Tensor), torch.float32, scale=True)
        converted = images.dtype != torch.float32  # then ``scaled`` is a new tensor, free to overwrite
        return F.normalize(scaled, list(self.mean), list(self.std), inplace=converted)

    def _finish(self, normalize: bool) -> list[Any]:
        return [_Normalizing(self)] if normalize else []

    def eval_transform(self, *, normalize: bool = True) -> v2.Compose:
        """Image (uint8 tensor or PIL) -> normalised float tensor: resize, centre crop (validation and
        prediction). ``normalize=False`` stops at the crop (float in [0, 1]; :meth:`normalize` comes later).
        The resize is :class:`~torchgraft.data.resize.ExactResize` (torch's float antialiased kernel, the same
        on every machine), which an exported graph reproduces (:mod:`torchgraft.ship.graph_input`)."""
        return v2.Compose(
            [
                _ImageTensor(),
                ExactResize(self.resize, self.interpolation),
                v2.CenterCrop(self.size),
                *self._finish(normalize),
            ]
        )

    def dense_transform(self) -> v2.Compose:
        """Image (uint8 tensor or PIL) -> normalised float tensor of the whole image resized to ``size`` x
        ``size``, nothing cropped (segmentation: the predicted mask maps back onto every pixel of the image)."""
        whole = ExactResize((self.size, self.size), self.interpolation)
        return v2.Compose([_ImageTensor(), whole, *self._finish(True)])

    def train_transform(self, *, augment: Augment = "standard", normalize: bool = True) -> v2.Compose:
        """Training pipeline. ``"standard"``: random resized crop (35-100% of the area) and horizontal flip;
        ``"flip"``: the validation crop plus a horizontal flip; ``"none"``: the validation pipeline.
        ``normalize=False`` stops at the uint8 crop (:meth:`normalize` comes later)."""
        mode = _INTERPOLATIONS[self.interpolation]
        if augment == "none":
            return self.eval_transform(normalize=normalize)
        if augment == "flip":
            crop = [v2.Resize(self.resize, interpolation=mode, antialias=True), v2.CenterCrop(self.size)]
        elif augment == "standard":
            crop = [v2.RandomResizedCrop(self.size, scale=(0.35, 1.0), interpolation=mode, antialias=True)]
        else:
            raise ValueError(f"augment={augment!r}: choose 'standard', 'flip' or 'none'.")
        return v2.Compose([_ImageTensor(), *crop, v2.RandomHorizontalFlip(), *self._finish(normalize)])

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


@dataclass(frozen=True)
class PixelBatch:
    """A batch of uint8 crops ``(N, 3, H, W)`` normalised once they reach the device they train on: 4x fewer
    bytes leave the loader processes and cross to the GPU than float crops, and the normalisation runs there.

    :func:`torchgraft.tasks.batch.move` (what the Learner and the validation passes call on every batch) calls
    :meth:`to_device`; the loader's pinned-memory thread calls :meth:`pin_memory`.
    """

    pixels: torch.Tensor
    preprocessing: Preprocessing

    def __len__(self) -> int:
        return len(self.pixels)

    def pin_memory(self) -> PixelBatch:
        """The same batch in page-locked memory (an asynchronous copy to CUDA)."""
        return replace(self, pixels=self.pixels.pin_memory())

    def to_device(self, device: torch.device) -> torch.Tensor:
        """The normalised float batch on ``device`` (:meth:`Preprocessing.normalize` after the transfer)."""
        return self.preprocessing.normalize(self.pixels.to(device, non_blocking=True))


@dataclass(frozen=True)
class PixelCollate:
    """``collate_fn`` of a loader whose samples are ``(uint8 crop, target...)``: the crops stacked into a
    :class:`PixelBatch` of ``preprocessing``, the rest collated as PyTorch does.

    Example:
        >>> prep = preprocessing_for("resnet50")
        >>> dataset = ImageDataset(samples, classes, prep.train_transform(normalize=False))
        >>> loader = DataLoader(dataset, batch_size=64, collate_fn=PixelCollate(prep))
    """

    preprocessing: Preprocessing

    def __call__(self, samples: list[Any]) -> list[Any]:
        pixels, *rest = default_collate(samples)  # in a worker: straight into shared memory
        return [PixelBatch(pixels.as_subclass(torch.Tensor), self.preprocessing), *rest]


class _ImageTensor:
    """The first step of a pipeline: a plain ``(C, H, W)`` tensor from a tensor (a ``tv_tensors.Image`` is
    unwrapped), a PIL image or an ``(H, W, C)`` array, as ``v2.ToImage`` converts them. A plain tensor, not a
    ``tv_tensors.Image``: the v2 transforms take it as the image all the same, without the subclass's dispatch
    on every operation, and a batch of them collates several times faster (measured)."""

    def __call__(self, image: Any) -> torch.Tensor:
        tensor = image if isinstance(image, torch.Tensor) else F.to_image(image)
        return tensor.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return "ImageTensor()"


class _Normalizing:
    """The last step of a pipeline, :meth:`Preprocessing.normalize`, with a ``repr`` that names its numbers
    (the feature cache keys stored features by the pipeline's ``repr``)."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocessing.normalize(images)

    def __repr__(self) -> str:
        prep = self.preprocessing
        return f"ToFloatNormalize(mean={list(prep.mean)}, std={list(prep.std)})"


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
