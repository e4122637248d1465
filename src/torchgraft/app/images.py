"""Images with one target each (a folder of class folders, or a CSV / JSON-lines table of image paths:
single-label, multi-label or regression): a torchvision or timm network with a new head, its own
preprocessing, seeded augmentation."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from torchgraft.app.defaults import IMAGE_DEFAULTS
from torchgraft.app.inputs import Built, InputRecipe, LabelledData, dataset_loaders, read_options
from torchgraft.app.settings import TrainSettings
from torchgraft.data.folders import ImageData, image_data
from torchgraft.data.images import load_rgb
from torchgraft.data.preprocess import PixelCollate, Preprocessing, preprocessing_for
from torchgraft.grafting.surgery import graft
from torchgraft.tasks.pictures import ValidationInputs
from torchgraft.weights.pretrained import check_weights, pretrained_model

__all__ = ["ImageInput"]


class ImageInput(InputRecipe):
    """Images with a class, labels or values each: what every other recipe does not claim."""

    name: ClassVar[str] = "images"
    defaults: ClassVar[dict[str, Any]] = IMAGE_DEFAULTS

    def claims(self, data: Any, settings: TrainSettings) -> bool:
        """Every input the other recipes leave (their probes run first)."""
        return True

    def check(self, settings: TrainSettings) -> None:
        """An hf/ model is a text encoder; an unknown model or a missing weights file fails here."""
        assert settings.model is not None
        if settings.model.startswith(("hf/", "hf:")):
            raise ValueError(
                f"--model {settings.model}: hf/ models train on texts; for images give a torchvision or timm name."
            )
        preprocessing_for(settings.model, size=settings.size)
        check_weights(settings.model, settings.weights)  # a missing file, an unknown timm name: now

    def is_read(self, data: Any) -> bool:
        """Checked :class:`ImageData`."""
        return isinstance(data, ImageData)

    def read(self, data: str | Path, settings: TrainSettings, *, progress: bool) -> ImageData:
        """:func:`~torchgraft.data.folders.image_data` checking as ``settings.check_mode`` asks, with the data's
        manifest in ``settings.manifest_dir`` (a progress bar over the check on a terminal)."""
        where = settings.manifest_dir
        manifest = False if where == "none" else where if where is not None else True
        return image_data(
            data,
            **read_options(settings),
            check=settings.check_mode,
            manifest=manifest,
            progress=progress and sys.stderr.isatty(),
        )

    def build(self, data: LabelledData, settings: TrainSettings, say: Callable[[str], None]) -> Built:
        """The pretrained network with a new head of ``data.n_outputs``, at the weights' input size."""
        assert settings.model is not None
        prep = preprocessing_for(settings.model, size=settings.size)
        source, origin = pretrained_model(settings.model, settings.weights, trust_pickle=settings.trust_pickle)
        say(f"weights: {origin}")
        size = (3, prep.size, prep.size)
        model = graft(source, data.n_outputs, input_size=size, head=settings.head, y_range=settings.y_range)
        return Built(model, origin, settings.model, prep)

    def loaders(
        self, data: LabelledData, built: Built, settings: TrainSettings, device: torch.device
    ) -> tuple[Any, Any]:
        """Augmented training images, centre-cropped validation images (as the weights were evaluated). The
        loaders carry uint8 crops, normalised once on the device they train on
        (:class:`~torchgraft.data.preprocess.PixelBatch`): a quarter of the bytes of float crops leave the
        loader processes (on the CPU too, where stacking float crops in shared memory cost the loader a
        fifth of its speed; ``bench/decode.py``)."""
        assert isinstance(data, ImageData) and isinstance(built.preprocessing, Preprocessing)
        prep = built.preprocessing
        augmented = prep.train_transform(augment=settings.augment, normalize=False)
        train, valid = data.datasets(augmented, prep.eval_transform(normalize=False))
        return dataset_loaders(train, valid, settings, device, collate_fn=PixelCollate(prep))

    def validation_inputs(self, data: LabelledData) -> ValidationInputs:
        """The validation image files, read as training reads them."""
        return ValidationInputs("image", [str(path) for path, _ in data.valid], load=load_rgb)
