"""An exported model: ``model.safetensors`` (the weights, no code) and ``model.json`` (everything needed to
rebuild the network without the training run: architecture, how it was grafted, classes, preprocessing,
library version). :func:`load_exported` rebuilds it in a fresh process from those two files alone; a text
model also reads its tokenizer and encoder config from the ``hf/`` folder beside them (no download).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchgraft.data.preprocess import Preprocessing
from torchgraft.data.tokens import TextPreprocessing
from torchgraft.grafting.dense import graft_dense
from torchgraft.grafting.surgery import graft
from torchgraft.tasks import Classification, Task, task_from_record
from torchgraft.tune.lora import is_adapted, merged, save_adapters, without_adapters
from torchgraft.weights.checkpoint import save_weights
from torchgraft.weights.hf import hf_config_model
from torchgraft.weights.load import LoadError, load_weights
from torchgraft.weights.zoo import build_model

__all__ = [
    "ADAPTER_EXPORTS",
    "EXPORT_FORMAT",
    "ExportError",
    "Exported",
    "Preprocessor",
    "export_model",
    "load_exported",
]

EXPORT_FORMAT = "torchgraft-export/1"
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "model.json"
Preprocessor = Preprocessing | TextPreprocessing  # images or texts
ADAPTER_EXPORTS = ("merge", "separate")
ADAPTER_FILE = "adapter_model.safetensors"
_GRAFT_OPTIONS = ("cut", "head", "pool", "in_chans", "hidden", "dropout", "batch_norm", "y_range")
_DENSE_OPTIONS = ("decoder", "widths", "aux")  # graft_dense's: a segmentation export records these instead


class ExportError(ValueError):
    """An export folder is missing a file, or was written by an incompatible version."""


@dataclass
class Exported:
    """A rebuilt exported model, in eval mode, with what is needed to use it."""

    model: nn.Module
    classes: list[str]
    preprocessing: Preprocessor
    config: dict[str, Any]
    task: Task = field(default_factory=Classification)


def export_model(
    directory: str | Path,
    model: nn.Module,
    *,
    architecture: str,
    classes: Sequence[str],
    preprocessing: Preprocessor,
    graft_options: dict[str, Any] | None = None,
    task: Task | None = None,
    extra: dict[str, Any] | None = None,
    adapters: str = "merge",
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory`` (each atomically).

    A model with LoRA adapters (:func:`torchgraft.lora`, or a peft ``PeftModel``) is exported with the
    adapters folded into the weights (``adapters="merge"``: the export runs without peft), or with them
    written beside it in peft's format (``"separate"``: ``model.safetensors`` holds the pretrained base and
    the trained head, ``adapter_model.safetensors`` + ``adapter_config.json`` the adapters;
    ``peft.PeftModel.from_pretrained(base, directory)`` or :func:`load_exported` puts them back on).

    Args:
        directory: the folder to write (created if needed).
        model: the grafted model (the output of :func:`torchgraft.graft` with ``graft_options``).
        architecture: the name :func:`torchgraft.build_model` builds (``"resnet50"``, ``"timm/convnext_tiny"``),
            or ``"hf/..."`` for a text encoder (rebuilt from the ``config.json`` that ``preprocessing``'s
            tokenizer folder holds; :func:`torchgraft.train_run` writes it).
        classes: class names, in output order.
        preprocessing: what validation used (image transforms or a tokenizer); prediction uses the same.
        graft_options: the keyword arguments ``graft`` was called with (JSON values); for a segmentation
            model (:func:`torchgraft.graft_dense`), ``decoder`` and ``widths``. The rebuild reruns the graft at
            the input size of ``preprocessing``.
        task: the task trained (recorded so that ``predict`` decodes outputs the same way; default
            classification).
        extra: more JSON fields to record (weights source, final metrics...).
        adapters: ``"merge"`` or ``"separate"``, for a model with peft adapters (see above).

    Example:
        >>> export_model("run", model, architecture="resnet18", classes=["cat", "dog"],
        ...              preprocessing=preprocessing_for("resnet18"))
    """
    from torchgraft._version import __version__

    options = dict(graft_options or {})
    known = _DENSE_OPTIONS if _is_dense(model) else _GRAFT_OPTIONS
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ExportError(f"export_model: graft options {unknown} cannot be stored; use only {known}.")
    if adapters not in ADAPTER_EXPORTS:
        raise ExportError(f"export_model: adapters={adapters!r}; choose one of {ADAPTER_EXPORTS}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = None
    if is_adapted(model):
        record = {"mode": adapters, **getattr(model, "_torchgraft_lora", {})}
        if adapters == "separate":
            save_adapters(model, directory)
            record["file"] = ADAPTER_FILE
        model = merged(model) if adapters == "merge" else without_adapters(model)
    save_weights(model, directory / WEIGHTS_FILE)
    config = {
        "format": EXPORT_FORMAT,
        "torchgraft_version": __version__,
        "architecture": architecture,
        "graft": {"n_out": len(classes), **({"kind": "dense"} if _is_dense(model) else {}), **options},
        "classes": list(classes),
        "task": (task or Classification()).record(),
        "preprocessing": preprocessing.as_dict(),
        **({"adapters": record} if record else {}),
        **(extra or {}),
    }
    partial = directory / (CONFIG_FILE + ".partial")
    partial.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(partial, directory / CONFIG_FILE)
    return directory / CONFIG_FILE


def _is_dense(model: nn.Module) -> bool:
    """Whether ``model`` (or the network inside its LoRA wrapper) was grafted by :func:`graft_dense`."""
    return any(getattr(getattr(m, "info", None), "method", None) in ("dense", "resegment") for m in model.modules())


def _rebuild(config: dict[str, Any], prep: Preprocessing) -> nn.Module:
    """The grafted image network model.json describes, with fresh weights."""
    options = dict(config["graft"])
    n_out, dense = options.pop("n_out"), options.pop("kind", None) == "dense"
    source = build_model(config["architecture"], device="cpu")
    if dense:
        widths = tuple(options.pop("widths", (256, 128, 64, 32, 16)))
        return graft_dense(source, n_out, input_size=(3, prep.size, prep.size), widths=widths, **options)
    if options.get("y_range") is not None:
        options["y_range"] = tuple(options["y_range"])
    return graft(source, n_out, input_size=(options.get("in_chans") or 3, prep.size, prep.size), **options)


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{directory}: not an exported model (needs {CONFIG_FILE} and {WEIGHTS_FILE}; `torchgraft train "
            f"--out {directory}` writes them)."
        )
    config = json.loads(path.read_text())
    if config.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{path}: format {config.get('format')!r}, this torchgraft reads {EXPORT_FORMAT!r}.")
    return config


def _with_adapters(model: nn.Module, directory: Path) -> nn.Module:
    """Put the separately exported adapters back on the rebuilt network (needs peft)."""
    if not (directory / ADAPTER_FILE).is_file():
        raise FileNotFoundError(f"{directory}: model.json records separate adapters but {ADAPTER_FILE} is missing.")
    try:
        from peft import PeftModel
    except ImportError as error:
        raise ExportError(
            f"{directory}: the adapters were exported separately, which needs peft to load: pip install "
            f"'torchgraft[lora]' (or export with adapters='merge')."
        ) from error
    return PeftModel.from_pretrained(model, str(directory))


def load_exported(directory: str | Path, *, device: str | torch.device = "cpu") -> Exported:
    """Rebuild the exported model in ``directory`` from its two files (no training code, no download).

    Raises:
        FileNotFoundError: a file is missing.
        ExportError: unknown format, or weights that do not fit the rebuilt network.
    """
    directory = Path(directory)
    config = _read_config(directory)
    prep: Preprocessor
    if config["preprocessing"].get("kind") == "text":
        options = dict(config["graft"])
        n_out = options.pop("n_out")
        if options.get("y_range") is not None:
            options["y_range"] = tuple(options["y_range"])
        prep = TextPreprocessing.from_dict(config["preprocessing"])
        folder = directory / prep.tokenizer
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{directory}: a text model needs {folder}/config.json (written by train).")
        model = graft(hf_config_model(folder), n_out, **options)
    else:
        prep = Preprocessing.from_dict(config["preprocessing"])
        model = _rebuild(config, prep)
    try:
        load_weights(model, directory / WEIGHTS_FILE, strict=True)
    except LoadError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise ExportError(
            f"{directory}: {WEIGHTS_FILE} does not fit {config['architecture']} as model.json describes it "
            f"({first}; ...). Were the files written by one run?"
        ) from error
    if (config.get("adapters") or {}).get("mode") == "separate":
        model = _with_adapters(model, directory)
    task = task_from_record(config.get("task"))
    config["directory"] = str(directory)  # where the files were read (a text model's tokenizer is beside them)
    return Exported(model.to(device).eval(), list(config["classes"]), prep, config, task)
