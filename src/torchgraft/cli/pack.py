"""``torchgraft pack DATA OUT``: an image folder or CSV / JSON-lines table (any label kind), or a table or
folder of texts, packed into WebDataset shards, each image checked as it is copied
(:func:`torchgraft.data.packing.pack`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Register the ``pack`` subcommand."""
    parser = commands.add_parser(
        "pack",
        help="pack an image folder or CSV (or texts) into WebDataset shards, checking every image",
        description="Write OUT/train-000000.tar ... and OUT/valid-000000.tar ... (the split torchgraft train makes "
        "of DATA) and OUT/torchgraft-shards.json (classes, task, samples per shard). Each image is decoded once "
        "as it is copied; unreadable ones are left out and listed. A CSV or folder of texts is packed as txt "
        "members. Train on the shards with "
        "'torchgraft train OUT'.",
    )
    parser.add_argument(
        "data",
        metavar="DATA",
        help="an image folder (class folders, or train/ + valid/), a CSV of images or of texts, or a folder of texts",
    )
    parser.add_argument("out", metavar="OUT", help="the folder to write the shards into (empty or new)")
    parser.add_argument("--shard-size", type=int, default=10000, help="samples per shard (default: 10000)")
    parser.add_argument(
        "--task", choices=("classify", "multilabel", "regression"), default=None, help="default: inferred"
    )
    parser.add_argument("--x-col", default=None, help="CSV column of the image paths (or of the texts)")
    parser.add_argument("--y-col", default=None, help="CSV column(s) of the targets, comma-separated")
    parser.add_argument("--valid-pct", type=float, default=0.2, help="when DATA has no valid/ (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="the split and the training samples' order")
    parser.add_argument("--skip-bad", action="store_true", help="leave bad CSV rows out (default: error)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count + 2, max 8)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.add_argument("--quiet", action="store_true", help="no progress lines (--json implies it)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``pack``."""
    from torchgraft.cli.progress import count_progress
    from torchgraft.data.packing import pack

    with count_progress("pack", unit="images checked", quiet=args.json or args.quiet) as on_count:
        report = pack(
            args.data,
            args.out,
            shard_size=args.shard_size,
            task=args.task,
            x_col=args.x_col,
            y_col=args.y_col,
            valid_pct=args.valid_pct,
            seed=args.seed,
            skip_bad_rows=args.skip_bad,
            workers=args.workers,
            on_count=on_count,
        )
    if args.json:
        fields = {
            "out": str(report.out),
            "task": report.task,
            "classes": report.classes,
            "counts": report.counts,
            "shards": [str(p) for p in report.shards],
            "skipped": [{"path": b.path, "reason": b.reason} for b in report.skipped],
            "bad_rows": report.bad_rows,
        }
        print(json.dumps(fields, indent=1))
        return 0
    print(report.summary())
    for bad in report.skipped:
        print(f"  left out {bad}")
    for row in report.bad_rows:
        print(f"  skipped {row}")
    return 0
