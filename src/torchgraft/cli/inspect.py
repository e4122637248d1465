"""``torchgraft inspect ARCH_OR_FILE``: show how a network would be grafted, or what a checkpoint holds."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchgraft.choices import DECODERS, DETECTOR_HEADS
from torchgraft.cli.pickles import add_trust_pickle, warn_if_trusted

if TYPE_CHECKING:  # the parser builds without torch; run() imports what it uses
    from torch import nn

    from torchgraft.tune.optim import LRSpec

__all__ = ["add_parser", "run", "summarize_checkpoint"]

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def add_parser(commands: Any) -> None:
    """Register the ``inspect`` subcommand."""
    parser = commands.add_parser(
        "inspect",
        help="show the graft of a model, or the tensors of a checkpoint",
        description="Graft ARCH (a torchvision builder, timm/NAME, or a text encoder hf/FOLDER or hf/NAME, as "
        "train --model takes them) without its weights — nothing is downloaded — and print what was cut, the "
        "body's output and the head (--task segment: a dense graft; --task detect: the detector train builds); "
        "show the exported model of a RUN_DIR; or list the tensors of a checkpoint "
        "FILE (read with weights_only=True).",
    )
    parser.add_argument(
        "target", metavar="ARCH_OR_FILE", help="e.g. resnet50, timm/convnext_tiny, hf/FOLDER, runs/pets, model.pth"
    )
    parser.add_argument("--n-out", type=int, default=10, help="outputs of the new head (default: 10)")
    parser.add_argument("--head", choices=("linear", "mlp"), default="linear", help="head type (default: linear)")
    parser.add_argument(
        "--pool",
        choices=("model", "avg", "max", "concat", "token"),
        default=None,
        help="keep the network's pooling (model, default) or cut before it",
    )
    parser.add_argument("--cut", default=None, help="module name (or int index) where the body ends")
    parser.add_argument("--in-chans", type=int, default=None, help="adapt the first convolution")
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None)
    parser.add_argument(
        "--groups",
        default=None,
        metavar="N",
        help="layer groups including the head: an int >= 2 or 'blocks' (default: the family rule, else 3)",
    )
    parser.add_argument(
        "--lr",
        type=parse_lr,
        default=None,
        help="learning rates to show per group: 1e-3, LO:HI (geometric, e.g. 1e-5:1e-3) or a comma list",
    )
    parser.add_argument(
        "--task",
        choices=("classify", "segment", "detect"),
        default="classify",
        help="segment: a dense graft (the taps found, the decoder, the groups); --n-out is then classes per pixel. "
        "detect: the detector train --task detect builds (taps, FPN, head, BatchNorm, image sizes, groups); "
        "--n-out is then the number of object classes",
    )
    parser.add_argument("--decoder", choices=DECODERS, default="unet", help="with --task segment (default: unet)")
    parser.add_argument(
        "--detector",
        choices=DETECTOR_HEADS,
        default=None,
        help="with --task detect: the detector grafted on a backbone (default: fcos); a torchvision detector "
        "(fasterrcnn_mobilenet_v3_large_320_fpn, ...) is re-headed instead",
    )
    add_trust_pickle(parser, "a checkpoint FILE")
    parser.add_argument("--json", action="store_true", help="print the graft record as JSON")
    parser.set_defaults(run=run)


def parse_lr(text: str) -> LRSpec:
    """``"1e-3"`` -> 0.001, ``"1e-5:1e-3"`` -> ``slice(1e-5, 1e-3)``, ``"1e-5,1e-4,1e-3"`` -> a list."""
    try:
        if ":" in text:
            low, high = text.split(":", 1)
            return slice(float(low) if low else None, float(high))
        if "," in text:
            return [float(v) for v in text.split(",")]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid learning rate {text!r}: write 1e-3, a range 1e-5:1e-3, or a list 1e-5,1e-4,1e-3"
        ) from None


def _groups_arg(text: str | None) -> int | str | None:
    if text is None or text == "blocks":
        return text
    if text.isdigit() and int(text) >= 2:
        return int(text)
    raise ValueError(f"--groups {text}: give an int >= 2 (body groups + head) or 'blocks'.")


def summarize_checkpoint(path: Path, *, trust_pickle: bool = False) -> str:
    """Tensor counts per top-level prefix of a checkpoint, read safely (see :func:`torchgraft.read_checkpoint`;
    ``trust_pickle``: also a pickle that needs code from the file)."""
    from torchgraft.weights.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(path, trust_pickle=trust_pickle)
    tensors = checkpoint.tensors
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, tensor in tensors.items():
        prefix = name.split(".")[0]
        groups[prefix][0] += 1
        groups[prefix][1] += tensor.numel()
    lines = [f"{checkpoint.description}, {sum(g[1] for g in groups.values()):,} values"]
    lines += [f"  {prefix:<30} {count:>5} tensors {values:>14,} values" for prefix, (count, values) in groups.items()]
    last = [n for n, t in tensors.items() if t.ndim == 2]
    if last:
        lines.append(f"  last 2-D weight (likely classifier): {last[-1]} {tuple(tensors[last[-1]].shape)}")
    return "\n".join(lines)


def _source(target: str) -> nn.Module:
    """The network ``target`` names, as ``train --model`` takes it, built without weights: a torchvision
    builder, ``timm/NAME``, or a text encoder ``hf/FOLDER`` / ``hf/NAME`` (from its config: an offline
    package's or the cache's; nothing is downloaded)."""
    from torchgraft.weights.hf import HFModelError, hf_config_model, hf_location
    from torchgraft.weights.zoo import build_model

    if not target.startswith(("hf/", "hf:")):
        return build_model(target)
    location = hf_location(target)
    try:
        return hf_config_model(location)
    except (OSError, ValueError) as error:
        raise HFModelError(
            f"{target}: no config.json found at {location!r} locally ({type(error).__name__}); inspect reads a "
            f"folder saved with save_pretrained, an offline package or the Hugging Face cache, and downloads nothing."
        ) from None


def _run_dir(target: Path, args: argparse.Namespace) -> int:
    """``inspect RUN_DIR``: the exported model of a run, rebuilt from its files, and its graft."""
    from torchgraft.cli.inspect_detect import detection_lines, detection_record
    from torchgraft.grafting.redetect import is_detector
    from torchgraft.ship.export import load_exported
    from torchgraft.tune.describe import describe

    exported = load_exported(target)
    config = exported.config
    detector = is_detector(exported.model)
    what = f"{target}: {config['architecture']} trained for {exported.task.name}, {len(exported.classes)} outputs"
    if detector:
        what = f"{target}: {config['architecture']} trained for {exported.task.name}, {len(exported.classes)} classes"
    if args.json:
        record = {"run_dir": str(target), "architecture": config["architecture"], "task": exported.task.name}
        record = {**record, "classes": exported.classes, "graft": config.get("graft")}
        if detector:
            record["detection"] = detection_record(exported.model)
        print(json.dumps(record, indent=2, default=str))
        return 0
    print(f"{what} ({', '.join(exported.classes[:10])}{' ...' if len(exported.classes) > 10 else ''})")
    print(describe(exported.model, lr=args.lr))
    if detector:
        print("\n".join(detection_lines(detection_record(exported.model))))
    return 0


def _grafted(args: argparse.Namespace) -> Any:
    """The graft ``inspect`` shows: a classification head, a dense graft for ``--task segment``, or for
    ``--task detect`` the detector ``train`` builds (:func:`.inspect_detect.build_inspected_detector`)."""
    from torchgraft.cli.inspect_detect import build_inspected_detector
    from torchgraft.grafting.dense import graft_dense
    from torchgraft.grafting.surgery import graft
    from torchgraft.weights.zoo import torchvision_detectors

    if args.task == "detect":
        return build_inspected_detector(args)
    if args.target in torchvision_detectors():
        raise ValueError(
            f"{args.target} is a torchvision detector; add --task detect to see it re-headed for --n-out classes."
        )
    if args.task == "segment":
        options = (("--cut", args.cut), ("--pool", args.pool), ("--in-chans", args.in_chans))
        given = [flag for flag, value in options if value is not None] + (["--head"] if args.head != "linear" else [])
        if given:
            raise ValueError(f"--task segment builds a decoder on the taps it finds; {', '.join(given)} do not apply.")
        return graft_dense(_source(args.target), args.n_out, decoder=args.decoder, input_size=args.input_size)
    cut: Any = int(args.cut) if args.cut is not None and args.cut.lstrip("-").isdigit() else args.cut
    text = args.target.startswith(("hf/", "hf:"))
    return graft(
        _source(args.target),
        args.n_out,
        cut=cut,
        head=args.head,
        pool=args.pool if args.pool is not None or not text else "mean",  # as train grafts a text encoder
        in_chans=args.in_chans,
        input_size=args.input_size,
    )


def run(args: argparse.Namespace) -> int:
    """Execute ``inspect``."""
    from torchgraft.cli.inspect_detect import check_detector_option, detection_lines, detection_record
    from torchgraft.grafting.dense import Segmenter
    from torchgraft.grafting.redetect import is_detector
    from torchgraft.ship.export import CONFIG_FILE
    from torchgraft.tune.describe import describe
    from torchgraft.tune.groups import layer_groups
    from torchgraft.tune.optim import group_lrs

    check_detector_option(args)
    target = Path(args.target)
    if target.suffix in _CHECKPOINT_SUFFIXES:
        if not target.is_file():
            raise FileNotFoundError(f"no such checkpoint file: {target}")
        warn_if_trusted(args)
        print(summarize_checkpoint(target, trust_pickle=args.trust_pickle))
        return 0
    if target.is_dir() and (target / CONFIG_FILE).is_file():
        return _run_dir(target, args)
    n_groups = _groups_arg(args.groups)
    model = _grafted(args)
    groups = layer_groups(model, n=n_groups)
    lrs = group_lrs(args.lr, len(groups), names=[g.name for g in groups]) if args.lr is not None else None
    if args.json:
        info = model.info
        record = {
            k: getattr(info, k)
            for k in (
                "source",
                "method",
                "cut_at",
                "classifier",
                "removed",
                "removed_params",
                "input_size",
                "body_output",
                "layout",
                "pool",
            )
        }
        kept = set(info.pretrained)  # by name: a detector is torchvision's class, without Grafted's methods
        record["pretrained_parameters"] = sum(p.numel() for n, p in model.named_parameters() if n in kept)
        record["new_parameters"] = sum(p.numel() for n, p in model.named_parameters() if n not in kept)
        record["groups"] = [
            {"name": g.name, "modules": g.modules, "parameters": g.n_params, "lr": lrs[i] if lrs else None}
            for i, g in enumerate(groups)
        ]
        record["split"] = groups.spec.method
        if isinstance(model, Segmenter):
            record["taps"] = [vars(tap) for tap in model.taps]
            record["decoder"] = args.decoder
        if is_detector(model):
            record["detection"] = detection_record(model)
            record["taps"] = record["detection"]["taps"]
        print(json.dumps(record, indent=2))
    else:
        print(describe(model, lr=args.lr))
        if is_detector(model):
            print("\n".join(detection_lines(detection_record(model))))
    return 0
