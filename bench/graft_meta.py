"""Benchmark: grafting the largest torchvision networks on the meta device — time and peak memory.

Run: python bench/graft_meta.py  (appends a dated section to docs/benchmarks.md with --write)
"""

from __future__ import annotations

import resource
import time
import tracemalloc

from _report import machine, report, should_write
from torchgraft import graft
from torchgraft.weights.zoo import build_model

MODELS = ["vit_h_14", "regnet_y_128gf", "efficientnet_v2_l", "convnext_large"]


def measure(name: str, pool: str | None) -> tuple[float, float, int]:
    """Seconds to build on meta, seconds to graft, peak Python-heap bytes during the graft."""
    start = time.perf_counter()
    model = build_model(name, device="meta")
    built = time.perf_counter()
    grafted = graft(model, 10, pool=pool)
    done = time.perf_counter()
    assert all(p.device.type == "meta" for p in grafted.parameters())
    tracemalloc.start()  # a second graft, traced separately: tracemalloc slows Python down several times
    graft(build_model(name, device="meta"), 10, pool=pool)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return built - start, done - built, peak


def main() -> None:
    write = should_write()
    rows = []
    for name in MODELS:
        params = sum(p.numel() for p in build_model(name, device="meta").parameters())
        for pool in (None, "concat"):
            build_s, graft_s, peak = measure(name, pool)
            rows.append(
                f"| {name} | {params / 1e6:,.0f}M | {pool or 'model'} | {build_s:.2f} | {graft_s:.2f} | "
                f"{peak / 2**20:.1f} |"
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    lines = [
        f"`python bench/graft_meta.py --write` on {machine()}. Peak heap is Python-side allocation "
        f"during `graft` (tracemalloc); parameter memory on meta is zero. Process peak RSS: {rss:,.0f} MiB.",
        "",
        "| model | parameters | pool | build (s) | graft (s) | graft peak heap (MiB) |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    report("graft on the meta device", lines, write=write)


if __name__ == "__main__":
    main()
