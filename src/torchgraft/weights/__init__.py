"""Weights: safe checkpoint reading, key alignment, loading and saving, building pretrained models by name.

The names below are the package's public surface for weights (``torchgraft`` re-exports most of them);
the modules hold the rest: :mod:`~torchgraft.weights.formats` (what a file is, from its first bytes),
:mod:`~torchgraft.weights.zoo` (models by name), :mod:`~torchgraft.weights.hf` (Hugging Face models).
"""

from typing import TYPE_CHECKING

from torchgraft._lazy import lazy_exports

if TYPE_CHECKING:  # at run time each name is imported when first read (torchgraft._lazy)
    from torchgraft.weights.align import Alignment, Match, align_keys
    from torchgraft.weights.checkpoint import (
        Checkpoint,
        CheckpointReadError,
        UnsafeCheckpointError,
        read_checkpoint,
        save_weights,
    )
    from torchgraft.weights.load import LoadError, LoadReport, load_weights
    from torchgraft.weights.pretrained import WeightsError, pretrained_model

_EXPORTS: dict[str, tuple[str, ...]] = {
    "torchgraft.weights.align": ("Alignment", "Match", "align_keys"),
    "torchgraft.weights.checkpoint": (
        "Checkpoint",
        "CheckpointReadError",
        "UnsafeCheckpointError",
        "read_checkpoint",
        "save_weights",
    ),
    "torchgraft.weights.load": ("LoadError", "LoadReport", "load_weights"),
    "torchgraft.weights.pretrained": ("WeightsError", "pretrained_model"),
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = [
    "Alignment",
    "Checkpoint",
    "CheckpointReadError",
    "LoadError",
    "LoadReport",
    "Match",
    "UnsafeCheckpointError",
    "WeightsError",
    "align_keys",
    "load_weights",
    "pretrained_model",
    "read_checkpoint",
    "save_weights",
]
