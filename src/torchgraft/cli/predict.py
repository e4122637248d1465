"""``torchgraft predict RUN_DIR INPUT...``: what an exported model says about images or texts (top-k classes,
the labels above the threshold, or regression values), from the exported files alone.

Inputs: image files or folders of images (image models); texts given on the command line, ``.txt`` files
or folders of them (text models); or, for either, a CSV / JSON-lines file whose input column (``path`` /
``text``, or ``--x-col``) holds the image paths or the texts.

A segmentation model writes, for each image ``x.jpg``, ``x.mask.png`` (an index PNG: pixel values are the
classes, at the image's size) and ``x.overlay.png`` (the mask's colours over the image) beside it or into
``--out``, and prints the share of the image each class covers.

A detector prints each image's boxes (class, score, ``x1,y1,x2,y2`` in the image's pixels) that score at least
``--score-threshold`` (default: the run's) and writes ``x.boxes.png``, the image with them drawn, beside it or
into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the parser builds without torch; the functions below import what they run
    from torchgraft.ship.export import Exported
    from torchgraft.ship.predict import MaskPrediction, Prediction

__all__ = ["add_parser", "run", "write_masks"]


def add_parser(commands: Any) -> None:
    """Register the ``predict`` subcommand."""
    parser = commands.add_parser(
        "predict",
        help="predict images or texts with an exported model",
        description="Load the exported model of RUN_DIR (model.safetensors + model.json, and hf/ for a text "
        "model; nothing else) and print for each input the top-k classes with their probabilities "
        "(multi-label: every label above the stored threshold; regression: the values; segmentation: writes "
        "IMAGE.mask.png and IMAGE.overlay.png and prints each class's share of the pixels).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by torchgraft train (or demo)")
    parser.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="+",
        help="image files or folders; for a text model: texts, .txt files or folders of them; a CSV / JSON-lines "
        "file of inputs for either",
    )
    parser.add_argument("--x-col", default=None, help="the input column of a CSV (default: path/image/text...)")
    parser.add_argument("--top-k", type=int, default=3, help="classes per input (default: 3)")
    parser.add_argument("--json", action="store_true", help="JSON: input, top classes, probabilities, logits")
    parser.add_argument("--device", default="cpu", help="default: cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress lines (--json implies it)")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="segmentation: write the masks and overlays here; detection: the drawn boxes (default: beside each image)",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        metavar="S",
        help="detection: the score a box needs to be shown (default: the run's, 0.5 unless train --threshold)",
    )
    parser.set_defaults(run=run)


def write_masks(
    exported: Exported, predictions: list[MaskPrediction], out: str | Path | None = None
) -> list[dict[str, object]]:
    """Write ``NAME.mask.png`` and ``NAME.overlay.png`` for each prediction (into ``out``, else beside the
    image); returns each prediction's JSON fields with the two paths."""
    from torchgraft.data.images import load_rgb
    from torchgraft.data.masks import class_colours, overlay, write_mask

    colours = class_colours(len(exported.classes), exported.config.get("colours"))
    records = []
    for prediction in predictions:
        image = Path(prediction.path)
        folder = Path(out) if out is not None else image.parent
        folder.mkdir(parents=True, exist_ok=True)
        mask = write_mask(folder / f"{image.stem}.mask.png", prediction.labels, colours)
        shown = folder / f"{image.stem}.overlay.png"
        overlay(load_rgb(image), prediction.labels, colours).save(shown)
        records.append({**prediction.as_dict(), "mask": str(mask), "overlay": str(shown)})
    return records


def _run_masks(exported: Exported, args: argparse.Namespace) -> int:
    from torchgraft.cli.progress import count_progress
    from torchgraft.ship.predict import predict_masks

    with count_progress("predict", unit="images", quiet=args.json or args.quiet) as on_batch:
        predictions = predict_masks(exported, args.inputs, x_col=args.x_col, on_batch=on_batch)
    records = write_masks(exported, predictions, args.out)
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    width = min(60, max(len(p.path) for p in predictions))
    for prediction, record in zip(predictions, records, strict=True):
        print(f"{prediction.path:<{width}}  -> {Path(str(record['mask'])).name}  {prediction.line()}")
    return 0


def _run_boxes(exported: Exported, args: argparse.Namespace) -> int:
    from torchgraft.cli.progress import count_progress
    from torchgraft.ship.detections import draw_predictions, predict_boxes

    with count_progress("predict", unit="images", quiet=args.json or args.quiet) as on_batch:
        predictions = predict_boxes(
            exported, args.inputs, score_threshold=args.score_threshold, x_col=args.x_col, on_batch=on_batch
        )
    drawn = draw_predictions(predictions, args.out)
    if args.json:
        print(json.dumps([{**p.as_dict(), "drawn": str(d)} for p, d in zip(predictions, drawn, strict=True)], indent=1))
        return 0
    width = min(60, max(len(p.path) for p in predictions))
    for prediction, path in zip(predictions, drawn, strict=True):
        print(f"{prediction.path:<{width}}  -> {path.name}  {prediction.line()}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Execute ``predict``."""
    from torchgraft.cli.progress import count_progress
    from torchgraft.data.tokens import TextPreprocessing
    from torchgraft.ship.export import load_exported
    from torchgraft.ship.predict import predict_images, predict_texts

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}.")
    exported = load_exported(args.run_dir, device=args.device)
    if args.score_threshold is not None and exported.task.targets != "detect":
        raise ValueError(f"--score-threshold applies to detectors; {args.run_dir} holds a {exported.task.name} model.")
    if exported.task.dense:
        return _run_masks(exported, args)
    if exported.task.targets == "detect":  # boxes: the task's layout of targets, as the run's recipe read them
        return _run_boxes(exported, args)
    predictions: list[Prediction]
    texts = isinstance(exported.preprocessing, TextPreprocessing)
    with count_progress("predict", unit="texts" if texts else "images", quiet=args.json or args.quiet) as on_batch:
        if texts:
            predictions = predict_texts(exported, args.inputs, top_k=args.top_k, x_col=args.x_col, on_batch=on_batch)
        else:
            predictions = predict_images(exported, args.inputs, top_k=args.top_k, x_col=args.x_col, on_batch=on_batch)
    if args.json:
        print(json.dumps([p.as_dict() for p in predictions], indent=1))
        return 0
    width = min(60, max(len(p.path) for p in predictions))
    for prediction in predictions:
        print(f"{prediction.path:<{width}}  {prediction.line()}")
    return 0
