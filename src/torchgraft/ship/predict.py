"""Predict images or texts with an exported model, as its task decodes outputs: top-k classes (single label),
every label above its threshold (multi-label), values in the targets' units (regression) or a class per pixel
(segmentation: :func:`predict_masks`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from torchgraft.data.decode import decode_rgb
from torchgraft.data.tokens import PadCollate, TextPreprocessing
from torchgraft.ship.export import Exported
from torchgraft.ship.inputs import Inputs, expand_images, expand_texts, shorten_text

OnBatch = Callable[[int, int], None]  # (inputs done, inputs in all), after each batch

__all__ = ["MaskPrediction", "Prediction", "predict_images", "predict_masks", "predict_texts", "shorten_text"]


@dataclass
class Prediction:
    """What the model says about one image or text.

    Attributes:
        path: the image file; for a text, where it came from (a file, ``file.csv:LINE``, or the text itself
            shortened).
        top: ``[(class, probability), ...]`` best first (single label: the top k; multi-label: every label
            at or above the threshold).
        logits: the raw outputs.
        values: regression: ``{target name: value}`` in the targets' units.
    """

    path: str
    top: list[tuple[str, float]]
    logits: list[float]
    values: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        fields: dict[str, object] = {"path": self.path}
        if self.values:
            fields["values"] = self.values
        else:
            fields["top"] = [{"class": c, "probability": p} for c, p in self.top]
        return {**fields, "logits": self.logits}

    def line(self) -> str:
        """One readable line (without the path)."""
        if self.values:
            return "  ".join(f"{name} {value:.4g}" for name, value in self.values.items())
        return "  ".join(f"{name} {probability:.3f}" for name, probability in self.top) or "(no label)"


@dataclass
class MaskPrediction:
    """What a segmentation model says about one image.

    Attributes:
        path: the image file.
        labels: ``(H, W)`` class indices (int64) at the image's own size.
        fractions: ``{class: fraction of the image's pixels}``, every class, largest first.
    """

    path: str
    labels: np.ndarray
    fractions: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready fields (the mask itself is written as a PNG, not put in the JSON)."""
        return {"path": self.path, "size": list(self.labels.shape[::-1]), "fractions": self.fractions}

    def line(self) -> str:
        """The classes covering at least 0.1% of the image, largest first."""
        return "  ".join(f"{name} {share:.3f}" for name, share in self.fractions.items() if share >= 0.001)


def _describe(exported: Exported, logits: torch.Tensor, path: str, k: int) -> Prediction:
    """One image's prediction from its logits, as the exported task decodes them."""
    top, values = exported.task.prediction(exported.task.decode(logits[None]), exported.classes, top_k=k)
    return Prediction(path, top, logits.tolist(), values)


@torch.no_grad()
def predict_images(
    exported: Exported,
    inputs: Inputs,
    *,
    top_k: int = 5,
    batch_size: int = 32,
    x_col: str | None = None,
    on_batch: OnBatch | None = None,
) -> list[Prediction]:
    """Run ``exported`` (from :func:`torchgraft.load_exported`) on images, preprocessed exactly as its
    validation data was, and decode the outputs as its task does (``top_k`` applies to single-label
    classification; multi-label lists every label at or above the stored threshold).

    ``inputs`` is what ``torchgraft predict`` takes (:func:`torchgraft.ship.inputs.expand_images`): an image
    file, a folder (every image inside, sorted), a CSV / JSON-lines file of image paths (column ``x_col``,
    default ``path``/``image``/...), or a list of these; one string is one input. ``on_batch(done, total)``
    is called after each batch (progress: :func:`torchgraft.cli.progress.count_progress`).

    Raises:
        FileNotFoundError: an input that is no file or folder.
        BadImage: a file cannot be decoded (its path is named).

    Example:
        >>> exported = load_exported("runs/pets")
        >>> predict_images(exported, "cat.jpg", top_k=1)[0].top
        [('cat', 0.97)]
    """
    if isinstance(exported.preprocessing, TextPreprocessing):
        raise TypeError("predict_images: this is a text model; use predict_texts (torchgraft predict RUN_DIR 'text').")
    if exported.task.dense:
        raise TypeError(f"predict_images: this {exported.task.name} model predicts per pixel; use predict_masks.")
    paths = expand_images(inputs, x_col=x_col)
    transform = exported.preprocessing.eval_transform()
    device = next(exported.model.parameters()).device
    k = max(1, min(top_k, len(exported.classes)))
    results: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = [str(p) for p in paths[start : start + batch_size]]
        batch = torch.stack([transform(decode_rgb(p)) for p in chunk]).to(device)
        logits = exported.model(batch).float().cpu()
        results += [_describe(exported, row, path, k) for path, row in zip(chunk, logits, strict=True)]
        if on_batch is not None:
            on_batch(len(results), len(paths))
    return results


@torch.no_grad()
def predict_masks(
    exported: Exported,
    inputs: Inputs,
    *,
    batch_size: int = 8,
    x_col: str | None = None,
    on_batch: OnBatch | None = None,
) -> list[MaskPrediction]:
    """Run a segmentation model (from :func:`torchgraft.load_exported`) on images (``inputs``: as
    :func:`predict_images` takes them: files, folders, CSVs of paths, a list): each is resized whole to the
    model's input size as in validation, and the logits are resized back to the image's own size
    (bilinear) before the argmax, so the mask covers every pixel of the image. ``on_batch(done, total)`` is
    called after each batch.

    Raises:
        BadImage: a file cannot be decoded (its path is named).

    Example:
        >>> prediction = predict_masks(load_exported("runs/scenes"), ["street.jpg"])[0]
        >>> prediction.labels.shape, list(prediction.fractions)[:2]
        ((480, 640), ['road', 'sky'])
    """
    if not exported.task.dense or isinstance(exported.preprocessing, TextPreprocessing):
        raise TypeError("predict_masks: not a segmentation model; use predict_images or predict_texts.")
    paths = expand_images(inputs, x_col=x_col)
    transform = exported.preprocessing.dense_transform()
    device = next(exported.model.parameters()).device
    results: list[MaskPrediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = [str(p) for p in paths[start : start + batch_size]]
        images = [decode_rgb(p) for p in chunk]
        logits = exported.model(torch.stack([transform(image) for image in images]).to(device)).float().cpu()
        for path, image, row in zip(chunk, images, logits, strict=True):
            resized = torch.nn.functional.interpolate(row[None], size=tuple(image.shape[-2:]), mode="bilinear")
            labels = resized[0].argmax(dim=0)
            counts = torch.bincount(labels.flatten(), minlength=len(exported.classes)).double() / labels.numel()
            order = counts.argsort(descending=True).tolist()
            fractions = {exported.classes[i]: round(float(counts[i]), 6) for i in order}
            results.append(MaskPrediction(path, labels.numpy(), fractions))
        if on_batch is not None:
            on_batch(len(results), len(paths))
    return results


@torch.no_grad()
def predict_texts(
    exported: Exported,
    texts: Inputs,
    *,
    sources: Sequence[str] | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    root: str | Path | None = None,
    x_col: str | None = None,
    on_batch: OnBatch | None = None,
) -> list[Prediction]:
    """Run a text model (from :func:`torchgraft.load_exported`) on ``texts``, tokenized as in training
    (its own tokenizer, read from the export folder ``root`` — default: where it was loaded from — and the
    same truncation), each batch padded to its longest text; decoded as its task does.

    ``texts`` is what ``torchgraft predict`` takes for a text model
    (:func:`torchgraft.ship.inputs.expand_texts`): a text, a ``.txt`` file, a folder of them, a CSV /
    JSON-lines file (its text column: ``x_col``, default ``text``/...), or a list of these; one string is one
    text (or one file), never its characters. ``sources`` name where each text came from in
    ``Prediction.path`` (default: the file, ``file.csv:LINE``, or the text shortened); given, ``texts`` are
    taken as texts as they are, one per source. ``on_batch(done, total)`` is called after each batch.

    Raises:
        FileNotFoundError: a ``.txt`` input that does not exist, or a folder without ``.txt`` files.

    Example:
        >>> exported = load_exported("runs/news")
        >>> predict_texts(exported, "Shares rose after the results.", top_k=1)[0].top
        [('business', 0.98)]
    """
    prep = exported.preprocessing
    if not isinstance(prep, TextPreprocessing):
        raise TypeError("predict_texts: this is an image model; use predict_images.")
    folder = root if root is not None else exported.config.get("directory")
    tokenizer = prep.load(folder)
    collate = PadCollate(tokenizer.pad_token_id or 0)
    device = next(exported.model.parameters()).device
    k = max(1, min(top_k, len(exported.classes)))
    if sources is not None:
        texts = [texts] if isinstance(texts, str) else [str(text) for text in texts]
        if len(sources) != len(texts):
            raise ValueError(f"predict_texts: {len(sources)} sources for {len(texts)} texts; give one per text.")
        names = list(sources)
    else:
        names, texts = expand_texts(texts, x_col=x_col)
    results: list[Prediction] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        encoded = prep.encode(tokenizer, chunk)
        batch = collate([{key: values[i] for key, values in encoded.items()} for i in range(len(chunk))])
        logits = exported.model(**{key: value.to(device) for key, value in batch.items()}).float().cpu()
        named = zip(names[start : start + len(chunk)], logits, strict=True)
        results += [_describe(exported, row, name, k) for name, row in named]
        if on_batch is not None:
            on_batch(len(results), len(texts))
    return results
