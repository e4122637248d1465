"""``torchgraft lr-find DATA``: sweep the learning rate on the grafted network and plot the loss curve."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torchgraft.cli.pickles import warn_if_trusted
from torchgraft.cli.progress import sweep_progress
from torchgraft.cli.train import add_data_and_model_arguments, check_model_first, settings_from

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Register the ``lr-find`` subcommand."""
    parser = commands.add_parser(
        "lr-find",
        help="suggest a learning rate and plot the loss against it",
        description="Graft --model like `torchgraft train` would, then raise the learning rate exponentially "
        "over --steps batches (body frozen with --frozen, as in the first stage of fine-tuning). Prints the "
        "suggestion and writes OUT/lr_find.png; the weights are not changed or saved.",
    )
    add_data_and_model_arguments(parser)
    parser.add_argument("--out", default="runs/lr-find", metavar="DIR", help="where the plot goes")
    parser.add_argument("--steps", type=int, default=100, help="batches in the sweep (default: 100)")
    parser.add_argument("--start", type=float, default=1e-7, help="first rate (default: 1e-7)")
    parser.add_argument("--end", type=float, default=10.0, help="last rate (default: 10)")
    parser.add_argument("--frozen", action="store_true", help="sweep with the body frozen (the head alone)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``lr-find``."""
    if args.steps < 2 or not 0 < args.start < args.end:
        raise ValueError(f"need --steps >= 2 and 0 < --start < --end (got {args.steps}, {args.start}, {args.end}).")
    warn_if_trusted(args)
    settings = settings_from(args)
    check_model_first(settings)
    from torchgraft.app.prepare import prepare_run
    from torchgraft.app.unreadable import UnreadableFiles, listed
    from torchgraft.train.distributed import is_main
    from torchgraft.tune.freeze import freeze

    say = (lambda _: None) if args.quiet or not is_main() else print
    prepared = prepare_run(args.data, Path(args.out), settings, say=say, quiet=args.quiet)
    if args.frozen:
        freeze(prepared.model)
    with sweep_progress(args.steps, quiet=args.quiet or not is_main()) as on_step:
        result = prepared.learner.lr_find(start=args.start, end=args.end, steps=args.steps, on_step=on_step)
    watch = UnreadableFiles.watching(prepared.learner, max_bad=None, say=say)
    replaced = watch.collect() if watch is not None else []  # every rank gathers
    if replaced:
        say(f"{len(replaced)} unreadable files were replaced by other samples in the sweep: {listed(replaced)}")
    if not is_main():  # under torchrun each rank sweeps on its own shard; rank 0 reports
        return 0
    print(f"suggested learning rate: {result.suggestion:.2g}")
    path = result.plot(Path(args.out) / "lr_find.png")
    say(f"wrote {path}")
    return 0
