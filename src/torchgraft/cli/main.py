"""Entry point of the ``torchgraft`` command: parses arguments and dispatches to a subcommand module.

User errors (bad arguments, missing files, unknown models, bad data, a device this machine lacks) print one
line and exit with code 2; no traceback; messages name options as the command's flags
(:mod:`torchgraft.spelling`). Other libraries' progress bars, warnings and retry logs are quiet unless
``--verbose``. A diverged training run (NaN/inf loss) exits with 3, Ctrl-C with 130; both name the checkpoint
to resume from (printed by the Learner).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from torchgraft import __version__
from torchgraft.cli import demo, export, lr_find, pack, predict, report, train
from torchgraft.cli import inspect as inspect_command
from torchgraft.cli.quiet import libraries_quiet
from torchgraft.spelling import command_line
from torchgraft.train.launch import launched

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line naming the fix, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}. See '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = _Parser(prog="torchgraft", description="Fine-tune pretrained PyTorch networks.")
    parser.add_argument("--version", action="version", version=f"torchgraft {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (demo, train, pack, predict, export, lr_find, inspect_command, report):
        command.add_parser(commands)
    for sub in commands.choices.values():
        sub.add_argument(
            "--verbose",
            action="store_true",
            help="also show other libraries' progress bars, warnings and retry logs (Hugging Face, timm)",
        )
    return parser


def _say_error(message: str) -> None:
    """Print a user error once: under torchrun every rank meets the same one, rank 0 tells it."""
    if not launched():  # one process: no need to import torch to know it is rank 0
        print(message, file=sys.stderr)
        return
    from torchgraft.train.distributed import is_main

    if is_main():
        print(message, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code. Under ``torchrun`` every process runs it: the process group
    is joined first (each rank on its own device), data is checked once, only rank 0 prints and writes."""
    args = build_parser().parse_args(argv)
    finished = False  # whether the command returned: after an error the other ranks are not waited for
    try:
        with command_line(), libraries_quiet(not args.verbose):
            if launched():  # torch is imported here only under torchrun: a command checks its inputs first
                from torchgraft.train.distributed import local_device, setup

                setup(local_device(getattr(args, "device", None)))
            code = args.run(args)
            sys.stdout.flush()  # a reader that left (`| head`) is met here, not at the interpreter's exit
        finished = True
        return code
    except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError) as error:
        _say_error(f"torchgraft {args.command}: error: {error}")
        return 2
    except FloatingPointError as error:  # TrainingDivergedError: the message names the step and the checkpoint
        _say_error(f"torchgraft {args.command}: training diverged: {error}")
        return 3
    except KeyboardInterrupt:
        _say_error(f"torchgraft {args.command}: interrupted")
        return 130
    except BrokenPipeError:  # `torchgraft ... | head`: the reader left; no traceback, nothing more to print
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if launched():
            from torchgraft.train.distributed import cleanup

            cleanup(wait=finished)


if __name__ == "__main__":
    sys.exit(main())
