"""Classify image files with an exported model: top-k classes with probabilities (and the raw logits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from torchgraft.app.export import Exported
from torchgraft.data.images import load_rgb

__all__ = ["Prediction", "predict_images"]


@dataclass
class Prediction:
    """What the model says about one image: ``top`` is ``[(class, probability), ...]``, best first."""

    path: str
    top: list[tuple[str, float]]
    logits: list[float]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return {
            "path": self.path,
            "top": [{"class": c, "probability": p} for c, p in self.top],
            "logits": self.logits,
        }


@torch.no_grad()
def predict_images(
    exported: Exported, paths: Sequence[str | Path], *, top_k: int = 5, batch_size: int = 32
) -> list[Prediction]:
    """Run ``exported`` (from :func:`torchgraft.load_exported`) on the images at ``paths``, preprocessed
    exactly as its validation data was.

    Raises:
        BadImage: a file cannot be decoded (its path is named).

    Example:
        >>> exported = load_exported("runs/pets")
        >>> predict_images(exported, ["cat.jpg"], top_k=1)[0].top
        [('cat', 0.97)]
    """
    transform = exported.preprocessing.eval_transform()
    device = next(exported.model.parameters()).device
    k = max(1, min(top_k, len(exported.classes)))
    results: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = [str(p) for p in paths[start : start + batch_size]]
        batch = torch.stack([transform(load_rgb(p)) for p in chunk]).to(device)
        logits = exported.model(batch).float().cpu()
        probabilities = exported.task.decode(logits)["probabilities"]
        values, indices = probabilities.topk(k, dim=1)
        for path, row, vals, idx in zip(chunk, logits, values, indices, strict=True):
            top = [(exported.classes[i], float(v)) for v, i in zip(vals.tolist(), idx.tolist(), strict=True)]
            results.append(Prediction(path, top, row.tolist()))
    return results
