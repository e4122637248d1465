"""``torchgraft predict RUN_DIR INPUT...``: what an exported model says about images or texts (top-k classes,
the labels above the threshold, or regression values), from the exported files alone.

Inputs: image files or folders of images (image models); texts given on the command line, ``.txt`` files
or folders of them (text models); or, for either, a CSV / JSON-lines file whose input column (``path`` /
``text``, or ``--x-col``) holds the image paths or the texts.

A segmentation model writes, for each image ``x.jpg``, ``x.mask.png`` (an index PNG: pixel values are the
classes, at the image's size) and ``x.overlay.png`` (the mask's colours over the image) beside it or into
``--out``, and prints the share of the image each class covers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchgraft.data.tables import X_NAMES, Table, TableError, read_table

if TYPE_CHECKING:  # the parser builds without torch; the functions below import what they run
    from torchgraft.ship.export import Exported
    from torchgraft.ship.predict import MaskPrediction, Prediction

__all__ = ["add_parser", "expand_images", "expand_texts", "run", "write_masks"]

_TABLES = (".csv", ".jsonl", ".ndjson")
_WRITTEN = (".mask.png", ".overlay.png")  # what predict writes for a segmentation model: never read back as input


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
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="segmentation: write the masks and overlays here (default: beside each image)",
    )
    parser.set_defaults(run=run)


def _input_column(table: Table, x_col: str | None) -> int:
    """The input column of a table of inputs (no target column needed): ``x_col``, else the column named like
    path/image/text, else the first."""
    lowered = [h.lower() for h in table.header] if table.header else []
    if x_col:
        if x_col.lower() not in lowered:
            columns = ", ".join(table.header or []) or "none: the file has no header row"
            raise TableError(f"{table.path}: no column {x_col!r} (--x-col); the columns are {columns}.")
        return lowered.index(x_col.lower())
    return next((lowered.index(n) for n in X_NAMES if n in lowered), 0)


def _table_inputs(path: Path, x_col: str | None) -> list[tuple[str, str]]:
    """``(file:LINE, cell)`` of a table's input column (empty cells left out)."""
    table = read_table(path)
    x = _input_column(table, x_col)
    return [(f"{path}:{line}", cells[x]) for line, cells in table.rows if len(cells) > x and cells[x].strip()]


def expand_images(items: list[str], *, x_col: str | None = None) -> list[Path]:
    """Files as given; folders replaced by the image files inside them (sorted); a CSV / JSON-lines file by
    the paths in its input column (relative to its folder)."""
    from torchgraft.data.images import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += sorted(p for p in found if not p.name.lower().endswith(_WRITTEN))
        elif path.is_file() and path.suffix.lower() in _TABLES:
            paths += [path.parent / cell.strip() for _, cell in _table_inputs(path, x_col)]
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"{item}: no such image file or folder.")
    if not paths:
        raise FileNotFoundError(f"no image files in {', '.join(items)}.")
    return paths


def expand_texts(items: list[str], *, x_col: str | None = None) -> tuple[list[str], list[str]]:
    """``(sources, texts)``: a ``.txt`` file is read (a folder: every ``.txt`` inside), a CSV / JSON-lines
    file gives the texts of its input column (sources ``file:LINE``), anything else is a text itself."""
    from torchgraft.ship.predict import shorten_text

    sources: list[str | None] = []
    texts: list[str] = []
    for item in items:
        path = Path(item)
        files = sorted(path.rglob("*.txt")) if path.is_dir() else [path] if path.suffix == ".txt" else []
        if path.is_dir() and not files:
            raise FileNotFoundError(f"{item}: a folder with no .txt files.")
        if files and all(f.is_file() for f in files):
            for file in files:
                sources.append(str(file))
                texts.append(file.read_text(encoding="utf-8", errors="replace"))
        elif path.suffix.lower() in _TABLES and path.is_file():
            for source, text in _table_inputs(path, x_col):
                sources.append(source)
                texts.append(text)
        elif files:
            raise FileNotFoundError(f"{item}: no such text file.")
        else:
            sources.append(None)
            texts.append(item)
    return [s if s is not None else shorten_text(t) for s, t in zip(sources, texts, strict=True)], texts


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
    from torchgraft.ship.predict import predict_masks

    predictions = predict_masks(exported, expand_images(args.inputs, x_col=args.x_col))
    records = write_masks(exported, predictions, args.out)
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    width = min(60, max(len(p.path) for p in predictions))
    for prediction, record in zip(predictions, records, strict=True):
        print(f"{prediction.path:<{width}}  -> {Path(str(record['mask'])).name}  {prediction.line()}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Execute ``predict``."""
    from torchgraft.data.tokens import TextPreprocessing
    from torchgraft.ship.export import load_exported
    from torchgraft.ship.predict import predict_images, predict_texts

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}.")
    exported = load_exported(args.run_dir, device=args.device)
    if exported.task.dense:
        return _run_masks(exported, args)
    predictions: list[Prediction]
    if isinstance(exported.preprocessing, TextPreprocessing):
        sources, texts = expand_texts(args.inputs, x_col=args.x_col)
        predictions = predict_texts(exported, texts, sources=sources, top_k=args.top_k)
    else:
        predictions = predict_images(exported, expand_images(args.inputs, x_col=args.x_col), top_k=args.top_k)
    if args.json:
        print(json.dumps([p.as_dict() for p in predictions], indent=1))
        return 0
    width = min(60, max(len(p.path) for p in predictions))
    for prediction in predictions:
        print(f"{prediction.path:<{width}}  {prediction.line()}")
    return 0
