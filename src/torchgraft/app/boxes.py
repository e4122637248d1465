"""Images with boxes (object detection): COCO JSON, a YOLO ``data.yaml`` or Pascal VOC XML, read and checked by
:func:`~torchgraft.data.boxes.box_data`; a torchvision detector grafted on the pretrained backbone by
:func:`torchgraft.graft_detector` (``settings.detector``: FCOS, RetinaNet or Faster R-CNN), or a torchvision
detector (``--model fasterrcnn_mobilenet_v3_large_fpn``...) re-headed for the data's classes by
:func:`torchgraft.regraft_detection`; box-aware augmentation; the detector resizes and normalises its images
itself, so the loaders carry whole images in ``[0, 1]``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from torchgraft.app.inputs import Built, InputRecipe, LabelledData, dataset_loaders
from torchgraft.app.settings import TrainSettings
from torchgraft.choices import DETECTOR_HEADS
from torchgraft.data.boxes import BoxData, box_data
from torchgraft.data.coco import looks_like_coco
from torchgraft.data.detection import box_transforms, collate_boxes
from torchgraft.data.images import load_rgb
from torchgraft.data.preprocess import Preprocessing, preprocessing_for
from torchgraft.data.voc import voc_root
from torchgraft.data.yolo import YAML_NAMES
from torchgraft.grafting.detector import graft_detector
from torchgraft.grafting.redetect import is_detector, regraft_detection
from torchgraft.tasks import TASKS
from torchgraft.tasks.pictures import ValidationInputs
from torchgraft.weights.pretrained import check_weights, pretrained_model
from torchgraft.weights.zoo import torchvision_detectors

__all__ = ["BoxInput", "detector_preprocessing", "looks_like_boxes"]


def looks_like_boxes(data: Any) -> bool:
    """Whether ``data`` is a path to box annotations: a YOLO ``data.yaml`` (or a folder holding one), a Pascal
    VOC folder (``Annotations/``), a COCO JSON file (an object with ``images``/``annotations``, not a JSON-lines
    table of image paths) or a folder holding one (itself or in its ``annotations/``)."""
    if not isinstance(data, str | Path):
        return False
    path = Path(data)
    if path.is_file():
        return path.suffix.lower() in (".yaml", ".yml") or (path.suffix.lower() == ".json" and looks_like_coco(path))
    if not path.is_dir():
        return False
    if any((path / name).is_file() for name in YAML_NAMES) or voc_root(path) is not None:
        return True
    found = [*sorted(path.glob("*.json")), *sorted((path / "annotations").glob("*.json"))]
    return any(looks_like_coco(json) for json in found)


def detector_preprocessing(model: nn.Module) -> Preprocessing:
    """What the detector does to an image itself (its ``transform``): the shorter side resized to ``size``
    (``resize``: the same), normalised with ``mean``/``std``; recorded in the export, done inside the model."""
    transform = model.transform  # torchvision's GeneralizedRCNNTransform (every torchvision detector has one)
    size = int(transform.min_size[-1])
    mean, std = tuple(float(v) for v in transform.image_mean), tuple(float(v) for v in transform.image_std)
    return Preprocessing(size, size, mean, std, "bilinear")


class BoxInput(InputRecipe):
    """Images with boxes: ``task="detect"``, :class:`BoxData`, or (no task given) a path of box annotations."""

    name: ClassVar[str] = "boxes"
    # the offline ImageNet Lite0 with FCOS (settings.detector); batches of 8 whole images
    defaults: ClassVar[dict[str, Any]] = {"model": "timm/efficientnet_lite0", "batch_size": 8}

    def claims(self, data: Any, settings: TrainSettings) -> bool:
        """A task that trains on boxes (``task="detect"``, or a registered one whose ``targets`` are
        ``"detect"``), :class:`BoxData`, or (no task given) a path :func:`looks_like_boxes`."""
        if settings.task in TASKS:
            return TASKS[settings.task].targets == "detect"
        return isinstance(data, BoxData) or (settings.task is None and looks_like_boxes(data))

    def check(self, settings: TrainSettings) -> None:
        """A known detector head; no classification-head or segmentation options; the model and weights exist."""
        assert settings.model is not None
        if settings.detector not in (None, *DETECTOR_HEADS):
            raise ValueError(f"--detector {settings.detector}: choose one of {', '.join(DETECTOR_HEADS)}.")
        if settings.head != "linear" or settings.lora is not None or settings.y_range is not None:
            raise ValueError("--task detect: --head, --lora and --y-range apply to classification heads, not to boxes.")
        if settings.model in torchvision_detectors():
            if settings.detector is not None:
                raise ValueError(
                    f"--detector {settings.detector}: {settings.model} is a detector already and is re-headed (its "
                    f"class layers replaced), keeping its own head; leave --detector out, or give a backbone "
                    f"(timm/efficientnet_lite0, resnet50) to graft it on."
                )
            if settings.size is not None:
                raise ValueError(
                    f"--size: {settings.model} keeps the image sizes of its pretrained transform; leave --size out "
                    f"(it sets the image size of a detector grafted on a backbone: --model timm/NAME or a classifier)."
                )
        else:
            preprocessing_for(settings.model, size=settings.size)  # an unknown model fails here
        check_weights(settings.model, settings.weights)

    def is_read(self, data: Any) -> bool:
        """Checked :class:`BoxData`."""
        return isinstance(data, BoxData)

    def read(self, data: str | Path, settings: TrainSettings, *, progress: bool) -> BoxData:
        """:func:`~torchgraft.data.boxes.box_data`: every bad annotation listed by file and line (or left out
        and counted with ``skip_bad``)."""
        return box_data(data, valid_pct=settings.valid_pct, seed=settings.seed, skip_bad=settings.skip_bad)

    def build(self, data: LabelledData, settings: TrainSettings, say: Callable[[str], None]) -> Built:
        """A torchvision detector re-headed for ``data.classes`` (rows of the classes it knows by name kept), or
        ``settings.detector`` grafted on the pretrained backbone, its images resized to ``settings.size``
        (default: the weights' input size)."""
        assert settings.model is not None
        source, origin = pretrained_model(settings.model, settings.weights, trust_pickle=settings.trust_pickle)
        say(f"weights: {origin}")
        if is_detector(source):
            model = regraft_detection(source, data.classes)
            kept = model.info.options.get("kept") or []
            say(f"detector: {settings.model} re-headed for {len(data.classes)} classes ({len(kept)} kept their rows)")
        else:
            size = preprocessing_for(settings.model, size=settings.size).size
            head = settings.detector or "fcos"
            model = graft_detector(source, data.classes, head=head, input_size=(3, size, size))
        return Built(model, origin, settings.model, detector_preprocessing(model))

    def loaders(
        self, data: LabelledData, built: Built, settings: TrainSettings, device: torch.device
    ) -> tuple[DataLoader, DataLoader]:
        """Whole images with their boxes: training ones flipped at random (``augment="none"``: not), boxes that
        became degenerate removed (``SanitizeBoundingBoxes``); batches as lists (:func:`collate_boxes`)."""
        assert isinstance(data, BoxData)
        train_transform = box_transforms(train=True, flip=0.0 if settings.augment == "none" else 0.5)
        train, valid = data.datasets(train_transform, box_transforms(train=False))
        return dataset_loaders(train, valid, settings, device, collate_fn=collate_boxes)

    def examples(self, data: LabelledData, count: int = 4) -> list[str]:
        """A few validation images, recorded in ``model.json``."""
        return [str(Path(sample.path).resolve()) for sample in data.valid[:count]]

    def validation_inputs(self, data: LabelledData) -> ValidationInputs:
        """The validation image files (their boxes come with the outputs)."""
        return ValidationInputs("image", [str(sample.path) for sample in data.valid], load=load_rgb)
