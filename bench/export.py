"""Benchmark: inference latency of the exported demo model, ONNX Runtime vs eager PyTorch (and the .pt2 program).

The demo run (``torchgraft demo``: ImageNet EfficientNet-Lite0 fine-tuned on the packaged Fashion-MNIST, 2
epochs to keep it short), exported with ``torchgraft export`` (ONNX, then ``--format pt2``). Each backend
computes the same thing — the network and its softmax — on the same preprocessed batch of the demo's
held-out images, at batch 1 and 32, on the CPU: eager PyTorch (``torch.inference_mode``), ONNX Runtime
(CPU provider, its default threads) and the ``torch.export`` program. Median of --repeats calls after 5
warm-up calls. A report, no target (issue 15).

Run: python bench/export.py [--repeats 50] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from _report import machine, report
from torchgraft.data.images import load_rgb
from torchgraft.demo import DEMO_SETTINGS, run_demo
from torchgraft.ship.deploy import deploy, deployable
from torchgraft.ship.export import load_exported


def median_ms(call: Callable[[], object], repeats: int) -> float:
    for _ in range(5):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per measurement")
    parser.add_argument("--write", action="store_true", help="append the results to docs/benchmarks.md")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp()) / "demo"
    demo = run_demo(run_dir, settings=dataclasses.replace(DEMO_SETTINGS, epochs=2), quiet=True)
    onnx_report = deploy(run_dir)
    pt2_report = deploy(run_dir, format="pt2")
    exported = load_exported(run_dir)
    eager = deployable(exported)
    transform = exported.preprocessing.eval_transform()
    images = [p.path for p in demo.predictions]  # the held-out images
    pool = torch.stack([transform(load_rgb(p)) for p in images])
    session = onnxruntime.InferenceSession(str(onnx_report.path), providers=["CPUExecutionProvider"])
    program = torch.export.load(str(pt2_report.path)).module()
    rows = []
    for batch_size in (1, 32):
        batch = pool[torch.arange(batch_size) % len(pool)]
        array = batch.numpy()

        def run_eager(batch: torch.Tensor = batch) -> object:
            with torch.inference_mode():
                return eager(batch)

        def run_program(batch: torch.Tensor = batch) -> object:
            with torch.inference_mode():
                return program(batch)

        def run_onnx(array: np.ndarray = array) -> object:
            return session.run(None, {"image": array})

        eager_ms = median_ms(run_eager, args.repeats)
        onnx_ms = median_ms(run_onnx, args.repeats)
        pt2_ms = median_ms(run_program, args.repeats)
        rows.append((batch_size, eager_ms, onnx_ms, pt2_ms))
        print(f"batch {batch_size}: eager {eager_ms:.2f} ms, onnxruntime {onnx_ms:.2f} ms, pt2 {pt2_ms:.2f} ms")
    lines = [
        f"`python bench/export.py --repeats {args.repeats} --write` on {machine()}, onnxruntime "
        f"{onnxruntime.__version__}. The demo model (EfficientNet-Lite0, {exported.preprocessing.size} px, "
        f"10 classes, softmax included), exported by `torchgraft export` (ONNX: outputs within "
        f"{onnx_report.max_difference:.1e} of PyTorch; .pt2: {pt2_report.max_difference:.1e}). Median of "
        f"{args.repeats} calls after 5 warm-up calls, CPU. Report only, no target.",
        "",
        "| batch | eager PyTorch (ms) | ONNX Runtime (ms) | ratio | .pt2 program (ms) | ratio |",
        "|---|---|---|---|---|---|",
        *(f"| {b} | {e:.2f} | {o:.2f} | {o / e:.2f}x | {p:.2f} | {p / e:.2f}x |" for b, e, o, p in rows),
    ]
    report("inference latency: ONNX Runtime vs eager PyTorch", lines, write=args.write)


if __name__ == "__main__":
    main()
