"""``torchgraft train DATA``: fine-tune a pretrained network on a folder (or CSV) of images — single-label,
multi-label or regression — into a RUN_DIR."""

from __future__ import annotations

import argparse
import json
from typing import Any

from torchgraft.app.run import TrainSettings, train_run

__all__ = ["add_data_and_model_arguments", "add_parser", "run", "settings_from"]

_DEFAULTS = TrainSettings()


def add_data_and_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``train`` and ``lr-find``: the data, the network, its weights and the input."""
    parser.add_argument(
        "data", metavar="DATA", help="image folder (train/ + valid/, or class folders), or a CSV / JSON-lines file"
    )
    parser.add_argument(
        "--task",
        choices=("classify", "multilabel", "regression"),
        default=None,
        help="default: inferred from the data (several labels in a cell: multilabel; numbers: regression)",
    )
    parser.add_argument("--x-col", default=None, help="CSV column of the image paths (default: path/image/file)")
    parser.add_argument("--y-col", default=None, help="CSV column(s) of the targets, comma-separated (default: label)")
    parser.add_argument(
        "--y-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help="bound regression outputs"
    )
    parser.add_argument("--threshold", type=float, default=None, help="multi-label threshold (default: best F1)")
    parser.add_argument(
        "--model", default=_DEFAULTS.model, help=f"torchvision builder or timm/NAME (default: {_DEFAULTS.model})"
    )
    parser.add_argument(
        "--weights",
        default=_DEFAULTS.weights,
        help="imagenet (default: an offline package if installed, else the library's download), a checkpoint "
        "file, or none",
    )
    parser.add_argument("--size", type=int, default=None, help="input size (default: from the weights' metadata)")
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="default: %(default)s")
    parser.add_argument("--valid-pct", type=float, default=_DEFAULTS.valid_pct, help="when DATA has no valid/")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="split, shuffling and initialisation")
    parser.add_argument("--skip-bad", action="store_true", help="leave unreadable images out (default: error)")
    parser.add_argument(
        "--augment",
        choices=("standard", "flip", "none"),
        default=_DEFAULTS.augment,
        help="standard: random resized crop + flip (default); flip: centre crop + flip; none",
    )
    parser.add_argument("--head", choices=("linear", "mlp"), default=_DEFAULTS.head, help="default: linear")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="mixed precision (fp16: CUDA only)")
    parser.add_argument("--workers", type=int, default=None, help="data loading processes (default: CPU count)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    parser.add_argument("--quiet", action="store_true", help="print only errors")


def settings_from(args: argparse.Namespace, **extra: Any) -> TrainSettings:
    """The :class:`TrainSettings` of parsed arguments."""
    return TrainSettings(
        model=args.model,
        weights=args.weights,
        size=args.size,
        batch_size=args.batch_size,
        head=args.head,
        augment=args.augment,
        valid_pct=args.valid_pct,
        seed=args.seed,
        skip_bad=args.skip_bad,
        amp=args.amp,
        workers=args.workers,
        device=args.device,
        task=args.task,
        x_col=args.x_col,
        y_col=args.y_col,
        y_range=tuple(args.y_range) if args.y_range else None,
        threshold=args.threshold,
        **extra,
    )


def add_parser(commands: Any) -> None:
    """Register the ``train`` subcommand."""
    parser = commands.add_parser(
        "train",
        help="fine-tune a pretrained network on a folder of images",
        description="Fine-tune --model on DATA: the head alone for --freeze-epochs, then the whole network for "
        "--epochs, on a one-cycle schedule. Writes RUN_DIR: the exported model (model.safetensors + model.json), "
        "history.csv/json, plan.txt, plots and resumable checkpoints.",
    )
    add_data_and_model_arguments(parser)
    parser.add_argument("--out", default="runs/latest", metavar="RUN_DIR", help="default: runs/latest")
    parser.add_argument("--epochs", type=int, default=_DEFAULTS.epochs, help="unfrozen epochs (default: 2)")
    parser.add_argument("--freeze-epochs", type=int, default=_DEFAULTS.freeze_epochs, help="head-only epochs")
    parser.add_argument("--lr", type=float, default=_DEFAULTS.lr, help="base learning rate (default: 3e-3)")
    parser.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last epoch")
    parser.add_argument("--json", action="store_true", help="print only a JSON summary at the end (implies --quiet)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``train``."""
    settings = settings_from(args, epochs=args.epochs, freeze_epochs=args.freeze_epochs, lr=args.lr, resume=args.resume)
    quiet = args.quiet or args.json
    say = (lambda _: None) if quiet else print
    result = train_run(args.data, args.out, settings, say=say, quiet=quiet)
    if args.json:
        summary = {
            "run_dir": str(result.run_dir),
            "classes": result.classes,
            "task": result.learner.task.name,
            "final": result.final,
            "history": result.history,
            "files": [str(p) for p in result.files],
        }
        print(json.dumps(summary, indent=1))
    say(f"wrote {result.run_dir}: {', '.join(p.name for p in result.files)}")
    return 0
