"""The automatic split of any network: its body cut into *units* at natural boundaries, the units into
balanced groups.

Units are repeated blocks, stages and the containers holding them (nothing inside a block): a class that
occurs at least twice among the children of one module is a block. The units run in forward order (a dry
run's order where one ran); units that never run in evaluation mode (auxiliary heads) join the head. For
``n`` groups the largest units are opened one level further until ``n - 1`` balanced body groups are possible,
then the row is cut by parameter count, preferring stage boundaries to block boundaries (``n`` body groups
for a headless network); ``n="blocks"`` gives one body group per unit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

from torch import nn

from torchgraft.grafting.dryrun import Trace
from torchgraft.tune.balance import balanced_split
from torchgraft.tune.discovery import body_scope
from torchgraft.tune.group_types import GroupSpec, spec_from_assignment
from torchgraft.tune.names import name_prefixes, under

__all__ = ["auto_spec"]

_GENERIC = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class _Unit:
    members: list[tuple[str, nn.Module | None]]  # module members, or (parameter name, None)
    size: int
    expandable: bool = True


class _Splitter:
    """Cuts a body into units at natural boundaries (see the module docstring)."""

    def __init__(self, root: nn.Module, sizes: dict[str, int]) -> None:
        self.sizes = sizes  # parameter count of every module path of the body (the head excluded)
        self.blocks = self._block_classes(root)
        self._contains: dict[int, bool] = {}

    @staticmethod
    def _block_classes(root: nn.Module) -> set[type]:
        """Classes that occur at least twice among the children of one module (and have children)."""
        classes: set[type] = set()
        for module in root.modules():
            counts = Counter(type(c) for c in module.children() if next(c.children(), None) is not None)
            classes |= {cls for cls, k in counts.items() if k >= 2 and cls not in _GENERIC}
        return classes

    def contains_block(self, module: nn.Module) -> bool:
        key = id(module)
        if key not in self._contains:
            self._contains[key] = any(type(c) in self.blocks or self.contains_block(c) for c in module.children())
        return self._contains[key]

    def descend(self, module: nn.Module) -> bool:
        generic = isinstance(module, _GENERIC)
        return self.contains_block(module) and (generic or type(module) not in self.blocks)

    def units(self, module: nn.Module, name: str) -> list[_Unit]:
        """Units inside ``module`` (named ``name``): blocks alone, runs of other layers merged, loose
        parameters between containers (ViT's ``encoder.pos_embedding``) joined to the unit before them."""
        out: list[_Unit] = []
        for unit in self._units(module, name):
            if out and all(member is None for _, member in unit.members):
                out[-1].members += unit.members
                out[-1].size += unit.size
            else:
                out.append(unit)
        return out

    def _units(self, module: nn.Module, name: str) -> list[_Unit]:
        out: list[_Unit] = []
        pending: list[tuple[str, nn.Module | None]] = []

        def flush() -> None:
            if pending:
                out.append(_Unit(list(pending), sum(self.sizes.get(n, 0) for n, _ in pending)))
                pending.clear()

        dot = f"{name}." if name else ""
        for pname, _ in module.named_parameters(recurse=False):
            if self.sizes.get(dot + pname):
                pending.append((dot + pname, None))
        for cname, child in module.named_children():
            full = dot + cname
            if not self.sizes.get(full):
                continue
            if self.descend(child):
                flush()
                out += self._units(child, full)
            elif type(child) in self.blocks:
                flush()
                out.append(_Unit([(full, child)], self.sizes[full]))
            else:
                pending.append((full, child))
        flush()
        return out

    def expand(self, unit: _Unit) -> list[_Unit]:
        """Split a unit one level further: a merged run into its members, a module into its children."""
        if len(unit.members) > 1:  # one unit per module; a module's own parameters stay together
            parts: list[_Unit] = []
            for member in unit.members:
                loose = member[1] is None and parts and parts[-1].members[-1][1] is None
                if loose and parts[-1].members[-1][0].rpartition(".")[0] == member[0].rpartition(".")[0]:
                    parts[-1].members.append(member)
                    parts[-1].size += self.sizes.get(member[0], 0)
                else:
                    parts.append(_Unit([member], self.sizes.get(member[0], 0)))
            return parts
        name, module = unit.members[0]
        if module is None or next(module.children(), None) is None:
            return [unit]
        dot = f"{name}."
        own = [(dot + n, None) for n, _ in module.named_parameters(recurse=False) if self.sizes.get(dot + n)]
        children = [(dot + n, c) for n, c in module.named_children() if self.sizes.get(dot + n)]
        units = [_Unit(own, sum(self.sizes[n] for n, _ in own))] if own else []
        return units + [_Unit([child], self.sizes[child[0]]) for child in children]

    def refine(self, units: list[_Unit], n_body: int) -> list[_Unit]:
        """Expand the largest units until ``n_body`` balanced groups are possible (or nothing splits)."""
        total = sum(u.size for u in units)
        for _ in range(256):
            candidates = [u for u in units if u.expandable]
            if not candidates:
                break
            largest = max(candidates, key=lambda u: u.size)
            if len(units) >= n_body and largest.size <= total / n_body:
                break
            parts = self.expand(largest)
            while len(parts) == 1 and _splittable(parts[0]) and parts[0].members != largest.members:
                parts = self.expand(parts[0])
            biggest = max(parts, key=lambda u: u.size)
            # splitting off crumbs around one unsplittable layer (a word embedding) does not help
            if len(parts) <= 1 or (
                len(units) >= n_body and biggest.size >= 0.9 * largest.size and not _splittable(biggest)
            ):
                largest.expandable = False
                continue
            at = next(i for i, unit in enumerate(units) if unit is largest)
            units[at : at + 1] = parts
        return units


def _splittable(unit: _Unit) -> bool:
    module = unit.members[0][1]
    return len(unit.members) > 1 or (module is not None and next(module.children(), None) is not None)


def _first_name(unit: _Unit) -> str:
    return unit.members[0][0]


def _last_name(unit: _Unit) -> str:
    return unit.members[-1][0]


def _boundary_depth(before: _Unit, after: _Unit) -> int:
    """How deep the common parent of two neighbouring units is (0: top level, a stage boundary)."""
    a, b = _last_name(before).split("."), _first_name(after).split(".")
    depth = 0
    while depth < min(len(a), len(b)) - 1 and a[depth] == b[depth]:
        depth += 1
    return depth


def _balanced(units: list[_Unit], n_body: int) -> list[list[_Unit]]:
    """``units`` in ``n_body`` consecutive groups balanced by parameter count (cuts at shallow boundaries)."""
    depth = [_boundary_depth(a, b) for a, b in pairwise(units)]
    ranges = balanced_split([u.size for u in units], n_body, depth=depth.__getitem__)
    return [units[r.start : r.stop] for r in ranges]


def _forward_order(units: list[_Unit], run: Trace | None) -> tuple[list[_Unit], list[_Unit]]:
    """Units sorted by when they first run (registration order can differ: Inception's ``AuxLogits``),
    and apart, the units that never run in evaluation mode (auxiliary heads: they join the head group)."""
    if run is None:
        return units, []
    first: dict[str, int] = {}  # module name -> first start of it or of anything inside it
    for call in run.calls:
        for prefix in name_prefixes(call.name) if call.name else ():
            first.setdefault(prefix, call.start)
    keyed, idle, previous = [], [], -1
    for unit in units:
        modules = [m for m, module in unit.members if module is not None]
        starts = [first[m] for m in modules if m in first]
        if modules and not starts:
            idle.append(unit)
            continue
        previous = min(starts) if starts else previous
        keyed.append((previous, len(keyed), unit))
    return [unit for *_, unit in sorted(keyed, key=lambda k: k[:2])], idle


def auto_spec(
    model: nn.Module,
    n: int | str,
    head: tuple[str, ...],
    body: list[str],
    sizes: dict[str, int],
    strip: str,
    run: Trace | None,
) -> GroupSpec:
    """The automatic split of ``model`` into ``n`` groups (head included) or ``"blocks"``.

    Args:
        model: the model (a grafted model splits its source network).
        n: number of groups including the head, or ``"blocks"``.
        head: module names of the head.
        body: body parameter names, in order.
        sizes: parameter count of every module path of the body (:func:`torchgraft.tune.discovery.body_sizes`).
        strip: the prefix left out when names are shown.
        run: the dry run that found the head, if one ran (gives the forward order).
    """
    root, prefix = body_scope(model)
    splitter = _Splitter(root, sizes)
    units, idle = _forward_order(splitter.units(root, prefix), run)
    if idle:  # auxiliary heads are output layers: train them with the head
        head = (*head, *(m for unit in idle for m, _ in unit.members))
        body = [name for name in body if not under(name, head)]
    if n == "blocks":
        parts = [[u] for u in units]
    else:
        n_body = int(n) - 1 if head else int(n)  # a headless network: its last group takes the head's role
        parts = _balanced(splitter.refine(units, n_body), n_body)
    part_of = {member: i for i, part in enumerate(parts) for unit in part for member, _ in unit.members}
    assignment: list[list[str]] = [[] for _ in parts]
    for name in body:
        owner = next(part_of[p] for p in name_prefixes(name) if p in part_of)
        assignment[owner].append(name)
    how = "one group per block/stage" if n == "blocks" else f"{len(parts)} body groups balanced by parameter count"
    scope = [name for name, _ in model.named_parameters()]
    return spec_from_assignment(scope, assignment, head, f"auto: {how}", strip)
