"""Weights: safe checkpoint reading, key alignment, loading and saving, building pretrained models by name.

The names below are the package's public surface for weights (``torchgraft`` re-exports most of them);
the modules hold the rest: :mod:`~torchgraft.weights.formats` (what a file is, from its first bytes),
:mod:`~torchgraft.weights.zoo` (models by name), :mod:`~torchgraft.weights.hf` (Hugging Face models).
"""

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
