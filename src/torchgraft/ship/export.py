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

from torchgraft.choices import ADAPTER_EXPORTS
from torchgraft.data.preprocess import Preprocessing
from torchgraft.data.tokens import TextPreprocessing
from torchgraft.devices import check_device
from torchgraft.grafting.info import GraftInfo, GraftRecordError
from torchgraft.grafting.replay import replay_graft
from torchgraft.tasks import Classification, Task, task_from_record
from torchgraft.tune.lora import is_adapted, merged, save_adapters, without_adapters
from torchgraft.weights.checkpoint import read_checkpoint, save_weights
from torchgraft.weights.hf import hf_config_model
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

EXPORT_FORMAT = "torchgraft-export/2"  # 2: the graft's own record (GraftInfo.record), replayed without a dry run
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "model.json"
Preprocessor = Preprocessing | TextPreprocessing  # images or texts
ADAPTER_FILE = "adapter_model.safetensors"


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
        model: the grafted model (from :func:`torchgraft.graft` or :func:`torchgraft.graft_dense`, trained, with
            or without LoRA adapters); ``model.json`` records its ``info.record()``, which the rebuild replays.
        architecture: the name :func:`torchgraft.build_model` builds (``"resnet50"``, ``"timm/convnext_tiny"``),
            or ``"hf/..."`` for a text encoder (rebuilt from the ``config.json`` that ``preprocessing``'s
            tokenizer folder holds; :func:`torchgraft.train_run` writes it).
        classes: class names, in output order.
        preprocessing: what validation used (image transforms or a tokenizer); prediction uses the same.
        task: the task trained (recorded so that ``predict`` decodes outputs the same way; default
            classification).
        extra: more JSON fields to record (weights source, final metrics...).
        adapters: ``"merge"`` or ``"separate"``, for a model with peft adapters (see above).

    Example:
        >>> export_model("run", model, architecture="resnet18", classes=["cat", "dog"],
        ...              preprocessing=preprocessing_for("resnet18"))
    """
    from torchgraft._version import __version__

    if adapters not in ADAPTER_EXPORTS:
        raise ExportError(f"export_model: adapters={adapters!r}; choose one of {ADAPTER_EXPORTS}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plain = model
    if is_adapted(model):
        plain = merged(model) if adapters == "merge" else without_adapters(model)
    graft = _graft_record(plain, len(classes))
    record = None  # LoRA is applied after the graft: its own record, beside the graft's
    if is_adapted(model):
        record = {"mode": adapters, **getattr(model, "_torchgraft_lora", {})}
        if adapters == "separate":
            save_adapters(model, directory)
            record["file"] = ADAPTER_FILE
    save_weights(plain, directory / WEIGHTS_FILE)
    config = {
        "format": EXPORT_FORMAT,
        "torchgraft_version": __version__,
        "architecture": architecture,
        "graft": graft,
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


def _graft_record(model: nn.Module, n_classes: int) -> dict[str, Any]:
    """``model.info.record()``, checked: a graft that the record can rebuild, with one output per class."""
    info = getattr(model, "info", None)
    if not isinstance(info, GraftInfo):
        raise ExportError(
            f"export_model: {type(model).__name__} was not made by torchgraft.graft or graft_dense, so model.json "
            f"cannot record how to rebuild it; graft it (graft(network, n_classes)), or save_weights() and "
            f"rebuild it in your code."
        )
    problem = info.replay_problem()
    if problem is not None:
        raise ExportError(
            f"export_model: {problem}; model.json cannot rebuild it. Graft with head='linear' or 'mlp' and a "
            f"module name or int cut=, or save_weights() and rebuild the model in your code."
        )
    if info.n_out != n_classes:
        raise ExportError(
            f"export_model: classes names {n_classes} classes but the model has {info.n_out} outputs; give one "
            f"name per output, in output order."
        )
    return info.record()


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{directory}: not an exported model (needs {CONFIG_FILE} and {WEIGHTS_FILE}; `torchgraft train "
            f"--out {directory}` writes them)."
        )
    config = json.loads(path.read_text())
    if config.get("format") != EXPORT_FORMAT:
        raise ExportError(
            f"{path}: format {config.get('format')!r}, this torchgraft reads {EXPORT_FORMAT!r}; export the model "
            f"again with this torchgraft (torchgraft train --out, or export_model)."
        )
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


def _source_network(config: dict[str, Any], directory: Path) -> tuple[nn.Module, Preprocessor]:
    """The source network of the export, with random weights, and the preprocessing."""
    if config["preprocessing"].get("kind") == "text":
        text = TextPreprocessing.from_dict(config["preprocessing"])
        folder = directory / text.tokenizer
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{directory}: a text model needs {folder}/config.json (written by train).")
        return hf_config_model(folder), text
    return build_model(config["architecture"], device="cpu"), Preprocessing.from_dict(config["preprocessing"])


def _few(names: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(names[:count])
    return f"{shown} (and {len(names) - count} more)" if len(names) > count else shown or "none"


def _load_exact(model: nn.Module, path: Path, architecture: str) -> None:
    """Load ``path`` into ``model`` with exact keys (``load_state_dict(strict=True)``, no key matching)."""
    checkpoint = read_checkpoint(path)
    saved = checkpoint.tensors
    state = {**saved, **{alias: saved[key] for alias, key in checkpoint.aliases.items() if key in saved}}
    expected = model.state_dict().keys()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ExportError(
            f"{path.parent}: {WEIGHTS_FILE} does not fit {architecture} as model.json describes it (missing in "
            f"{WEIGHTS_FILE}: {_few(missing)}; unexpected: {_few(unexpected)}). An export loads with exact keys: "
            f"{WEIGHTS_FILE} and {CONFIG_FILE} must come from one export_model call; export the model again."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # a tensor of another shape
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
        raise ExportError(
            f"{path.parent}: {WEIGHTS_FILE} does not fit {architecture} as model.json describes it ({detail}); "
            f"{WEIGHTS_FILE} and {CONFIG_FILE} must come from one export_model call."
        ) from None


def load_exported(directory: str | Path, *, device: str | torch.device = "cpu") -> Exported:
    """Rebuild the exported model in ``directory`` from its two files (no training code, no download): the
    recorded graft is replayed on the architecture built again (no dry run), and the weights load with exact
    keys (``load_state_dict(strict=True)``), so the model is the trained one, bit for bit.

    Raises:
        FileNotFoundError: a file is missing.
        ExportError: unknown format, or weights whose keys or shapes do not fit the rebuilt network.
        DeviceError: ``device`` is not on this machine.

    Example:
        >>> exported = load_exported("runs/pets")
        >>> exported.model(batch).argmax(1)
    """
    device = check_device(device)  # before building: a missing GPU is one line, not PyTorch's RuntimeError
    directory = Path(directory)
    config = _read_config(directory)
    source, prep = _source_network(config, directory)
    try:
        model: nn.Module = replay_graft(source, config["graft"])
    except GraftRecordError as error:
        raise ExportError(f"{directory / CONFIG_FILE}: {error}") from None
    _load_exact(model, directory / WEIGHTS_FILE, config["architecture"])
    if (config.get("adapters") or {}).get("mode") == "separate":
        model = _with_adapters(model, directory)
    task = task_from_record(config["task"])
    config["directory"] = str(directory)  # where the files were read (a text model's tokenizer is beside them)
    return Exported(model.to(device).eval(), list(config["classes"]), prep, config, task)
