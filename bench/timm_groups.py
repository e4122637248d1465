"""Measurement: layer groups of the timm sample (tests/grafting/test_surgery_timm.py), per model.

For each model, at the default split (``n=None``: a family rule or 3 groups) and at ``n=4`` and
``n="blocks"``: where the split came from, the number of groups, the balance of the body groups (largest /
smallest parameter count; 1.0 is perfect) and whether the groups follow the model's stages: how many cuts
between body groups fall on a boundary of timm's own coarse ``group_matcher()`` groups (its stem and
stages), so that no stage is cut in two. Models are built on the meta device (no weights, no download).

Run: python bench/timm_groups.py  (append the results to docs/benchmarks.md with --write)
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from _report import machine, report, should_write
from torchgraft import LayerGroup, layer_groups
from torchgraft.weights.zoo import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "grafting"))
from test_surgery_timm import ARCHS

SPLITS: tuple[int | str | None, ...] = (None, 4, "blocks")


def _stages(model: nn.Module, *, coarse: bool) -> dict[str, int] | None:
    """Parameter name -> timm's group (its stages, or with ``coarse=False`` its blocks), or ``None`` when
    the model has no ``group_matcher``."""
    from timm.models import group_parameters

    try:
        return group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
    except (AttributeError, TypeError):
        return None


def _cell(model: nn.Module, n: int | str | None, stages: dict[str, int] | None) -> str:
    groups = layer_groups(model, n=n)
    body = groups[:-1] if groups.spec.head == groups[-1].name else groups
    sizes = [g.n_params for g in body]
    balance = max(sizes) / max(min(sizes), 1)
    method = groups.spec.method.split(":")[0].split(" (")[0]
    if stages is None:
        return f"{method}, {len(groups)}, {balance:.1f}, -"
    clean = sum(_clean_cut(body, at, stages) for at in range(1, len(body)))
    return f"{method}, {len(groups)}, {balance:.1f}, {clean}/{len(body) - 1}"


def _clean_cut(body: Sequence[LayerGroup], at: int, stages: dict[str, int]) -> bool:
    """Whether no timm stage has parameters on both sides of the cut before body group ``at``."""
    left = {stages.get(n, -1) for group in body[:at] for n in group.names}
    right = {stages.get(n, -1) for group in body[at:] for n in group.names}
    return not (left & right)


def main() -> None:
    write = should_write()
    warnings.filterwarnings("ignore")
    rows = []
    for name in ARCHS:
        model = build_model(f"timm/{name}", device="meta")
        cells = [_cell(model, n, _stages(model, coarse=n != "blocks")) for n in SPLITS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    lines = [
        f"`python bench/timm_groups.py --write` on {machine()}. Each cell: where the split came from, number of "
        "groups (head included), balance of the body groups (largest / smallest parameter count), cuts between "
        "body groups that cut no timm stage (timm's coarse `group_matcher()` groups; for n='blocks' its fine groups, "
        "its blocks) / all cuts.",
        "",
        "| model | default split | n=4 | n='blocks' |",
        "|---|---|---|---|",
        *rows,
    ]
    report("layer groups of the timm sample", lines, write=write)


if __name__ == "__main__":
    main()
