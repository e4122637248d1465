"""Benchmark: layer groups + optimizer param groups for the largest torchvision networks on the meta device.

Times ``layer_groups`` (splitting from scratch) and ``param_groups`` (resolving the stored split, no-decay
sets, merging) on the plain network (the head is found by a dry run) and on a grafted one (graft time not
included), and records the peak Python-heap allocation. Parameters live on the meta device, so no parameter
memory is allocated; the bench checks that.

Run: python bench/groups_meta.py  (append the results to docs/benchmarks.md with --write)
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

from torch import nn

from _report import machine, report, should_write
from torchgraft import graft, layer_groups, param_groups
from torchgraft.weights.zoo import build_model

MODELS = ["vit_h_14", "regnet_y_128gf"]


def _timed(run: Callable[[], object], repeats: int = 3) -> tuple[float, int]:
    """Best wall time of ``run`` over ``repeats``, and its peak Python heap (measured on a separate run)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return best, peak


def _split_and_groups(model: nn.Module) -> list[dict]:
    layer_groups(model, n=3)  # split from scratch (n= forces a new split)
    groups = param_groups(model, lr=slice(1e-5, 1e-3), weight_decay=0.05)
    assert all(p.device.type == "meta" for g in groups for _, p in g["params"])
    return groups


def main() -> None:
    write = should_write()
    rows = []
    for name in MODELS:
        plain = build_model(name, device="meta")
        grafted = graft(build_model(name, device="meta"), 10)
        params = sum(p.numel() for p in plain.parameters())
        for kind, model in (("plain", plain), ("grafted", grafted)):
            seconds, peak = _timed(lambda model=model: _split_and_groups(model))
            n_groups = len(_split_and_groups(model))
            rows.append(
                f"| {name} | {params / 1e6:,.0f}M | {kind} | {len(layer_groups(model))} | {n_groups} | "
                f"{seconds:.3f} | {peak / 2**20:.1f} |"
            )
    lines = [
        f"`python bench/groups_meta.py --write` on {machine()}. Time: best of 3 of `layer_groups(model, n=3)` "
        "(a fresh split; for the plain network this includes the dry run that finds its classifier) plus "
        "`param_groups(model, lr=slice(1e-5, 1e-3), weight_decay=0.05)`. Peak heap: Python-side allocation "
        "of one such call (tracemalloc); parameters are on the meta device, so no parameter memory is allocated. "
        "Target: under 1 s.",
        "",
        "| model | parameters | model kind | layer groups | optimizer groups | time (s) | peak heap (MiB) |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    report("layer groups + param groups on the meta device", lines, write=write)


if __name__ == "__main__":
    main()
