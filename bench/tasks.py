"""Benchmark: multi-label and regression fine-tuning, torchgraft vs fastai 2.8, side by side in one run.

Scenes of real Fashion-MNIST items (bench/scene_data.py: 2,000 train / 500 valid, 56 px, 1-4 items each),
ImageNet EfficientNet-Lite0 (offline weights), resized to --size px, batch 64, ImageNet normalisation, no
augmentation, each tool's own ``fine_tune(2, freeze_epochs=1)`` recipe:
- multi-label (tags = the items' classes): fastai ``MultiCategoryBlock`` + ``vision_learner`` (threshold 0.5,
  as its ``accuracy_multi``/``F1ScoreMulti``); torchgraft ``task="multilabel"``, threshold chosen by
  ``best_threshold`` on the first half of the validation scenes. Micro-F1 is reported on the second half for
  both (and torchgraft's at 0.5), so no threshold is tuned on the scenes it is scored on.
- regression (the fraction of the canvas the items cover): fastai ``RegressionBlock`` (MSE), once with its
  defaults (no y_range) and once with ``y_range=(0, 1)`` as its docs advise for bounded targets;
  torchgraft ``Regression`` (MSE on standardised targets). MAE on all validation scenes.
Wall time of the fine-tuning call (torchgraft's includes choosing the threshold).
Targets (issue 14): multi-label F1 >= fastai + 0.05 at <= 0.5x its time; regression MAE <= 0.9x fastai's at
<= 0.5x its time.

Run: python bench/tasks.py --fastai-python /path/to/venv/bin/python [--size 112] [--write]
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torchvision.transforms import v2

from _report import machine, report
from feature_cache import lite0
from finetune_targets import MEAN, STD, lite0_weights
from scene_data import make_scenes
from torchgraft import Learner, Multilabel, Regression, best_threshold, graft
from torchgraft.data.folders import image_data


def micro_f1(probabilities: torch.Tensor, targets: torch.Tensor, threshold: float) -> float:
    predicted, truth = probabilities >= threshold, targets.bool()
    tp = (predicted & truth).sum().item()
    return 2 * tp / max(2 * tp + (predicted & ~truth).sum().item() + (~predicted & truth).sum().item(), 1)


def fastai(python: str, task: str, table: Path, size: int) -> dict:
    out = Path(tempfile.mkdtemp()) / "fastai.json"
    script = Path(__file__).with_name("fastai_tasks.py")
    command = [python, str(script), task, str(table), lite0_weights(), str(size), str(out)]
    subprocess.run(command, check=True, capture_output=True)
    return json.loads(out.read_text())


def ours(task: str, table: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, float, float | None, list[str]]:
    """Validation outputs (probabilities or values, in the CSV's order), targets, seconds, threshold, names."""
    torch.manual_seed(0)
    data = image_data(table, task=task)
    transform = v2.Compose(
        [v2.ToImage(), v2.RGB(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)]
    )
    transform = v2.Compose([transform, v2.Normalize(MEAN, STD)])
    train, valid = data.datasets(transform, transform)
    train_dl = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
    valid_dl = torch.utils.data.DataLoader(valid, batch_size=128)
    targets = torch.stack([torch.as_tensor(valid.target(i)) for i in range(len(valid))])
    kind = Multilabel() if task == "multilabel" else Regression().fit_scale(torch.tensor([t for _, t in data.train]))
    learner = Learner(graft(lite0(), data.n_outputs), train_dl, valid_dl, task=kind, quiet=True)
    start = time.perf_counter()
    learner.fine_tune(2, freeze_epochs=1)
    with torch.no_grad():
        raw = torch.cat([learner.model.eval()(x) for x, _ in valid_dl])
    decoded = kind.decode(raw)
    outputs = decoded["probabilities"] if task == "multilabel" else decoded["values"]
    threshold = None
    if task == "multilabel":
        half = len(outputs) // 2
        threshold, _ = best_threshold(outputs[:half], targets[:half])
    return outputs, targets, time.perf_counter() - start, threshold, data.classes


def multilabel_row(python: str, root: Path, size: int) -> str:
    base = fastai(python, "multilabel", root / "tags.csv", size)
    probabilities, targets, seconds, threshold, names = ours("multilabel", root / "tags.csv", size)
    order = [base["vocab"].index(name) for name in names]  # fastai's label order -> ours
    theirs = torch.tensor(base["outputs"])[:, order]
    half = len(targets) // 2
    base_f1 = micro_f1(theirs[half:], targets[half:], 0.5)
    f1 = micro_f1(probabilities[half:], targets[half:], threshold)
    at_half = micro_f1(probabilities[half:], targets[half:], 0.5)
    own = f" (fastai's own F1ScoreMulti, all valid: {base['own_metric']:.3f})"
    return (
        f"| multi-label micro-F1 | {base_f1:.3f}{own} | {base['seconds']:.1f} | {f1:.3f} (threshold {threshold}; "
        f"{at_half:.3f} at 0.5) | {seconds:.1f} | {f1 - base_f1:+.3f} | {seconds / base['seconds']:.2f}x |"
    )


def regression_row(python: str, root: Path, size: int, *, fastai_task: str = "regression") -> str:
    base = fastai(python, fastai_task, root / "coverage.csv", size)
    values, targets, seconds, _, _ = ours("regression", root / "coverage.csv", size)
    base_mae = (torch.tensor(base["outputs"]).reshape(targets.shape) - targets).abs().mean().item()
    mae = (values.reshape(targets.shape) - targets).abs().mean().item()
    own = f" (fastai's own mae: {base['own_metric']:.4f})"
    variant = " (fastai y_range=(0, 1))" if fastai_task != "regression" else ""
    return (
        f"| regression MAE{variant} | {base_mae:.4f}{own} | {base['seconds']:.1f} | {mae:.4f} | {seconds:.1f} | "
        f"{mae / base_mae:.2f}x | {seconds / base['seconds']:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fastai-python", required=True, help="a Python with fastai 2.8 installed")
    parser.add_argument("--size", type=int, default=112, help="input size in pixels (default: 112)")
    parser.add_argument("--write", action="store_true", help="append the results to docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    root = make_scenes()
    rows = []
    yrange_row = functools.partial(regression_row, fastai_task="regression_yrange")
    for row in (multilabel_row, regression_row, yrange_row):
        rows.append(row(args.fastai_python, root, args.size))
        print(rows[-1], flush=True)
    lines = [
        f"`python bench/tasks.py --fastai-python ... --size {args.size} --write` on {machine()}. Scenes of real "
        "Fashion-MNIST items (bench/scene_data.py: 2,000 train / 500 valid), ImageNet EfficientNet-Lite0, "
        f"{args.size} px, batch 64, no augmentation, each tool's `fine_tune(2, freeze_epochs=1)`. Multi-label: "
        "micro-F1 on the second half of the validation scenes (fastai at its 0.5 threshold; torchgraft at the "
        "threshold its best_threshold chose on the first half). Regression: MAE of the covered fraction on "
        "all validation scenes. Time of the fine-tuning call. Targets: F1 >= fastai + 0.05, MAE <= 0.9x, "
        "each at <= 0.5x fastai's time.",
        "",
        "| task | fastai | fastai time (s) | torchgraft | torchgraft time (s) | gain / ratio | time |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    report("multi-label and regression images: torchgraft vs fastai", lines, write=args.write)


if __name__ == "__main__":
    main()
