"""The segmentation side of a run: image + mask pairs checked, a U-Net (or FPN) decoder grafted on the pretrained
backbone by :func:`torchgraft.graft_dense`, joint augmentation, the multi-scale features cached while the
backbone is frozen, and the report a run writes: per-class IoU and a few validation images with the true and
predicted masks drawn over them (``masks.png``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from torchgraft.app.settings import Prepared, TrainSettings, dataset_loaders, device_of, make_learner
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
from torchgraft.tasks.batch import move
from torchgraft.tasks.segment import ConfusionMatrix, per_class_dice, per_class_iou
from torchgraft.train.distributed import on_main
from torchgraft.train.learner import Learner
from torchgraft.weights.pretrained import pretrained_model, weights_file

__all__ = [
    "SEGMENT_DEFAULTS",
    "is_segment_run",
    "looks_like_masks",
    "prepare_segment_run",
    "segment_loaders",
    "segment_report",
]

# the segmentation recipe where TrainSettings leaves a field None (measured: bench/segment.py, docs/benchmarks.md)
SEGMENT_DEFAULTS: dict[str, Any] = {
    "model": "resnet34",
    "lr": 4e-3,
    "lr_mult": 1.0,
    "frozen_lr": 4e-3,
    "batch_size": 16,
    "keep_frozen": -1,  # the backbone stays frozen: the decoder trains on its cached features
    "dice_weight": 1.0,
}


def looks_like_masks(data: Any) -> bool:
    """Whether ``data`` is a folder laid out for segmentation (``images/`` + ``masks/``, or ``train/`` holding them)."""
    if not isinstance(data, str | Path):
        return False
    root = Path(data)
    return (root / "masks").is_dir() or (root / "train" / "masks").is_dir()


def is_segment_run(data: Any, settings: TrainSettings) -> bool:
    """Whether a run segments: ``task="segment"``, :class:`MaskData`, or a folder with ``masks/``."""
    return (
        settings.task == "segment" or isinstance(data, MaskData) or (settings.task is None and looks_like_masks(data))
    )


def segment_loaders(
    data: MaskData, prep: Preprocessing, settings: TrainSettings, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    """Training pairs with joint augmentation (random resized crop + flip; ``augment="none"``: plain resize)
    and validation pairs resized to ``prep.size`` x ``prep.size``; the training set's unaugmented version is
    what the feature cache reads."""
    plain = mask_transforms(prep.size, prep.mean, prep.std, train=False)
    augmented = mask_transforms(prep.size, prep.mean, prep.std, train=True) if settings.augment != "none" else plain
    train = MaskDataset(data.train, augmented, data.colours, plain=plain)
    valid = MaskDataset(data.valid, plain, data.colours)
    return dataset_loaders(train, valid, settings, device)


def prepare_segment_run(
    data: str | Path | MaskData,
    run_dir: str | Path,
    settings: TrainSettings,
    *,
    say: Callable[[str], None] = print,
    quiet: bool = False,
) -> Prepared:
    """Check the pairs, build the pretrained backbone, graft the decoder and make the Learner (task
    ``segment``, the taps' features cached while the backbone is frozen)."""
    settings = settings.with_defaults(SEGMENT_DEFAULTS)
    settings.check()
    if settings.decoder not in DECODERS:
        raise ValueError(f"--decoder {settings.decoder}: choose one of {', '.join(DECODERS)}.")
    if settings.head != "linear" or settings.lora is not None or settings.y_range is not None:
        raise ValueError("--task segment: --head, --lora and --y-range apply to classification heads, not to masks.")
    assert settings.model is not None
    prep = preprocessing_for(settings.model, size=settings.size)
    prep = Preprocessing(prep.size, prep.size, prep.mean, prep.std, prep.interpolation)  # whole images, no crop
    weights_file(settings.weights)
    torch.manual_seed(settings.seed)
    if not isinstance(data, MaskData):
        options = {"valid_pct": settings.valid_pct, "seed": settings.seed, "skip_bad": settings.skip_bad}
        data = on_main(segmentation_data, data, **options)  # under torchrun: checked once, by rank 0
    say(f"data: {data.summary()}")
    for reason in data.bad:
        say(f"  skipped {reason}")
    source, origin = pretrained_model(settings.model, settings.weights)
    say(f"weights: {origin}")
    size = (3, prep.size, prep.size)
    model = graft_dense(source, data.n_outputs, decoder=settings.decoder, input_size=size)
    device = device_of(settings)
    loaders = segment_loaders(data, prep, settings, device)
    learner = make_learner(model, loaders, data, settings, run_dir, quiet=quiet, cache_features=True)  # type: ignore[arg-type]
    return Prepared(data, prep, model, origin, learner, settings, settings.model)  # type: ignore[arg-type]


@torch.no_grad()
def _confusion(model: nn.Module, learner: Learner, n_classes: int) -> torch.Tensor:
    """The validation set's confusion matrix (rows: true class, columns: predicted)."""
    matrix = ConfusionMatrix(n_classes, ignore_index=learner.task.ignore_index)  # type: ignore[attr-defined]
    model.eval()
    for batch in learner.full_valid_dl:
        inputs, targets = learner.task.split(batch)
        matrix.update(model(move(inputs, learner.device)).float().cpu(), torch.as_tensor(targets))
    return matrix.matrix


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


def segment_report(run: Prepared, run_dir: Path) -> tuple[dict[str, Any], list[Path]]:
    """Per-class IoU and Dice on the validation set (for the summary), and ``masks.png``."""
    learner, data = run.learner, run.data
    matrix = _confusion(run.model, learner, len(data.classes))
    final: dict[str, Any] = {}
    for name, values in (("per_class_iou", per_class_iou(matrix)), ("per_class_dice", per_class_dice(matrix))):
        final[name] = {c: (None if v != v else round(float(v), 4)) for c, v in zip(data.classes, values, strict=True)}
    assert isinstance(data, MaskData) and isinstance(run.preprocessing, Preprocessing)
    files = _examples_figure(run.model, data, run.preprocessing, learner.device, run_dir / "masks.png")
    return final, files
