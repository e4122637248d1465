"""Layer groups: the network split into consecutive parameter groups, early body to head.

A split is a list of name rules (:mod:`torchgraft.tune.names` patterns) stored on the model, so it is written
once and *resolved from the current parameters every time it is used*: replace a layer and its new
parameters land in the group whose rule names it; a parameter no rule names goes to the head group and is
reported; a parameter named by two groups is an error.

Where the rules come from, in order of precedence:

1. ``rules=`` given by the user (name patterns or modules per group);
2. a family rule (:mod:`torchgraft.tune.archs`: fastai's split points for ResNet, DenseNet, VGG-BN, AlexNet,
   SqueezeNet, written as module names) when ``n`` is not given;
3. an automatic split of any other network: the body is cut into *units* at natural boundaries (repeated
   blocks, stages, the containers holding them; nothing inside a block) and the units into ``n - 1``
   consecutive groups balanced by parameter count, preferring stage boundaries to block boundaries
   (``n`` body groups for a headless network).

The head — a grafted model's ``head``, a timm model's classifier, the classifier a dry run finds, or else
the last top-level child with parameters — is always its own, last group.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from torch import nn

from torchgraft.grafting.adapters import AdapterView, adapter_view, base_model, canonical_path, is_peft_wrapper
from torchgraft.grafting.classifier import find_classifier
from torchgraft.grafting.dryrun import Trace, infer_input_size, trace
from torchgraft.tune.archs import find_family
from torchgraft.tune.names import collapse_names, compile_pattern, compress_names, name_prefixes

__all__ = ["GroupSpec", "LayerGroup", "LayerGroups", "group_state", "layer_groups"]

_SPEC_ATTR = "_torchgraft_groups"
_GENERIC = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
RuleSpec = Mapping[str, "str | nn.Module | Sequence[str | nn.Module]"] | Sequence[Sequence["str | nn.Module"]]


@dataclass(frozen=True)
class GroupSpec:
    """How a model splits into layer groups (stored on the model; plain strings, so it survives copies).

    Attributes:
        groups: ``(group name, patterns)`` in order, early body first; the head group is last.
        head: name of the head group, which receives parameters no rule names.
        method: where the rules came from (``"family resnet"``, ``"auto"``, ``"rules"``).
        strip: a prefix left out when names are shown (``"body.model."`` on a grafted model). Patterns
            always match full parameter names; user rules written with the source network's names are
            prefixed when the spec is made.
    """

    groups: tuple[tuple[str, tuple[str, ...]], ...]
    head: str
    method: str
    strip: str = ""


@dataclass(frozen=True)
class LayerGroup:
    """One resolved group: its parameters now.

    Attributes:
        name: group name (``"body0"``, ..., ``"head"``).
        names: parameter names, in model order.
        params: the parameters themselves.
        modules: a readable summary of the modules it holds (``"layer3–layer4"``).
    """

    name: str
    names: tuple[str, ...]
    params: tuple[nn.Parameter, ...]
    modules: str

    @property
    def n_params(self) -> int:
        """Number of scalar parameters."""
        return sum(p.numel() for p in self.params)

    @property
    def state(self) -> str:
        """From ``requires_grad``: ``"trainable"``, ``"frozen"``, ``"frozen, norm trainable"``, ``"partly frozen"``."""
        flags = [p.requires_grad for p in self.params]
        if not flags:
            return "no parameters"
        if all(flags):
            return "trainable"
        if not any(flags):
            return "frozen"
        trainable = [p for p in self.params if p.requires_grad]
        return "frozen, norm trainable" if all(p.ndim <= 1 for p in trainable) else "partly frozen"


@dataclass(frozen=True)
class LayerGroups(Sequence[LayerGroup]):
    """A model's layer groups resolved from its current parameters (a sequence of :class:`LayerGroup`).

    Attributes:
        groups: the groups, early body first, head last.
        unassigned: parameters no rule named (they are in the head group).
        spec: the rules they were resolved from.
        locked: on a model with peft adapters, the base tensors the adapters modify and every other
            parameter outside the head group: in no group, never made trainable (freezing, unfreezing,
            optimizers and ``fine_tune`` only see the adapters and the head).
        wrapped: whether names carry a ``PeftModel``'s ``base_model.model.`` prefix.
        adapted: whether the model has peft layers (names are then matched without peft's additions).
    """

    groups: tuple[LayerGroup, ...]
    unassigned: tuple[str, ...]
    spec: GroupSpec
    locked: tuple[str, ...] = ()
    wrapped: bool = False
    adapted: bool = False

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> LayerGroup:  # type: ignore[override]
        return self.groups[index]

    def __iter__(self) -> Iterator[LayerGroup]:
        return iter(self.groups)

    @property
    def n_new(self) -> int:
        """Trailing groups of new layers, which ``freeze`` leaves trainable: the head, and a dense graft's
        decoder before it."""
        return 2 if len(self.groups) > 2 and self.groups[-2].name == "decoder" else 1

    def group_of(self, name: str) -> int | None:
        """Index of the group whose rules name ``name`` (a parameter or module path), ``None`` if none do."""
        hits = _match(self.spec, canonical_path(name, self.wrapped) if self.adapted else name)
        return hits[0] if hits else None

    def table(self, lrs: Sequence[float] | None = None) -> str:
        """The plan as a table: group, modules, parameters, learning rate (if given), frozen or not."""
        rows = [["group", "modules", "parameters", "lr", "state"]]
        for i, group in enumerate(self.groups):
            lr = f"{lrs[i]:.3g}" if lrs is not None else "-"
            rows.append([group.name, group.modules, f"{group.n_params:,}", lr, group.state])
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = [
            "  ".join(
                cell.ljust(w) if i != 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in rows
        ]
        lines.append(f"split: {self.spec.method}")
        if self.locked:
            lines.append(f"peft adapters: {len(self.locked)} base tensors locked (never trained), in no group")
        if self.unassigned:
            shown = ", ".join(self.unassigned[:8]) + (" ..." if len(self.unassigned) > 8 else "")
            lines.append(f"unassigned (put in '{self.spec.head}'): {shown}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ---------------------------------------------------------------------------------------------- the head


def _is_grafted(model: nn.Module) -> bool:
    return isinstance(getattr(model, "head", None), nn.Module) and hasattr(getattr(model, "body", None), "model")


def _head_names(model: nn.Module) -> tuple[tuple[str, ...], Trace | None]:
    """Module names forming the head, and the dry run that found them (if one ran)."""
    if _is_grafted(model):  # a dense graft's decoder is new too: kept out of the body's split
        return ("head", "decoder") if _has_decoder(model) else ("head",), None
    try:
        run = trace(model, infer_input_size(model))
        return find_classifier(model, run).names, run
    except Exception:  # not an image classifier (text models, ...): use the last child with parameters
        pass
    children = [name for name, child in model.named_children() if next(child.parameters(), None) is not None]
    return tuple(children[-1:]), None


# ------------------------------------------------------------------------------------ automatic split


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


def _partition(units: list[_Unit], n_body: int) -> list[list[_Unit]]:
    """Consecutive groups balanced by parameter count, snapping each cut to the shallowest boundary
    within 25% of a group's share of the ideal position."""
    n_body = max(1, min(n_body, len(units)))
    sizes = [u.size for u in units]
    total = sum(sizes) or 1
    cumulative = list(accumulate(sizes))
    cuts, previous = [], -1
    for k in range(1, n_body):
        target, window = k * total / n_body, 0.25 * total / n_body
        choices = range(previous + 1, len(units) - (n_body - k))
        scored = [
            (
                abs(cumulative[j] - target) > window,
                _boundary_depth(units[j], units[j + 1]),
                abs(cumulative[j] - target),
                j,
            )
            for j in choices
        ]
        previous = min(scored)[3]
        cuts.append(previous)
    bounds = [-1, *cuts, len(units) - 1]
    return [units[bounds[i] + 1 : bounds[i + 1] + 1] for i in range(len(bounds) - 1)]


# -------------------------------------------------------------------------------------------- the spec


def _body_scope(model: nn.Module) -> tuple[nn.Module, str]:
    """The module to split and the prefix of its names (a grafted model's source network)."""
    if _is_grafted(model):
        return model.body.model, "body.model"
    return model, ""


def _under(name: str, modules: Sequence[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _body_sizes(model: nn.Module, head: tuple[str, ...]) -> tuple[list[str], dict[str, int]]:
    """Body parameter names (in order) and the parameter count of every module prefix of the body."""
    names, sizes = [], defaultdict(int)
    for name, param in model.named_parameters():
        if _under(name, head):
            continue
        names.append(name)
        for prefix in name_prefixes(name):
            sizes[prefix] += param.numel()
    return names, dict(sizes)


def _top_modules(members: Sequence[str], scope: Sequence[str]) -> list[str]:
    """The outermost names whose parameters all belong to ``members`` (a subset of ``scope``)."""
    inside, total = Counter(), Counter()
    chosen = set(members)
    for name in scope:
        for prefix in name_prefixes(name):
            total[prefix] += 1
            if name in chosen:
                inside[prefix] += 1
    tops: list[str] = []
    for name in members:
        top = next(p for p in name_prefixes(name) if inside[p] == total[p])
        if not tops or tops[-1] != top:
            tops.append(top)
    return tops


def _strip(names: Sequence[str], prefix: str) -> list[str]:
    """Names without ``prefix``, unless that would read like a top-level ``head``/``body``."""
    out = []
    for name in names:
        short = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        out.append(name if short != name and short.split(".")[0] in ("head", "body") else short)
    return out


def _spec_from_assignment(
    model: nn.Module, assignment: Sequence[Sequence[str]], head: tuple[str, ...], method: str, strip: str
) -> GroupSpec:
    """Rules naming exactly the assigned parameters: the outermost modules each group holds whole."""
    scope = [name for name, _ in model.named_parameters()]
    groups = []
    for i, members in enumerate(assignment):
        tops = _top_modules(members, scope)
        groups.append((f"body{i}", tuple(compress_names(tops))))
    if not head:  # nothing looks like a head: the last body group takes its role
        return GroupSpec(tuple(groups), groups[-1][0], method, strip)
    groups.append(("head", head))
    return GroupSpec(tuple(groups), "head", method, strip)


def _family_spec(model: nn.Module, head: tuple[str, ...], body: list[str], strip: str) -> GroupSpec | None:
    source = model.body.model if _is_grafted(model) else model
    family = find_family(source)
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
    return _spec_from_assignment(
        model, assignment, head, f"family {family.name} (fastai's split points, by name)", strip
    )


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


def _auto_spec(
    model: nn.Module,
    n: int | str,
    head: tuple[str, ...],
    body: list[str],
    sizes: dict[str, int],
    strip: str,
    run: Trace | None,
) -> GroupSpec:
    root, prefix = _body_scope(model)
    splitter = _Splitter(root, sizes)
    units, idle = _forward_order(splitter.units(root, prefix), run)
    if idle:  # auxiliary heads are output layers: train them with the head
        head = (*head, *(m for unit in idle for m, _ in unit.members))
        body = [name for name in body if not _under(name, head)]
    if n == "blocks":
        parts = [[u] for u in units]
    else:
        n_body = int(n) - 1 if head else int(n)  # a headless network: its last group takes the head's role
        parts = _partition(splitter.refine(units, n_body), n_body)
    part_of = {member: i for i, part in enumerate(parts) for unit in part for member, _ in unit.members}
    assignment: list[list[str]] = [[] for _ in parts]
    for name in body:
        owner = next(part_of[p] for p in name_prefixes(name) if p in part_of)
        assignment[owner].append(name)
    how = "one group per block/stage" if n == "blocks" else f"{len(parts)} body groups balanced by parameter count"
    return _spec_from_assignment(model, assignment, head, f"auto: {how}", strip)


def _prefixed(pattern: str, strip: str) -> str:
    """``pattern`` moved under ``strip`` (a source-network name used on a grafted model)."""
    if pattern.startswith("re:"):
        return "re:" + re.escape(strip) + "(?:" + pattern[3:] + ")"
    return strip + pattern


def _rule_patterns(
    model: nn.Module, items: str | nn.Module | Sequence[str | nn.Module], group: str, names: list[str], strip: str
) -> tuple[str, ...]:
    """Full-name patterns for one user group; modules become their names, source names get ``strip``."""
    modules = {id(m): n for n, m in model.named_modules()}
    patterns = []
    for item in [items] if isinstance(items, (str, nn.Module)) else items:
        if isinstance(item, nn.Module):
            if id(item) not in modules:
                raise ValueError(
                    f"layer_groups: a {type(item).__name__} given for group {group!r} is not part of the model."
                )
            patterns.append(modules[id(item)])
            continue
        if not isinstance(item, str):
            raise TypeError(f"layer_groups: group {group!r} holds a {type(item).__name__}; give patterns or modules.")
        for candidate in (item, _prefixed(item, strip)) if strip else (item,):
            if any(compile_pattern(candidate).fullmatch(name) for name in names):
                patterns.append(candidate)
                break
        else:
            examples = ", ".join(_strip(list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))[:6], strip))
            raise ValueError(
                f"layer_groups: pattern {item!r} of group {group!r} names no parameter of "
                f"{type(model).__name__}. Module names look like: {examples}."
            )
    return tuple(patterns)


def _user_spec(model: nn.Module, rules: RuleSpec, head: tuple[str, ...], strip: str) -> GroupSpec:
    items = rules.items() if isinstance(rules, Mapping) else ((f"group{i}", r) for i, r in enumerate(rules))
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    groups = [(str(group), _rule_patterns(model, items_, str(group), names, strip)) for group, items_ in items]
    if not groups:
        raise ValueError("layer_groups: rules= is empty; give at least one group of name patterns.")
    spec = GroupSpec(tuple(groups), groups[-1][0], "rules", strip)
    head_params = [name for name in names if _under(name, head)]
    if head and not all(_match(spec, name) for name in head_params):
        if "head" in dict(groups):
            raise ValueError("layer_groups: a rule group is called 'head' but does not hold the model's head.")
        spec = GroupSpec((*spec.groups, ("head", head)), "head", "rules", strip)
    return spec


def _match(spec: GroupSpec, name: str) -> list[int]:
    return [
        i for i, (_, patterns) in enumerate(spec.groups) if any(compile_pattern(p).fullmatch(name) for p in patterns)
    ]


def _make_spec(model: nn.Module, n: int | str | None, rules: RuleSpec | None) -> GroupSpec:
    model = base_model(model)  # a PeftModel splits as the model inside it (names are matched without the prefix)
    spec = _split(model, n, rules)
    if _is_grafted(model) and _has_decoder(model) and rules is None:
        # a dense graft: the backbone's groups, then the decoder, then the classifier
        *body, (name, patterns) = spec.groups
        head = (name, tuple(p for p in patterns if p != "decoder"))
        spec = GroupSpec((*body, ("decoder", ("decoder",)), head), spec.head, f"{spec.method}; decoder", spec.strip)
    return spec


def _has_decoder(model: nn.Module) -> bool:
    return isinstance(getattr(model, "decoder", None), nn.Module)


def _split(model: nn.Module, n: int | str | None, rules: RuleSpec | None) -> GroupSpec:
    head, run = _head_names(model)
    strip = "body.model." if _is_grafted(model) else ""
    if rules is not None:
        return _user_spec(model, rules, head, strip)
    body, sizes = _body_sizes(model, head)
    if n is None:
        family = _family_spec(model, head, body, strip)
        if family is not None:
            return family
    count = 3 if n is None else n
    if count != "blocks" and (not isinstance(count, int) or count < 2):
        raise ValueError(f"layer_groups: n must be an int >= 2 (body groups + head) or 'blocks', got {n!r}.")
    return _auto_spec(model, count, head, body, sizes, strip, run)


def resolve(model: nn.Module, spec: GroupSpec) -> LayerGroups:
    """Resolve ``spec`` against ``model``'s current parameters.

    Raises:
        ValueError: a parameter (or a tensor shared under two names) named by two groups.
    """
    members: list[list[tuple[str, nn.Parameter]]] = [[] for _ in spec.groups]
    head_index = [name for name, _ in spec.groups].index(spec.head)
    owner: dict[int, tuple[int, str]] = {}
    unassigned, locked = [], []
    view = adapter_view(model)
    shown_members: list[list[str]] = [[] for _ in spec.groups]  # adapted: what the rules name, base included
    for name, param in model.named_parameters(remove_duplicate=False):
        hits = _match(spec, view.canonical[name] if view else name)
        if view:
            shown_members[hits[0] if hits else head_index].append(view.canonical[name])
            if _locked(view, name, hits[0] if hits else head_index, head_index):
                locked.append(name)
                continue
        if len(hits) > 1:
            both = " and ".join(repr(spec.groups[i][0]) for i in hits)
            raise ValueError(f"layer groups: parameter {name!r} is named by groups {both}; make the rules exclusive.")
        index = hits[0] if hits else head_index
        if id(param) in owner:
            first_index, first_name = owner[id(param)]
            if first_index != index:
                raise ValueError(
                    f"layer groups: {first_name!r} and {name!r} are one shared tensor but fall in groups "
                    f"{spec.groups[first_index][0]!r} and {spec.groups[index][0]!r}; put both names in one group."
                )
            continue
        owner[id(param)] = (index, name)
        if not hits:
            unassigned.append(name)
        members[index].append((name, param))
    scope = [name for group in members for name, _ in group]
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    scope.sort(key=lambda n: order.get(n, 0))
    if view:
        scope = [n for group in shown_members for n in group]
    groups = []
    for (gname, _), group, listed in zip(spec.groups, members, shown_members, strict=True):
        names = [n for n, _ in group]
        listed = listed if view else names
        shown = collapse_names(_strip(_top_modules(listed, scope), spec.strip)) if listed else "(empty)"
        groups.append(LayerGroup(gname, tuple(names), tuple(p for _, p in group), shown))
    return LayerGroups(tuple(groups), tuple(unassigned), spec, tuple(locked), is_peft_wrapper(model), view is not None)


def _locked(view: AdapterView, name: str, index: int, head_index: int) -> bool:
    """On an adapted model only adapters, saved copies and the head train; the rest is the frozen base."""
    role = view.roles[name]
    return role == "base" or (role == "plain" and index != head_index)


def group_state(model: nn.Module) -> GroupSpec | None:
    """The split stored on ``model`` by :func:`layer_groups`, if any."""
    spec = getattr(model, _SPEC_ATTR, None)
    return spec if isinstance(spec, GroupSpec) else None


def layer_groups(model: nn.Module, *, n: int | str | None = None, rules: RuleSpec | None = None) -> LayerGroups:
    """Split ``model`` into layer groups (or read the split stored on it) and resolve them now.

    The first call stores the split on the model; later calls without ``n``/``rules`` reuse it, resolved
    against the current parameters, so surgery is reflected and groups never shift under a running
    optimizer. Pass ``n`` or ``rules`` to split again.

    Args:
        model: any ``nn.Module`` (a grafted model splits its source network; its head is the last group).
        n: number of groups including the head (default: the family rule, else 3), or ``"blocks"`` for one
            body group per block/stage.
        rules: user rules, ``{"group name": patterns or modules, ...}`` in order (or a list of lists).
            The model's head gets its own last group unless a rule names it; unnamed parameters go to the
            head group and are listed in ``.unassigned``.

    Returns:
        :class:`LayerGroups`; ``print()`` it for the plan.

    Raises:
        ValueError: a bad ``n``, a pattern that names nothing, or a parameter named by two groups.

    Example:
        >>> groups = layer_groups(torchvision.models.resnet50())
        >>> [g.modules for g in groups]
        ['conv1–layer2', 'layer3, layer4', 'fc']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"layer_groups: expected an nn.Module, got {type(model).__name__}.")
    spec = group_state(model)
    if spec is None or n is not None or rules is not None:
        spec = _make_spec(model, n, rules)
        object.__setattr__(model, _SPEC_ATTR, spec)
    groups = resolve(model, spec)
    if len(groups) == 1:
        warnings.warn(
            "layer_groups: the model has a single group, so discriminative rates and freezing do nothing.", stacklevel=2
        )
    return groups
