"""``torchgraft export RUN_DIR --format onnx|pt2``: the run's model as one file that runs without torchgraft
(ONNX Runtime, or ``torch.export``), with its metadata beside it (``preprocessing.json`` for ONNX,
``preprocessing.pt2.json`` for pt2: each format its own), checked against the trained model."""

from __future__ import annotations

import argparse
import json
from typing import Any

from torchgraft.choices import DEPLOY_FORMATS

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Register the ``export`` subcommand."""
    parser = commands.add_parser(
        "export",
        help="write an ONNX file or torch.export program of a trained run, checked against the model",
        description="Write RUN_DIR/model.onnx and preprocessing.json (or model.pt2 and preprocessing.pt2.json; "
        "each format has its own, and exporting one leaves the other's files as they are): the network with its "
        "final softmax/sigmoid, a dynamic batch axis (and sequence axis for texts), and what to do to inputs. "
        "The file's outputs are compared with the PyTorch model's on the run's validation examples (or --check "
        "inputs) and must agree within 1e-4.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by torchgraft train (or demo)")
    parser.add_argument("--format", choices=DEPLOY_FORMATS, default="onnx", help="onnx (default) or pt2")
    parser.add_argument("--static", action="store_true", help="fixed input shapes (no dynamic batch axis)")
    parser.add_argument(
        "--dynamic-size", action="store_true", help="images: dynamic height and width too (not for ViTs)"
    )
    parser.add_argument(
        "--check", nargs="+", metavar="INPUT", default=None, help="images (or texts) to compare outputs on"
    )
    parser.add_argument("--out", default=None, help="where to write the model file (default: in RUN_DIR)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.add_argument("--quiet", action="store_true", help="no progress lines (--json implies it)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``export``."""
    from torchgraft.cli.progress import count_progress
    from torchgraft.ship.deploy import deploy

    if args.static and args.dynamic_size:
        raise ValueError("--static and --dynamic-size contradict each other; choose one.")
    with count_progress("export", unit="inputs checked", quiet=args.json or args.quiet) as on_check:
        report = deploy(
            args.run_dir,
            format=args.format,
            dynamic=not args.static,
            dynamic_size=args.dynamic_size,
            check=args.check,
            out=args.out,
            on_check=on_check,
        )
    if args.json:
        fields = {
            "path": str(report.path),
            "preprocessing": str(report.preprocessing),
            "format": report.format,
            "max_difference": report.max_difference,
            "checked": report.checked,
            "seconds": round(report.seconds, 2),
        }
        print(json.dumps(fields, indent=1))
    else:
        print(report.line())
    return 0
