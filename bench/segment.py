"""Benchmark: segmentation fine-tuning, torchgraft vs segmentation_models_pytorch (and fastai), side by side.

Target: scenes of 1-3 real Fashion-MNIST garments on a textured canvas with their pixel masks (11 classes:
background + the 10 garments; ``torchgraft.demo.scenes.write_scenes``: 600 train / 150 valid scenes of 64 px,
validation garments never seen in training). Every tool starts from the same ImageNet EfficientNet-Lite0 weights
(offline package), batch 16, 10 epochs, the same joint augmentation (random resized crop + flip), validation
after every epoch, and is scored by the same mIoU (confusion matrix over all validation pixels, classes
present in targets or predictions):

- smp: ``Unet("tu-efficientnet_lite0")`` trained by a plain AdamW + OneCycleLR loop (bench/smp_segment.py, in
  its own venv), at lr 1e-3 and 2e-3 (its best counts);
- torchgraft: ``torchgraft train --task segment``'s recipe (prepare_run + Learner.fine_tune with the
  run's defaults, ``fine_tune(9, freeze_epochs=1)``: the backbone stays frozen (``keep_frozen=-1``) and the
  U-Net decoder trains on its cached multi-scale features, lr 4e-3, cross-entropy + Dice), and, as ablations,
  the same with the first layer group kept frozen after the frozen epoch (``keep_frozen=1``) or none;
- fastai (``--fastai-python``): ``unet_learner`` on timm's efficientnet_lite0 with ``fine_tune(9, freeze_epochs=1)``.
Wall time of each training call (validation included), each in its own process, nothing else running.
Target (issue 13): mIoU >= the best other tool + 0.03 at <= 0.7x smp's time.

Run: python bench/segment.py --smp-python /path/to/smp-venv/bin/python [--fastai-python ...] [--write]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _report import machine, report
from finetune_targets import lite0_weights
from torchgraft.demo.scenes import write_scenes
from torchgraft.tasks.segment import per_class_iou

HERE = Path(__file__).resolve().parent
SIZE, BATCH, EPOCHS = 64, 16, 10


def miou(matrix: list[list[int]]) -> float:
    counts = torch.tensor(matrix)
    present = (counts.sum(0) + counts.sum(1)) > 0
    return float(per_class_iou(counts)[present].mean())


def ours(data: Path, keep_frozen: int) -> dict:
    """One torchgraft run in this process (called with --ours)."""
    import time

    from torchgraft.app.prepare import prepare_run
    from torchgraft.app.run import validation_batches
    from torchgraft.app.settings import TrainSettings

    torch.set_flush_denormal(True)
    settings = TrainSettings(
        model="timm/efficientnet_lite0", size=SIZE, batch_size=BATCH, epochs=EPOCHS - 1, workers=2,
        keep_frozen=keep_frozen,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as run_dir:
        run = prepare_run(data, run_dir, settings, say=lambda _: None, quiet=True)
        learner = run.learner
        start = time.perf_counter()
        history = learner.fine_tune(
            run.settings.epochs, freeze_epochs=run.settings.freeze_epochs, keep_frozen=keep_frozen
        )
        seconds = time.perf_counter() - start
        batches = validation_batches(run.model, learner.full_valid_dl, device=learner.device, task=learner.task)
        final = learner.task.report(batches, run.data.classes).final
    return {"seconds": seconds, "miou": history[-1]["miou"], "per_class_iou": final["per_class_iou"]}


def in_process(python: str, args: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([python, *args, out.name], check=True, cwd=HERE, stdout=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smp-python", required=True)
    parser.add_argument("--fastai-python", default=None)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--ours", nargs=3, help=argparse.SUPPRESS)  # DATA KEEP_FROZEN OUT: one torchgraft run
    args = parser.parse_args()
    if args.ours:
        Path(args.ours[2]).write_text(json.dumps(ours(Path(args.ours[0]), int(args.ours[1]))))
        return
    data = write_scenes(Path(tempfile.gettempdir()) / "torchgraft-seg-scenes", n_train=600, n_valid=150, size=SIZE)
    weights = lite0_weights()
    rows = {}
    for lr in ("1e-3", "2e-3"):
        result = in_process(args.smp_python, ["smp_segment.py", str(data), weights, str(SIZE), str(EPOCHS),
                                              str(BATCH), lr])  # fmt: skip
        rows[f"smp Unet, AdamW one-cycle lr {lr}"] = (miou(result["matrix"]), result["seconds"])
    if args.fastai_python:
        result = in_process(args.fastai_python, ["fastai_segment.py", str(data), weights, str(SIZE), "1",
                                                 str(EPOCHS - 1), str(BATCH)])  # fmt: skip
        if "error" in result:
            print(f"fastai: {result['error']}")
        else:
            rows["fastai unet_learner fine_tune(9, freeze_epochs=1)"] = (miou(result["matrix"]), result["seconds"])
    names = {-1: "torchgraft recipe (backbone frozen, cached)", 1: "torchgraft, first group frozen after epoch 1",
             0: "torchgraft, every group unfrozen after epoch 1"}  # fmt: skip
    for keep, name in names.items():
        result = in_process(sys.executable, ["segment.py", "--smp-python", "-", "--ours", str(data), str(keep)])
        rows[name] = (result["miou"], result["seconds"])
    smp_time = min(seconds for name, (_, seconds) in rows.items() if name.startswith("smp"))
    best_other = max(value for name, (value, _) in rows.items() if not name.startswith("torchgraft"))
    lines = [
        f"`python bench/segment.py --smp-python ... {'--fastai-python ... ' if args.fastai_python else ''}--write` "
        f"({machine()}; Fashion-MNIST scenes 600/150 at {SIZE} px, 11 classes, Lite0 ImageNet weights, batch "
        f"{BATCH}, {EPOCHS} epochs)",
        "",
        "| run | mIoU | vs best other | time (s) | vs fastest smp |",
        "|---|---|---|---|---|",
    ]
    for name, (value, seconds) in rows.items():
        lines.append(
            f"| {name} | {value:.3f} | {value - best_other:+.3f} | {seconds:.1f} | {seconds / smp_time:.2f}x |"
        )
    report("Segmentation: torchgraft vs smp (bench/segment.py)", lines, write=args.write)


if __name__ == "__main__":
    main()
