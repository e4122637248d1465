"""Benchmark: time per optimizer step of ``Learner.fine_tune``'s unfrozen stage at world 1 and 2 (gloo, CPU),
DDP and FSDP2, against a hand-written DDP loop at world 2, side by side in one run.

ResNet-18 grafted to 10 classes, Fashion-MNIST (Debian's ``dataset-fashion-mnist``) at 64 px, a global batch
of 32 (16 per process at world 2), AdamW. Each configuration trains ``STEPS`` steps after ``WARMUP`` steps;
the median step time over ``REPEATS`` runs is reported with its ratio to world 1. A report, not a target: two
CPU cores cannot scale (two processes share them), so this says what the reduction costs here; the NCCL
figures come from bench/gpu_check.sh on a GPU machine.

Run: python bench/distributed.py  (append the results to docs/benchmarks.md with --write)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from _report import machine, report, should_write

HERE = Path(__file__).resolve()
GLOBAL_BATCH, WARMUP, STEPS, REPEATS = 32, 3, 12, 3


def worker(kind: str, out: str) -> None:
    """One run (under torchrun or alone): the step times of ``kind`` written by rank 0 to ``out``."""
    from loop_overhead import fashion_mnist
    from torchgraft import Learner, graft
    from torchgraft.train.callbacks import LambdaCallback
    from torchgraft.train.distributed import cleanup, is_main, setup, world_size

    torch.set_flush_denormal(True)
    setup()
    world = world_size()
    torch.set_num_threads(max(1, 2 // world))
    data = fashion_mnist(GLOBAL_BATCH * (WARMUP + STEPS))
    loader = torch.utils.data.DataLoader(data, batch_size=GLOBAL_BATCH // world)
    torch.manual_seed(0)
    model = graft(torchvision.models.resnet18(), 10)
    times: list[float] = []
    if kind == "hand":
        times = hand_loop(model, loader)
    else:
        learner = Learner(model, loader, quiet=True, strategy="fsdp" if kind == "fsdp" else "ddp", channels_last=False)
        last = [0.0]

        def tick(learner: Learner) -> None:
            now = time.perf_counter()
            if learner.step > WARMUP:
                times.append(now - last[0])
            last[0] = now

        learner.add_callback(LambdaCallback(on_step_end=tick))
        learner.fit(1, 1e-3)
        learner.close()
    if is_main():
        Path(out).write_text(json.dumps(times))
    cleanup()


def hand_loop(model: nn.Module, loader: torch.utils.data.DataLoader) -> list[float]:
    """What a user writes with torch.distributed alone: DDP, a DistributedSampler, AdamW."""
    from torchgraft.train.distributed import is_distributed

    network = nn.parallel.DistributedDataParallel(model) if is_distributed() else model
    if is_distributed():
        sampler = torch.utils.data.distributed.DistributedSampler(loader.dataset, shuffle=False)
        loader = torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times, last = [], time.perf_counter()
    for step, (x, y) in enumerate(loader, start=1):
        loss = nn.functional.cross_entropy(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        now = time.perf_counter()
        if step > WARMUP:
            times.append(now - last)
        last = now
    return times


def measure(kind: str, world: int) -> float:
    """The median step time (s) of ``REPEATS`` runs of ``kind`` at ``world`` processes."""
    medians = []
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "times.json"
            launcher = [sys.executable]
            if world > 1:
                launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
            subprocess.run([*launcher, str(HERE), "--worker", kind, str(out)], check=True, capture_output=True)
            medians.append(statistics.median(json.loads(out.read_text())))
    return statistics.median(medians)


def main() -> None:
    write = should_write()
    runs = [("Learner, 1 process", "ddp", 1), ("hand-written DDP loop, 2 processes", "hand", 2)]
    runs += [("Learner DDP, 2 processes", "ddp", 2), ("Learner FSDP2, 2 processes", "fsdp", 2)]
    results = [(label, measure(kind, world)) for label, kind, world in runs]
    base = results[0][1]
    lines = [
        f"`python bench/distributed.py` ({machine()}; ResNet-18, Fashion-MNIST 64 px, global batch {GLOBAL_BATCH}, "
        f"AdamW; median step over {STEPS} steps after {WARMUP}, median of {REPEATS} runs; gloo on CPU). A report, "
        "no target: two processes share the same two cores, so world 2 cannot be faster here.",
        "",
        "| run | s / step | vs 1 process |",
        "|---|---|---|",
        *[f"| {label} | {seconds:.3f} | {seconds / base:.2f}x |" for label, seconds in results],
    ]
    report("Distributed overhead on CPU (bench/distributed.py)", lines, write=write)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(HERE.parent))
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
