"""Detection samples as torchvision's detection models take them: a :class:`BoxDataset` of ``(image,
target)`` pairs, box-aware ``transforms.v2`` pipelines (:func:`box_transforms`) and :func:`collate_boxes`,
which keeps a batch as lists (the models take a list of images of any sizes and a list of target dicts).

An image is a uint8 ``tv_tensors.Image`` decoded by :func:`~torchgraft.data.decode.decode_rgb`; a target is
``{"boxes": tv_tensors.BoundingBoxes (XYXY, canvas_size=(H, W)), "labels": int64}``, so every v2 transform
moves, scales and crops the boxes with the image. All box maths is torchvision's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from torchgraft.data.annotations import BoxSample
from torchgraft.data.badfiles import BadFiles
from torchgraft.data.decode import decode_rgb
from torchgraft.data.images import BadImage
from torchgraft.data.samples import DataError

__all__ = ["BoxDataset", "Target", "box_transforms", "collate_boxes"]

Target = dict[str, torch.Tensor]  # {"boxes": BoundingBoxes (N, 4), "labels": int64 (N,)}


class BoxDataset(Dataset):
    """``(image, target)`` pairs of ``samples``, through ``transform`` (called as ``transform(image, target)``).

    A file that fails to decode never stops training: it is recorded in ``bad_files`` (shared by every
    DataLoader worker) and the next sample that decodes is returned in its place, with its own target.

    Example:
        >>> dataset = BoxDataset(box_data("shapes/").train, box_transforms(train=True, size=512))
        >>> image, target = dataset[0]
        >>> image.dtype, target["boxes"].format, target["labels"].dtype
        (torch.float32, <BoundingBoxFormat.XYXY: 'XYXY'>, torch.int64)
    """

    def __init__(
        self, samples: Sequence[BoxSample], transform: Callable | None = None, *, bad_files: BadFiles | None = None
    ) -> None:
        self.samples, self.transform = list(samples), transform
        self.bad_files = bad_files if bad_files is not None else BadFiles()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        for at in self._candidates(index):
            try:
                image = tv_tensors.Image(decode_rgb(self.samples[at].path))
            except BadImage as error:
                self.bad_files.record(error)
                continue
            target = self.target(at, (image.shape[-2], image.shape[-1]))
            return self.transform(image, target) if self.transform is not None else (image, target)
        raise DataError(f"{len(self)} images: not one decodes ({self.bad_files.summary()}).")

    def target(self, index: int, canvas_size: tuple[int, int]) -> Target:
        """Sample ``index``'s boxes on a ``canvas_size`` ``(H, W)`` image, and its labels."""
        sample = self.samples[index]
        boxes = tv_tensors.BoundingBoxes(sample.boxes.clone(), format="XYXY", canvas_size=canvas_size)
        return {"boxes": boxes, "labels": sample.labels.clone()}

    def _candidates(self, index: int) -> Iterator[int]:
        size = len(self.samples)
        return ((index + step) % size for step in range(size))

    def bad_samples(self) -> list[BadImage]:
        """The files that failed to decode so far (in every worker process), each once, in the order met."""
        return self.bad_files.read()


def box_transforms(
    *,
    train: bool,
    size: int | None = None,
    scale: tuple[float, float] = (0.5, 1.5),
    photometric: bool = False,
    iou_crop: bool = False,
    flip: float = 0.5,
) -> v2.Compose:
    """The v2 pipeline of a detection split; images end as float32 in ``[0, 1]`` (torchvision's detection
    models normalise and resize inside).

    Training: optional photometric jitter (``v2.RandomPhotometricDistort``), an optional SSD-style
    ``v2.RandomIoUCrop``, a horizontal flip with probability ``flip``, a scale jitter (``v2.ScaleJitter``: the
    image fitted in ``size`` x ``size`` times a factor drawn from ``scale``) when ``size`` is given, and
    ``v2.SanitizeBoundingBoxes`` last: boxes that became degenerate (under 1 px) go, with their labels.
    Evaluation: the longer side resized to ``size`` (aspect kept), or nothing when ``size`` is ``None``.

    Example:
        >>> box_transforms(train=False, size=512)
        Compose(
              Resize(interpolation=bilinear, max_size=512, antialias=True)
              ToDtype(scale=True)
        )
    """
    to_float = v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)
    if not train:
        return v2.Compose([*([v2.Resize(None, max_size=size)] if size else []), to_float])
    steps: list[Any] = [v2.RandomPhotometricDistort()] if photometric else []
    steps += [v2.RandomIoUCrop()] if iou_crop else []
    steps.append(v2.RandomHorizontalFlip(flip))
    steps += [v2.ScaleJitter((size, size), scale_range=scale)] if size else []
    return v2.Compose([*steps, to_float, v2.SanitizeBoundingBoxes()])


def collate_boxes(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """A batch as ``(list of images, list of targets)``: what ``torchvision.models.detection`` models take
    (images of different sizes cannot be stacked).

    Example:
        >>> loader = DataLoader(dataset, batch_size=4, collate_fn=collate_boxes)
        >>> images, targets = next(iter(loader))
        >>> len(images), sorted(targets[0])
        (4, ['boxes', 'labels'])
    """
    return [image for image, _ in batch], [target for _, target in batch]
