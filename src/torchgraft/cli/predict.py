"""``torchgraft predict RUN_DIR IMAGES...``: what an exported model says about images (top-k classes, the
labels above the threshold, or regression values), from the exported model files alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from torchgraft.app.export import load_exported
from torchgraft.app.predict import predict_images
from torchgraft.data.images import IMAGE_SUFFIXES

__all__ = ["add_parser", "expand_images", "run"]


def add_parser(commands: Any) -> None:
    """Register the ``predict`` subcommand."""
    parser = commands.add_parser(
        "predict",
        help="predict images with an exported model",
        description="Load the exported model of RUN_DIR (model.safetensors + model.json; nothing else) and print "
        "for each image the top-k classes with their probabilities (multi-label: every label above the stored "
        "threshold; regression: the values).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by torchgraft train (or demo)")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files, or folders of images")
    parser.add_argument("--top-k", type=int, default=3, help="classes per image (default: 3)")
    parser.add_argument("--json", action="store_true", help="JSON: path, top classes, probabilities, logits")
    parser.add_argument("--device", default="cpu", help="default: cpu")
    parser.set_defaults(run=run)


def expand_images(items: list[str]) -> list[Path]:
    """Files as given; folders replaced by the image files inside them (sorted)."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"{item}: no such image file or folder.")
    if not paths:
        raise FileNotFoundError(f"no image files in {', '.join(items)}.")
    return paths


def run(args: argparse.Namespace) -> int:
    """Execute ``predict``."""
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}.")
    paths = expand_images(args.images)
    exported = load_exported(args.run_dir, device=args.device)
    predictions = predict_images(exported, paths, top_k=args.top_k)
    if args.json:
        print(json.dumps([p.as_dict() for p in predictions], indent=1))
        return 0
    width = max(len(p.path) for p in predictions)
    for prediction in predictions:
        print(f"{prediction.path:<{width}}  {prediction.line()}")
    return 0
