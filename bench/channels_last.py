"""Benchmark: one training step (forward, backward, AdamW) in channels-last vs contiguous memory format on CPU.

The Learner's ``channels_last="auto"`` turns the format on for networks with 2-D BatchNorm; this measures
why. Random weights, batch 64 of 3x64x64, median of 5 steps after a warm-up step; the contiguous run is done
before and after the channels-last one and the faster of the two is kept.

Run: python bench/channels_last.py [--write]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from _report import machine, report


def step_time(model: torch.nn.Module, x: torch.Tensor, *, channels_last: bool, steps: int = 6) -> float:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout).train()
    x = x.contiguous(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = model(x).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def models() -> dict[str, torch.nn.Module]:
    import timm

    return {
        "resnet18 (BatchNorm)": torchvision.models.resnet18(),
        "resnet50 (BatchNorm)": torchvision.models.resnet50(),
        "densenet121 (BatchNorm)": torchvision.models.densenet121(),
        "mobilenet_v3_small (BatchNorm)": torchvision.models.mobilenet_v3_small(),
        "timm efficientnet_lite0 (BatchNorm)": timm.create_model("efficientnet_lite0"),
        "convnext_tiny (LayerNorm)": torchvision.models.convnext_tiny(),
        "timm vit_tiny_patch16 (LayerNorm)": timm.create_model("vit_tiny_patch16_224", img_size=64),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="append the results to docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    x = torch.randn(64, 3, 64, 64)
    rows = []
    for name, model in models().items():
        before = step_time(model, x, channels_last=False)
        last = step_time(model, x, channels_last=True)
        contiguous = min(before, step_time(model, x, channels_last=False))
        rows.append(f"| {name} | {contiguous:.3f} | {last:.3f} | {contiguous / last:.2f}x |")
        print(rows[-1], flush=True)
    lines = [
        f"`python bench/channels_last.py --write` on {machine()}. One training step (forward, backward, AdamW) of "
        "random-weight networks, batch 64 of 3x64x64, median of 5 steps after a warm-up; contiguous measured "
        'before and after channels-last, the faster kept. The Learner\'s default `channels_last="auto"` is on '
        "exactly for the networks with BatchNorm2d.",
        "",
        "| network | contiguous (s/step) | channels-last (s/step) | speed-up |",
        "|---|---|---|---|",
        *rows,
    ]
    report("channels-last memory format on CPU", lines, write=args.write)


if __name__ == "__main__":
    main()
