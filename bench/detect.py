"""Benchmark: object-detection fine-tuning, torchgraft vs the torchvision detection tutorial's recipe, side by side.

Targets: detection scenes with exact boxes (bench/detect_scenes.py: crops of scikit-image's cat, cup and
astronaut's face pasted at random sizes on its textures, COCO JSON), differing in image size, object count and
size, and amount of data. They come in two roles:

- CHOOSING targets: the ones torchgraft's detection defaults (rates, epochs) may be picked on; a grid of
  torchgraft settings (``--ours-lr 1e-3,3e-4`` ...) runs on them and is ranked at the end;
- REPORTED targets: only reported, with one torchgraft setting (the one chosen); the script refuses a grid on
  them, so nothing is tuned on the numbers that are published.

Both arms train the same detector on the same backbone, from the same ImageNet EfficientNet-Lite0 weights (the
offline package), at the same ``--size`` (the detector's ``min_size``), batch, total epochs and seed, each in its
own process, timed whole (start-up, data reading, training, every validation, and for torchgraft its export and
report):

- torchgraft: the CLI as a user runs it, ``torchgraft train DATA --task detect --model timm/efficientnet_lite0
  --detector fcos --size S --epochs E --freeze-epochs F --batch-size B --workers 0 --json --out RUN`` (plus any
  ``--lr``, ``--frozen-lr``, ``--lr-mult``, ``--keep-frozen`` of the setting); mAP and mAP50 of its ``final``
  (the epoch it exports: by default the best validation mAP);
- the tutorial (bench/tutorial_detect.py): the model built in Python the way the CLI builds it, SGD(0.005,
  momentum 0.9, weight decay 5e-4) on every parameter that requires grad, StepLR(3, 0.1), the engine's first-epoch
  warm-up, evaluated after every epoch by torchmetrics' MeanAveragePrecision (the backend torchgraft uses); its
  mAP is read at its best epoch (the same choice as torchgraft's export), its last epoch shown beside it.

Run (the real one, on a quiet machine):
    python bench/detect.py --append                                        # every target, torchgraft defaults
    python bench/detect.py --targets choosing --ours-lr default,1e-3,3e-4 --ours-epochs 5,9
    python bench/detect.py --smoke                                         # tiny, end to end

Cost (estimated from a step timing and the smoke run, not from a full run): about 0.2-0.3 s per training image
and 0.08 s per validation image on a quiet 2-core CPU, so the default run (944 training images, 6 epochs, both
arms) takes about 1-1.5 h there, and each more grid setting on the choosing targets about 8 min.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from _report import machine, report
from detect_scenes import write_scenes

HERE = Path(__file__).resolve().parent
SCENES = Path(tempfile.gettempdir()) / "torchgraft-detect-scenes"
ROLES = ("choosing", "reported")
# torchgraft's rate options a setting may carry, with the CLI flag each becomes ("default": not passed)
RATE_FLAGS = {"lr": "--lr", "frozen_lr": "--frozen-lr", "lr_mult": "--lr-mult", "keep_frozen": "--keep-frozen"}


@dataclass(frozen=True)
class Target:
    """One set of scenes and the detector size it is trained at."""

    name: str
    role: str  # "choosing" or "reported"
    train: int
    valid: int
    image: tuple[int, int]  # (H, W) of every image
    objects: tuple[int, int]  # objects per image (inclusive; none in every fifth image)
    sides: tuple[int, int]  # object sides in px (inclusive)
    size: int  # --size: the detector's min_size
    seed: int

    def write(self, root: Path) -> Path:
        return write_scenes(root / self.name, train=self.train, valid=self.valid, size=self.image,
                            objects=self.objects, sides=self.sides, seed=self.seed)  # fmt: skip


TARGETS = [
    Target("few-images", "choosing", 64, 32, (96, 128), (1, 3), (20, 44), 128, seed=1),
    Target("crowded", "choosing", 160, 48, (180, 240), (3, 6), (16, 48), 192, seed=2),
    Target("large-objects", "reported", 120, 40, (240, 320), (1, 2), (48, 120), 224, seed=3),
    Target("small-objects", "reported", 400, 100, (120, 160), (3, 8), (12, 28), 160, seed=4),
    Target("mixed-320", "reported", 200, 60, (240, 320), (1, 4), (24, 96), 256, seed=5),
]
SMOKE = [
    Target("smoke-choosing", "choosing", 8, 4, (96, 128), (1, 3), (20, 44), 96, seed=11),
    Target("smoke-reported", "reported", 8, 4, (96, 128), (1, 3), (20, 44), 96, seed=12),
]


@dataclass(frozen=True)
class Setting:
    """One torchgraft setting of the grid: epochs, and rate options (``None``: torchgraft's default)."""

    epochs: int
    freeze_epochs: int
    rates: tuple[tuple[str, str | None], ...]

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.freeze_epochs

    def flags(self) -> list[str]:
        flags = ["--epochs", str(self.epochs), "--freeze-epochs", str(self.freeze_epochs)]
        for key, value in self.rates:
            flags += [RATE_FLAGS[key], value] if value is not None else []
        return flags

    def label(self) -> str:
        """``F+E, lr 1e-3`` (rates left at torchgraft's default not named)."""
        named = [f"{RATE_FLAGS[k].lstrip('-')} {v}" for k, v in self.rates if v is not None]
        return (
            ", ".join([f"{self.freeze_epochs}+{self.epochs} ep", *named])
            if named
            else f"{self.freeze_epochs}+{self.epochs} ep, defaults"
        )


def grid(args: argparse.Namespace) -> list[Setting]:
    """Every combination of the ``--ours-*`` lists."""

    def values(text: str) -> list[str | None]:
        return [None if v.strip() == "default" else v.strip() for v in text.split(",")]

    epochs = [int(v) for v in args.ours_epochs.split(",")]
    freeze = [int(v) for v in args.ours_freeze_epochs.split(",")]
    rates = [values(getattr(args, f"ours_{key}")) for key in RATE_FLAGS]
    return [
        Setting(e, f, tuple(zip(RATE_FLAGS, combo, strict=True)))
        for e, f, *combo in itertools.product(epochs, freeze, *rates)
    ]


def run_ours(target: Target, data: Path, setting: Setting, batch: int, device: str) -> dict:
    """``torchgraft train`` in a subprocess; its ``final`` values and the whole process's wall time."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, "-m", "torchgraft", "train", str(data), "--task", "detect",
                   "--model", "timm/efficientnet_lite0", "--detector", "fcos", "--size", str(target.size),
                   *setting.flags(), "--batch-size", str(batch), "--workers", "0", "--device", device,
                   "--manifest-dir", "none", "--json", "--out", str(Path(run_dir) / "run")]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"detect bench: torchgraft failed on {target.name}:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    final = summary["final"]
    return {"map": final["map"], "map_50": final["map_50"], "epoch": final["exported_epoch"], "wall_s": seconds,
            "command": shlex.join(["torchgraft", *command[3:]])}  # fmt: skip


def run_tutorial(target: Target, data: Path, epochs: int, batch: int, device: str) -> dict:
    """bench/tutorial_detect.py in a subprocess: its best and last epochs, and the whole process's wall time."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "tutorial.json"
        command = [sys.executable, str(HERE / "tutorial_detect.py"), str(data), str(target.size), str(epochs),
                   str(batch), device, str(out)]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"detect bench: the tutorial recipe failed on {target.name}:\n{done.stderr[-3000:]}")
        history = json.loads(out.read_text())["history"]
    best = max(history, key=lambda row: row["map"])  # the first of equals, as torchgraft's export
    return {"map": best["map"], "map_50": best["map_50"], "epoch": best["epoch"], "last_map": history[-1]["map"],
            "last_map_50": history[-1]["map_50"], "wall_s": seconds, "history": history}  # fmt: skip


def row(target: Target, setting: Setting, ours: dict, tutorial: dict) -> str:
    height, width = target.image
    return (
        f"| {target.name} | {target.role} | {target.train} / {target.valid} | {height}x{width} -> {target.size} | "
        f"{target.objects[0]}-{target.objects[1]} of {target.sides[0]}-{target.sides[1]} px | {setting.label()} | "
        f"{ours['map']:.3f} | {ours['map_50']:.3f} | {ours['wall_s']:.1f} | "
        f"{tutorial['map']:.3f} (last {tutorial['last_map']:.3f}) | {tutorial['map_50']:.3f} | "
        f"{tutorial['wall_s']:.1f} | {ours['map'] - tutorial['map']:+.3f} | {ours['map_50'] - tutorial['map_50']:+.3f} "
        f"| {ours['wall_s'] / tutorial['wall_s']:.2f}x |"
    )


HEADER = [
    "| target | role | train / valid images | image HxW -> size | objects | torchgraft setting (freeze+unfrozen "
    "epochs) | ours mAP | ours mAP50 | ours wall s | tutorial mAP (best epoch; last) | tutorial mAP50 | "
    "tutorial wall s | mAP diff | mAP50 diff | wall ours/tutorial |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def ranking(results: list[dict]) -> list[str]:
    """The settings tried on the choosing targets, best mean mAP difference first."""
    by_setting: dict[str, list[dict]] = {}
    for result in results:
        if result["role"] == "choosing":
            by_setting.setdefault(result["setting"], []).append(result)
    if len(by_setting) < 2:
        return []
    lines = [
        "",
        "Choosing targets, settings ranked (mean mAP difference; geometric mean wall ratio):",
        "",
        "| torchgraft setting | mean mAP diff | mean mAP50 diff | wall ours/tutorial |",
        "|---|---|---|---|",
    ]
    scored = []
    for label, found in by_setting.items():
        diff = sum(r["ours"]["map"] - r["tutorial"]["map"] for r in found) / len(found)
        diff50 = sum(r["ours"]["map_50"] - r["tutorial"]["map_50"] for r in found) / len(found)
        ratio = math.exp(sum(math.log(r["ours"]["wall_s"] / r["tutorial"]["wall_s"]) for r in found) / len(found))
        scored.append((diff, diff50, ratio, label))
    for diff, diff50, ratio, label in sorted(scored, reverse=True):
        lines.append(f"| {label} | {diff:+.3f} | {diff50:+.3f} | {ratio:.2f}x |")
    return lines


def chosen_targets(spec: str, smoke: bool) -> list[Target]:
    pool = SMOKE if smoke else TARGETS
    wanted = [name.strip() for name in spec.split(",")]
    picked = [t for t in pool if "all" in wanted or t.role in wanted or t.name in wanted]
    unknown = sorted(set(wanted) - {"all", *ROLES, *(t.name for t in pool)})
    if unknown or not picked:
        names = ", ".join(t.name for t in pool)
        raise SystemExit(f"detect bench: --targets {spec}: choose all, choosing, reported or names among {names}.")
    return picked


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--targets", default="all", help="all, choosing, reported, or target names, comma-separated")
    parser.add_argument("--smoke", action="store_true", help="two tiny targets (8 images), 1 epoch: end to end")
    parser.add_argument("--batch-size", type=int, default=8, help="both arms (default: 8, torchgraft's for boxes)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="both arms")
    parser.add_argument("--ours-epochs", default=None, help="unfrozen epochs, comma list (default: 5; smoke: 1)")
    parser.add_argument("--ours-freeze-epochs", default=None, help="frozen epochs, comma list (default: 1; smoke: 0)")
    for key, flag in RATE_FLAGS.items():
        parser.add_argument(f"--ours-{flag[2:]}", dest=f"ours_{key}", default="default",
                            help=f"torchgraft {flag} values, comma list; 'default': not passed")  # fmt: skip
    parser.add_argument("--scenes", type=Path, default=SCENES, help=f"where the scenes are written ({SCENES})")
    parser.add_argument("--results", type=Path, help="also write every result as JSON here")
    parser.add_argument("--append", "--write", dest="append", action="store_true",
                        help="append the table to docs/benchmarks.md")  # fmt: skip
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="skip the untimed warm-up run of each arm (skipped with --smoke)")  # fmt: skip
    args = parser.parse_args()
    args.warm_up = args.warm_up and not args.smoke
    args.ours_epochs = args.ours_epochs or ("1" if args.smoke else "5")
    args.ours_freeze_epochs = args.ours_freeze_epochs or ("0" if args.smoke else "1")
    return args


def main() -> None:
    args = parse()
    targets, settings = chosen_targets(args.targets, args.smoke), grid(args)
    if len(settings) > 1 and any(t.role == "reported" for t in targets):
        raise SystemExit(
            f"detect bench: {len(settings)} torchgraft settings on reported targets; those take the one setting "
            f"chosen on the choosing targets. Pass one value per --ours-* flag, or --targets choosing."
        )
    if args.warm_up:  # one untimed run of each arm first, so neither timed run is the first to read cold files
        data = SMOKE[0].write(args.scenes)
        run_tutorial(SMOKE[0], data, 1, args.batch_size, args.device)
        run_ours(SMOKE[0], data, Setting(1, 0, ()), args.batch_size, args.device)
    results, rows, tutorials = [], [], {}
    for target in targets:
        data = target.write(args.scenes)
        for setting in settings:
            key = (target.name, setting.total_epochs)  # the tutorial's run depends on the total epochs alone
            if key not in tutorials:
                tutorials[key] = run_tutorial(target, data, setting.total_epochs, args.batch_size, args.device)
            ours = run_ours(target, data, setting, args.batch_size, args.device)
            rows.append(row(target, setting, ours, tutorials[key]))
            print(rows[-1], flush=True)
            results.append({"target": target.name, "role": target.role, "setting": setting.label(),
                            "ours": ours, "tutorial": tutorials[key]})  # fmt: skip
    if args.results:
        args.results.write_text(json.dumps(results, indent=1))
    lines = [
        f"`python bench/detect.py {shlex.join(sys.argv[1:])}` ({machine()}, device {args.device}). Detection scenes "
        "(bench/detect_scenes.py: scikit-image cat / cup / astronaut crops on its textures, exact boxes, every fifth "
        "image empty), FCOS grafted on ImageNet EfficientNet-Lite0 in both arms, same size, batch "
        f"{args.batch_size}, total epochs and seed; wall time of each whole process. torchgraft: `torchgraft train "
        "--task detect --detector fcos` with the setting shown (its exported epoch). Tutorial: SGD 0.005, "
        "momentum 0.9, wd 5e-4, StepLR(3, 0.1), first-epoch warm-up, best epoch (last shown). mAP: torchmetrics "
        "MeanAveragePrecision (COCO). Choosing targets may be used to pick torchgraft's detection defaults; "
        "reported targets are only reported.",
        "",
        *HEADER,
        *rows,
        *ranking(results),
    ]
    report("Detection: torchgraft vs the torchvision tutorial recipe (bench/detect.py)", lines, write=args.append)


if __name__ == "__main__":
    main()
