"""``torchgraft demo``: fine-tune ImageNet EfficientNet-Lite0 on packaged Fashion-MNIST images, offline."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

from torchgraft.train.table import epoch_table  # the table the Learner prints while training, for --quiet

__all__ = ["add_parser", "epoch_table", "run"]


def add_parser(commands: Any) -> None:
    """Register the ``demo`` subcommand."""
    parser = commands.add_parser(
        "demo",
        help="fine-tune Lite0 on built-in Fashion-MNIST images (offline, under a minute on 2 CPU cores)",
        description="Write 2,000 train / 500 valid Fashion-MNIST PNGs (shipped with torchgraft) under RUN_DIR, "
        "fine-tune the ImageNet EfficientNet-Lite0 weights (torchgraft[demo]) on them, export the model and "
        "predict 10 held-out images from the exported files.",
    )
    parser.add_argument("--out", default="runs/demo", metavar="RUN_DIR", help="default: runs/demo")
    parser.add_argument("--epochs", type=int, default=None, help="unfrozen epochs (default: 3)")
    parser.add_argument("--quiet", action="store_true", help="print only the result")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``demo``."""
    if args.epochs is not None and args.epochs < 1:  # before the run's imports (5 s): refused at once
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}.")
    import torch

    from torchgraft.app.runrecord import RunClock, process_seconds
    from torchgraft.demo import DEMO_SETTINGS, run_demo
    from torchgraft.train.distributed import is_main

    torch.set_flush_denormal(True)  # denormals make CPU convolutions several times slower
    settings = DEMO_SETTINGS if args.epochs is None else replace(DEMO_SETTINGS, epochs=args.epochs)
    start = time.perf_counter()
    clock = RunClock(startup=process_seconds())  # this process is the run: its start-up counts
    result = run_demo(args.out, settings=settings, quiet=args.quiet, clock=clock)
    if not is_main():  # under torchrun rank 0 reports
        return 0
    if args.quiet:  # otherwise the Learner has printed each epoch as it ended
        print(epoch_table(result.run.history))
    print(f"\nheld-out images, predicted from the exported model in {args.out}:")
    for prediction, truth in zip(result.predictions, result.truth, strict=True):
        name, probability = prediction.top[0]
        mark = "ok" if name == truth else f"wrong (true: {truth})"
        print(f"  {prediction.path}  {name} {probability:.2f}  {mark}")
    accuracy = result.run.final.get("accuracy", float("nan"))  # the exported (best) epoch's
    seconds = time.perf_counter() - start
    print(f"\nvalid accuracy {accuracy:.3f} in {seconds:.0f} s; next: torchgraft predict {args.out} IMAGE")
    return 0
