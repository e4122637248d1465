"""Layer groups from what a network's family states about itself: fastai's split points for the families in
:mod:`torchgraft.tune.archs`, and timm's own ``group_matcher()``.

timm writes each model's groups as data (``dict(stem=r'^conv1|bn1|maxpool', blocks=r'^layer(\\d+)')``; the
``coarse`` form gives its stages, the fine form its blocks). Read with timm's own grouping function, the fine
groups are the units: ``n="blocks"`` gives one body group per fine group, and ``n`` groups cut the row of them
by parameter count, preferring timm's stage boundaries (as the automatic split prefers shallow ones).
Body parameters timm leaves unmatched (``conv_head``, a final norm: timm trains them with its head) are one
last body unit. A matcher that is missing, fails, names less than a quarter of the body's parameters, or
gives fewer units than groups asked for is not used (the automatic split runs instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from torchgraft.grafting.classifier import is_timm_model
from torchgraft.tune.archs import Family, find_family
from torchgraft.tune.balance import balanced_split
from torchgraft.tune.discovery import body_scope, is_grafted
from torchgraft.tune.group_types import GroupSpec, spec_from_assignment

__all__ = ["family_spec", "timm_spec"]

_Unit = tuple[int, int, list[str]]  # (timm stage, parameter count, parameter names) of one timm block

_UNMATCHED = "\0unmatched"  # a name no matcher names: timm gives it the group of unmatched parameters


def family_spec(
    model: nn.Module, head: tuple[str, ...], body: list[str], strip: str, *, family: Family | None = None
) -> GroupSpec | None:
    """fastai's split of ``model``'s family (``family``, else :func:`torchgraft.tune.archs.find_family`), or
    ``None``."""
    source = model.body.model if is_grafted(model) else model
    family = family or find_family(source)
    if family is None:
        return None
    # a split point may hold no parameters (VGG's features.22 is a ReLU in vgg16_bn): compare positions in
    # module order, so the group starts with the first parameter after it
    position = {name: i for i, (name, _) in enumerate(model.named_modules())}
    starts = [position[f"{strip}{start}"] for start in family.starts]
    assignment: list[list[str]] = [[] for _ in range(len(starts) + 1)]
    for name in body:
        owner = position[name.rpartition(".")[0]]
        assignment[sum(owner >= start for start in starts)].append(name)
    if any(not group for group in assignment):
        return None
    scope = [name for name, _ in model.named_parameters()]
    return spec_from_assignment(
        scope, assignment, head, f"family {family.name} (fastai's split points, by name)", strip
    )


def timm_spec(model: nn.Module, n: int | str, head: tuple[str, ...], body: list[str], strip: str) -> GroupSpec | None:
    """The split timm's ``group_matcher()`` gives ``model`` (``n`` groups with the head, or ``"blocks"``), or
    ``None`` when the model has no usable matcher (see the module docstring)."""
    root, prefix = body_scope(model)
    dot = f"{prefix}." if prefix else ""
    if not is_timm_model(root) or not all(name.startswith(dot) for name in body):
        return None
    sizes = {name[len(dot) :]: param.numel() for name, param in model.named_parameters() if name.startswith(dot)}
    fine, coarse = _timm_groups(root, coarse=False), _timm_groups(root, coarse=True)
    if fine is None or coarse is None:
        return None
    units = _units([name[len(dot) :] for name in body], fine, coarse, sizes)
    if units is None:
        return None
    cut = _cut(units, n, headless=not head)
    if cut is None:
        return None
    parts, how = cut
    assignment = [[dot + name for unit in part for name in unit[2]] for part in parts]
    scope = [name for name, _ in model.named_parameters()]
    return spec_from_assignment(scope, assignment, head, f"timm group_matcher: {how}", strip)


def _cut(units: list[_Unit], n: int | str, *, headless: bool) -> tuple[list[list[_Unit]], str] | None:
    """The units in body groups: one per unit for ``"blocks"``, else ``n - 1`` groups (``n`` for a headless
    network) balanced by parameter count, preferring timm's stage boundaries; ``None`` when there are fewer
    units than groups."""
    if n == "blocks":
        return [[unit] for unit in units], "one group per block"
    n_body = int(n) if headless else int(n) - 1
    if len(units) < n_body:
        return None
    stage = [unit[0] for unit in units]
    ranges = balanced_split([unit[1] for unit in units], n_body, depth=lambda j: int(stage[j] == stage[j + 1]))
    return [units[r.start : r.stop] for r in ranges], f"{len(ranges)} body groups by parameter count at its stages"


def _timm_groups(root: nn.Module, *, coarse: bool) -> dict[str, int] | None:
    """Parameter name -> timm's group index (by timm's own grouping); unmatched names map to the index of
    ``_UNMATCHED``. ``None`` when the model has no matcher or it fails."""
    try:
        from timm.models._manipulate import group_with_matcher

        matcher: dict[str, Any] | Callable[[str], Any] = root.group_matcher(coarse=coarse)
        if not isinstance(matcher, dict) and not callable(matcher):
            return None
        named = [*((name, None) for name, _ in root.named_parameters()), (_UNMATCHED, None)]
        return group_with_matcher(named, matcher, reverse=True)
    except Exception:  # no timm, no matcher (NotImplementedError, TypeError), or one that fails on a name
        return None


def _units(body: list[str], fine: dict[str, int], coarse: dict[str, int], sizes: dict[str, int]) -> list[_Unit] | None:
    """(stage, parameter count, names) of each fine group of the body, in timm's order, then the names it
    leaves unmatched as one last unit (a stage of their own). ``None`` when the matcher names less than a
    quarter of the body or its fine groups do not nest in its stages."""
    groups: dict[int, list[str]] = {}
    loose: list[str] = []
    for name in body:
        (loose if fine[name] == fine[_UNMATCHED] else groups.setdefault(fine[name], [])).append(name)
    named = sum(sizes[name] for names in groups.values() for name in names)
    if not groups or named < 0.25 * (named + sum(sizes[name] for name in loose)):
        return None
    ordered = [groups[k] for k in sorted(groups)]
    units, stage = [], -1
    for names in ordered:  # a name only the fine matcher names (swin's final norm) is in its group's stage
        stages = {coarse[name] for name in names if coarse[name] != coarse[_UNMATCHED]}
        if len(stages) > 1 or (stages and min(stages) < stage):
            return None
        stage = stages.pop() if stages else stage
        units.append((stage, sum(sizes[name] for name in names), names))
    if loose:
        units.append((stage + 1, sum(sizes[name] for name in loose), loose))
    return units
