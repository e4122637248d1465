"""Image + mask pairs (segmentation): a U-Net (or FPN) decoder grafted on the pretrained backbone by
:func:`torchgraft.graft_dense`, joint augmentation, the multi-scale features cached while the backbone is
frozen, and ``masks.png``: a few validation images with the true and predicted masks drawn over them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from torchgraft.app.inputs import Built, InputRecipe, LabelledData, dataset_loaders
from torchgraft.app.settings import TrainSettings
from torchgraft.data.images import load_rgb
from torchgraft.data.masks import (
    MaskData,
    MaskDataset,
    class_colours,
    mask_transforms,
    overlay,
    read_mask,
    segmentation_data,
)
from torchgraft.data.preprocess import Preprocessing, preprocessing_for
from torchgraft.grafting.decoders import DECODERS
from torchgraft.grafting.dense import graft_dense
from torchgraft.tasks import TASKS
from torchgraft.tasks.pictures import ValidationInputs
from torchgraft.weights.pretrained import check_weights, pretrained_model

__all__ = ["MaskInput", "looks_like_masks"]


def looks_like_masks(data: Any) -> bool:
    """Whether ``data`` is a folder laid out for segmentation (``images/`` + ``masks/``, or ``train/`` holding them)."""
    if not isinstance(data, str | Path):
        return False
    root = Path(data)
    return (root / "masks").is_dir() or (root / "train" / "masks").is_dir()


def _whole_images(settings: TrainSettings) -> Preprocessing:
    """The weights' preprocessing, resized whole (no crop): a mask maps back onto the image."""
    assert settings.model is not None
    prep = preprocessing_for(settings.model, size=settings.size)
    return Preprocessing(prep.size, prep.size, prep.mean, prep.std, prep.interpolation)


class MaskInput(InputRecipe):
    """Image + mask pairs: ``task="segment"``, :class:`MaskData`, or a folder with ``masks/``."""

    name: ClassVar[str] = "masks"
    # rates and keep_frozen: the Learner's measured recipe for segmentation (torchgraft.train.recipes);
    # cross-entropy + soft Dice (measured: bench/segment.py, docs/benchmarks.md)
    defaults: ClassVar[dict[str, Any]] = {"model": "resnet34", "batch_size": 16, "dice_weight": 1.0}
    cache_features: ClassVar[bool] = True

    def claims(self, data: Any, settings: TrainSettings) -> bool:
        """A task that trains on masks (``task="segment"``, or a registered one whose ``targets`` are
        ``"segment"``), :class:`MaskData`, or (no task given) a folder with ``masks/``."""
        if settings.task in TASKS:
            return TASKS[settings.task].targets == "segment"
        return isinstance(data, MaskData) or (settings.task is None and looks_like_masks(data))

    def check(self, settings: TrainSettings) -> None:
        """A known decoder; no classification-head options; the model and weights file exist."""
        if settings.decoder not in DECODERS:
            raise ValueError(f"--decoder {settings.decoder}: choose one of {', '.join(DECODERS)}.")
        if settings.head != "linear" or settings.lora is not None or settings.y_range is not None:
            raise ValueError(
                "--task segment: --head, --lora and --y-range apply to classification heads, not to masks."
            )
        _whole_images(settings)
        check_weights(settings.model, settings.weights)  # a missing file, an unknown timm name: now

    def is_read(self, data: Any) -> bool:
        """Checked :class:`MaskData`."""
        return isinstance(data, MaskData)

    def read(self, data: str | Path, settings: TrainSettings, *, progress: bool) -> MaskData:
        """:func:`~torchgraft.data.masks.segmentation_data`."""
        return segmentation_data(data, valid_pct=settings.valid_pct, seed=settings.seed, skip_bad=settings.skip_bad)

    def build(self, data: LabelledData, settings: TrainSettings, say: Callable[[str], None]) -> Built:
        """The pretrained backbone with a ``settings.decoder`` decoder of ``data.n_outputs`` classes."""
        assert settings.model is not None
        prep = _whole_images(settings)
        source, origin = pretrained_model(settings.model, settings.weights, trust_pickle=settings.trust_pickle)
        say(f"weights: {origin}")
        size = (3, prep.size, prep.size)
        model = graft_dense(source, data.n_outputs, decoder=settings.decoder, input_size=size)
        return Built(model, origin, settings.model, prep)

    def loaders(
        self, data: LabelledData, built: Built, settings: TrainSettings, device: torch.device
    ) -> tuple[DataLoader, DataLoader]:
        """Training pairs with joint augmentation (random resized crop + flip; ``augment="none"``: plain resize)
        and validation pairs resized whole; the training set's unaugmented version is what the feature cache
        reads."""
        assert isinstance(data, MaskData) and isinstance(built.preprocessing, Preprocessing)
        prep = built.preprocessing
        plain = mask_transforms(prep.size, prep.mean, prep.std, train=False, interpolation=prep.interpolation)
        augmented = mask_transforms(prep.size, prep.mean, prep.std, train=True) if settings.augment != "none" else plain
        train = MaskDataset(data.train, augmented, data.colours, plain=plain)
        valid = MaskDataset(data.valid, plain, data.colours)
        return dataset_loaders(train, valid, settings, device)

    def validation_inputs(self, data: LabelledData) -> ValidationInputs:
        """The validation images (their masks come with the outputs) and the classes' colours."""
        assert isinstance(data, MaskData)
        colours = class_colours(len(data.classes), data.colours)
        return ValidationInputs("image", [str(image) for image, _ in data.valid], load=load_rgb, colours=colours)

    def figures(self, data: LabelledData, built: Built, device: torch.device, run_dir: Path) -> list[Path]:
        """``masks.png`` (with matplotlib installed)."""
        assert isinstance(data, MaskData) and isinstance(built.preprocessing, Preprocessing)
        return _examples_figure(built.model, data, built.preprocessing, device, run_dir / "masks.png")


@torch.no_grad()
def _examples_figure(
    model: nn.Module, data: MaskData, prep: Preprocessing, device: torch.device, path: Path, count: int = 4
) -> list[Path]:
    """``masks.png``: a few validation images with the true and the predicted masks drawn over them."""
    try:
        from torchgraft.train.plots import plot_grid
    except ImportError:
        return []
    colours = class_colours(len(data.classes), data.colours)
    transform, rows = prep.dense_transform(), []
    model.eval()
    for image_path, mask_path in data.valid[:count]:
        image = load_rgb(image_path)
        logits = model(transform(image)[None].to(device)).float().cpu()
        resized = nn.functional.interpolate(logits, size=(image.height, image.width), mode="bilinear")
        predicted = resized.argmax(dim=1)[0].numpy()
        truth = read_mask(mask_path, data.colours)
        rows.append([np.asarray(image), overlay(image, truth, colours), overlay(image, predicted, colours)])
    try:
        return [plot_grid(rows, ["image", "true mask", "predicted"], path)]
    except ImportError:  # matplotlib is optional
        return []
