"""torchgraft's side of bench/finetune_targets.py, bench/tasks.py, bench/segment.py and bench/text.py alone, as
one JSON line per run: for comparing two versions of torchgraft on the same data (a restructuring that must
keep accuracies and not cost time), without the anchors (fastai, smp, the Trainer) those benches run beside.

    PYTHONPATH=OLD/src python OLD_OR_NEW/bench/ours_only.py --bench-dir OLD/bench > old.jsonl
    PYTHONPATH=NEW/src python NEW/bench/ours_only.py --bench-dir NEW/bench > new.jsonl

``--bench-dir`` is the bench folder of the version measured (its own ``ours()`` functions and data makers).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch


def _line(name: str, **values: object) -> None:
    print(json.dumps({"run": name, **values}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench-dir", required=True, help="the bench/ folder of the torchgraft measured")
    parser.add_argument("--only", nargs="*", default=["targets", "tasks", "segment", "text"])
    args = parser.parse_args()
    sys.path.insert(0, args.bench_dir)
    warnings.simplefilter("ignore")
    torch.set_flush_denormal(True)
    if "targets" in args.only:
        import finetune_targets
        from target_folders import BUILDERS, make_target

        for target in BUILDERS:
            accuracy, seconds = finetune_targets.ours(make_target(target), 0)
            _line(f"targets/{target}", accuracy=round(accuracy, 4), seconds=round(seconds, 1))
    if "tasks" in args.only:
        import tasks
        from scene_data import make_scenes

        root = make_scenes()
        probabilities, targets, seconds, threshold, _ = tasks.ours("multilabel", root / "tags.csv", 112)
        half = len(targets) // 2
        f1 = tasks.micro_f1(probabilities[half:], targets[half:], threshold)
        _line("tasks/multilabel", f1=round(f1, 4), seconds=round(seconds, 1))
        values, targets, seconds, _, _ = tasks.ours("regression", root / "coverage.csv", 112)
        mae = (values.reshape(targets.shape) - targets).abs().mean().item()
        _line("tasks/regression", mae=round(mae, 4), seconds=round(seconds, 1))
    if "segment" in args.only:
        import segment

        data = segment.write_scenes(
            Path(tempfile.gettempdir()) / "torchgraft-seg-scenes", n_train=600, n_valid=150, size=segment.SIZE
        )
        result = segment.ours(data, -1)
        _line("segment/recipe", miou=round(result["miou"], 4), seconds=round(result["seconds"], 1))
    if "text" in args.only:
        import text

        start = time.perf_counter()
        data = text.bbc(100)
        accuracy, seconds = text.ours(data, 256, 2, 1)
        _line("text/recipe", accuracy=round(accuracy, 4), seconds=round(seconds, 1), wall=time.perf_counter() - start)


if __name__ == "__main__":
    main()
