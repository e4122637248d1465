"""Deployment exports: an exported run as one ONNX file or ``torch.export`` program that runs without torchgraft.

:func:`deploy` reads a run folder (``model.safetensors`` + ``model.json``), wraps the network with its task's
final step (softmax for classification and, per pixel, segmentation; sigmoid for multi-label; the targets'
units for regression) and writes

* ``model.onnx`` (ONNX Runtime, any language) or ``model.pt2`` (``torch.export.load(...).module()``), with a
  dynamic batch axis (and a dynamic sequence axis for texts) unless ``dynamic=False``;
* its metadata beside it, ``preprocessing.json`` for ``model.onnx`` and ``preprocessing.pt2.json`` for
  ``model.pt2`` (each format its own, so exporting one never changes what another's file says): what a
  program must do before and after, readable without torchgraft (the model file, resize, crop, mean/std,
  input names, class names, the multi-label threshold, the tokenizer folder of a text model). Exporting a
  format again replaces that format's two files only.

Then it proves the file computes what the trained model computes: both run on real inputs (the validation
examples the run recorded, or the images/texts given) and the largest difference must stay within
``tolerance`` (1e-4), else :class:`DeployError` (:mod:`torchgraft.ship.program` exports and checks; an
exporter failure names the smallest module that fails to export on its own and the fallbacks).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchgraft.data.decode import decode_rgb
from torchgraft.data.tokens import PadCollate, TextPreprocessing
from torchgraft.grafting.body import Body
from torchgraft.ship.detect_deploy import DetectionDeployable, export_detection
from torchgraft.ship.export import Exported, load_exported
from torchgraft.ship.graph_input import ImageInput
from torchgraft.ship.program import DEPLOY_FORMATS, DeployError, export_program
from torchgraft.tasks import Task
from torchgraft.tune.lora import merged

__all__ = [
    "DEPLOY_FORMATS",
    "PREPROCESSING_FILES",
    "DeployError",
    "DeployReport",
    "Deployable",
    "deploy",
    "deployable",
]

PREPROCESSING_FILES = {"onnx": "preprocessing.json", "pt2": "preprocessing.pt2.json"}  # one per format
PREPROCESSING_FILE = PREPROCESSING_FILES["onnx"]  # what the README's standalone ONNX predictor reads
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Deployable(nn.Module):
    """The network and its task's final step, called with plain tensors (what the exported file computes).

    Images: ``forward(image)`` with ``image`` uint8 RGB ``(N, H, W, 3)`` of any size, preprocessed inside
    (:class:`~torchgraft.ship.graph_input.ImageInput`: the resize, crop and normalisation of validation); a
    segmentation's outputs are resized back to ``(H, W)`` (bilinear, as :func:`predict_masks` does). Without
    ``image_input``, ``image`` is the normalised float ``(N, 3, size, size)`` batch. Texts:
    ``forward(input_ids, attention_mask[, token_type_ids])``. Returns ``probabilities`` (classification and,
    per pixel, segmentation: softmax; multi-label: sigmoid) or ``values`` (regression, in the targets' units).
    """

    def __init__(
        self, model: nn.Module, task: Task, input_names: Sequence[str], image_input: ImageInput | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.input_names = tuple(input_names)
        self.output_name = task.output
        self.image_input = image_input

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The task's decoded output for ``inputs`` (see the class docstring)."""
        if self.input_names != ("image",):
            outputs = self.model(**dict(zip(self.input_names, inputs, strict=True)))
        elif self.image_input is None:
            outputs = self.model(inputs[0])
        else:
            outputs = self.model(self.image_input(inputs[0]))
            if self.task.dense:  # per-pixel logits back at the image's size, before the softmax
                size = (inputs[0].shape[1], inputs[0].shape[2])
                outputs = nn.functional.interpolate(outputs, size=size, mode="bilinear", align_corners=False)
        return self.task.decode(outputs)[self.output_name]


@dataclass(frozen=True)
class DeployReport:
    """What :func:`deploy` wrote and how it was checked.

    Attributes:
        path: the ONNX file or ``.pt2`` program.
        preprocessing: its metadata beside it (``preprocessing.json`` for ONNX, ``preprocessing.pt2.json``).
        format: ``"onnx"`` or ``"pt2"``.
        max_difference: the largest absolute difference between the file's outputs and the model's.
        checked: what the outputs were compared on (``"4 validation images"``, ...).
        seconds: time spent exporting and checking.
    """

    path: Path
    preprocessing: Path
    format: str
    max_difference: float
    checked: str
    seconds: float

    def line(self) -> str:
        """One line for the terminal."""
        return (
            f"wrote {self.path} and {self.preprocessing.name}; outputs match the model within "
            f"{self.max_difference:.1e} on {self.checked} ({self.seconds:.1f} s)"
        )


def _input_names(exported: Exported) -> list[str]:
    if not isinstance(exported.preprocessing, TextPreprocessing):
        return ["image"]
    tokenizer = exported.preprocessing.load(exported.config["directory"])
    names = [n for n in _TEXT_INPUTS if n in getattr(tokenizer, "model_input_names", ("input_ids", "attention_mask"))]
    return names or ["input_ids", "attention_mask"]


def _image_input(exported: Exported) -> ImageInput | None:
    prep = exported.preprocessing
    return None if isinstance(prep, TextPreprocessing) else ImageInput(prep, whole=exported.task.dense)


def _wrapped(exported: Exported, model: nn.Module) -> Deployable | DetectionDeployable:
    """``model`` with ``exported``'s task's final step: a :class:`DetectionDeployable` for detection."""
    task = exported.task
    if task.targets == "detect":  # boxes: the task's layout of targets
        offset, threshold = task.offset(model), task.score_threshold  # type: ignore[attr-defined]
        return DetectionDeployable(model, label_offset=offset, score_threshold=threshold).eval()
    return Deployable(model, task, _input_names(exported), _image_input(exported)).eval()


def deployable(exported: Exported) -> Deployable | DetectionDeployable:
    """The :class:`Deployable` (detection: :class:`DetectionDeployable`) of a loaded export, taking uint8
    images of any size (adapters exported separately are merged first; a body cut inside the network is made
    traceable, which changes ``exported.model``: load a fresh one to train on)."""
    model = merged(exported.model).eval()
    for module in model.modules():
        if isinstance(module, Body):
            module.make_traceable()
    return _wrapped(exported, model)


# ------------------------------------------------------------------------------------------------ inputs


Inputs = tuple[list[tuple[torch.Tensor, ...]], str]  # the inputs of each check call, and what they are


def _image_inputs(exported: Exported, sources: Sequence[str]) -> Inputs:
    """One ``(1, H, W, 3)`` uint8 image per call (images differ in size), decoded as ``predict`` decodes."""
    paths = [s for s in sources if Path(s).is_file()]
    if paths:
        return [(decode_rgb(p).permute(1, 2, 0)[None].contiguous(),) for p in paths], f"{len(paths)} images"
    generator = torch.Generator().manual_seed(0)
    shapes = [(1, 97, 131, 3), (1, 150, 89, 3)]  # odd sizes, both orientations
    random = [(torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8),) for shape in shapes]
    return random, "2 random images (no image found to check on)"


def _text_inputs(exported: Exported, texts: Sequence[str], names: Sequence[str]) -> Inputs:
    prep = exported.preprocessing
    assert isinstance(prep, TextPreprocessing)
    tokenizer = prep.load(exported.config["directory"])
    chosen = list(texts) or ["A short sentence to check the exported model on.", "And a second, longer one."]
    encoded = prep.encode(tokenizer, chosen)
    batch = PadCollate(tokenizer.pad_token_id or 0)([{k: v[i] for k, v in encoded.items()} for i in range(len(chosen))])
    what = f"{len(chosen)} texts" if texts else "2 sample sentences (no text recorded to check on)"
    return [tuple(batch[name] for name in names)], what


def _check_inputs(exported: Exported, names: Sequence[str], check: Sequence[str] | None) -> Inputs:
    """The inputs the file is checked on: ``check`` if given, else the validation examples the run recorded."""
    sources = list(check) if check is not None else list(exported.config.get("examples", []))
    if isinstance(exported.preprocessing, TextPreprocessing):
        return _text_inputs(exported, sources, names)
    missing = [s for s in (check or []) if not Path(s).is_file()]
    if missing:
        raise FileNotFoundError(f"deploy: --check image {missing[0]} does not exist.")
    return _image_inputs(exported, sources)


def _detection_image(module: DetectionDeployable) -> dict[str, Any]:
    """What the graph does to a detector's input: scaling to [0, 1], then the detector's own transform."""
    transform = module.model.transform
    inside = {"scale": "pixels / 255 to float32 in [0, 1]", "mean": list(transform.image_mean),
              "std": list(transform.image_std), "resize_shorter_side": list(transform.min_size),
              "longer_side_at_most": transform.max_size, "boxes": "in the input image's pixels"}  # fmt: skip
    layout = "NHWC uint8 RGB, any batch, height and width (one size per batch): np.asarray(image.convert('RGB'))[None]"
    return {"layout": layout, "in_graph": inside}


def _preprocessing_record(
    exported: Exported, module: Deployable | DetectionDeployable, format: str, path: Path
) -> dict[str, Any]:
    prep = exported.preprocessing.as_dict()
    record: dict[str, Any] = {
        "model": path.name,
        "format": format,
        "inputs": list(module.input_names),
        "output": module.output_name,
        "task": exported.task.name,
        "classes": exported.classes,
    }
    if isinstance(module, DetectionDeployable):
        record |= {"output_names": list(module.output_names), "image": _detection_image(module), **module.record()}
    elif isinstance(exported.preprocessing, TextPreprocessing):
        folder = Path(exported.config["directory"]) / prep["tokenizer"]
        record["text"] = {
            "tokenizer": os.path.relpath(folder, path.parent) + "/",  # tokenizer.json: the `tokenizers` library
            "max_length": prep["max_length"],
            "truncation": True,
            "padding": "longest in the batch",
        }
    else:  # the graph does the resize, crop and normalisation: the consumer decodes, nothing more
        inside = {"interpolation": prep["interpolation"], "antialias": True, "mean": prep["mean"], "std": prep["std"]}
        if exported.task.dense:  # the whole image resized; the probabilities come back at the image's size
            inside |= {"resize": [prep["size"], prep["size"]], "output": "(N, classes, H, W) at the input's size"}
        else:
            inside |= {"resize_shorter_side": prep["resize"], "center_crop": prep["size"]}
        record["image"] = {
            "layout": "NHWC uint8 RGB, any height and width: decoded pixels, np.asarray(image.convert('RGB'))[None]",
            "in_graph": inside,
        }
    return {**record, **exported.task.deploy_record()}


def _example(inputs: tuple[torch.Tensor, ...], dynamic: bool) -> tuple[torch.Tensor, ...]:
    """The export's example: with a dynamic batch axis, one image twice (torch.export takes a size-1 axis
    for a constant)."""
    if not dynamic or len(inputs) != 1 or inputs[0].shape[0] != 1:
        return inputs
    return (torch.cat([inputs[0], inputs[0]]),)


def deploy(
    run_dir: str | Path,
    *,
    format: str = "onnx",
    dynamic: bool = True,
    dynamic_size: bool = False,
    check: Sequence[str] | None = None,
    out: str | Path | None = None,
    tolerance: float = 1e-4,
    on_check: Callable[[int, int], None] | None = None,
) -> DeployReport:
    """Write ``RUN_DIR/model.onnx`` and ``preprocessing.json`` (or ``model.pt2`` and ``preprocessing.pt2.json``),
    and check the file.

    Args:
        run_dir: an exported run (``torchgraft train --out RUN_DIR``, or :func:`torchgraft.export_model`).
        format: ``"onnx"`` or ``"pt2"`` (detection: ``"onnx"`` only, see
            :mod:`torchgraft.ship.detect_deploy`: outputs ``boxes``, ``scores``, ``labels``, padded per image).
        dynamic: a dynamic batch axis (and sequence axis for texts); ``False`` fixes the check batch's shape.
        dynamic_size: kept for scripts written before images were preprocessed inside the graph: an image
            model now always takes any height and width (with ``dynamic``).
        check: image paths or texts to compare outputs on (default: the validation examples the run recorded).
        out: where to write the model file (default: inside ``run_dir``); its metadata goes beside it.
        tolerance: the largest absolute difference accepted between the file and the PyTorch model.
        on_check: called as ``on_check(done, total)`` after each check run of the file (progress).

    A detection run's file always takes any batch and image size (``dynamic`` is not read) and is checked on
    each image and on a batch of four, detections matched by label and box
    (:func:`~torchgraft.ship.detect_deploy.compare_detections`).

    Raises:
        DeployError: the exporter failed (the module is named), an extra is missing, or outputs differ.

    Example:
        >>> deploy("runs/pets").line()
        'wrote runs/pets/model.onnx and preprocessing.json; outputs match the model within 2.4e-07 on 4 images ...'
    """
    if format not in DEPLOY_FORMATS:
        raise DeployError(f"deploy: format {format!r}; choose one of {DEPLOY_FORMATS}.")
    start = time.perf_counter()
    run_dir = Path(run_dir)
    exported = load_exported(run_dir)
    untouched = _wrapped(exported, merged(exported.model).eval())
    module = deployable(load_exported(run_dir))
    checks, checked = _check_inputs(exported, module.input_names, check)
    path = Path(out) if out is not None else run_dir / f"model.{format}"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")  # torch.export.load wants the .pt2 suffix
    if isinstance(module, DetectionDeployable):  # its own exporter: a batch axis of its own
        difference = export_detection(
            module, checks, partial, format=format, tolerance=tolerance, reference=untouched, on_check=on_check
        )
    else:
        difference = export_program(
            module,
            _example(checks[0], dynamic),
            partial,
            format=format,
            input_names=module.input_names,
            dynamic=dynamic,
            dynamic_size=dynamic_size or module.image_input is not None,
            tolerance=tolerance,
            reference=untouched,
            checks=checks,
            on_check=on_check,
        )
    os.replace(partial, path)
    prep_path = path.with_name(PREPROCESSING_FILES[format])  # each format its own: one never breaks another
    prep_path.write_text(json.dumps(_preprocessing_record(exported, module, format, path), indent=2) + "\n")
    return DeployReport(path, prep_path, format, difference, checked, time.perf_counter() - start)
