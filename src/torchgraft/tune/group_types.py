"""What a split into layer groups is: the stored rules (:class:`GroupSpec`) and the groups resolved from a
model's current parameters (:class:`LayerGroup`, :class:`LayerGroups`), with their plan table (the rates and
state of each group, or per stage of a fine-tune which groups train)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import nn

from torchgraft.grafting.adapters import canonical_path
from torchgraft.tune.names import compile_pattern, compress_names, top_modules
from torchgraft.tune.rates import LRSpec, group_lrs

__all__ = ["GroupSpec", "LayerGroup", "LayerGroups", "StageRates", "spec_from_assignment"]

StageRates = Sequence[tuple[str, Sequence[float | None]]]  # per stage: its name, each group's rate (None: frozen)


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
        new: trailing groups of new layers that ``freeze`` leaves trainable, where the split knows (a
            detector: its head, or all its detection groups when grafted); ``None``: the head (and a dense
            graft's decoder).
    """

    groups: tuple[tuple[str, tuple[str, ...]], ...]
    head: str
    method: str
    strip: str = ""
    new: int | None = None

    def match(self, name: str) -> list[int]:
        """Indices of the groups whose patterns name ``name`` (a parameter or module path)."""
        return [
            i
            for i, (_, patterns) in enumerate(self.groups)
            if any(compile_pattern(p).fullmatch(name) for p in patterns)
        ]


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
        decoder before it, or what the split says (a grafted detector's neck, proposal network and heads)."""
        if self.spec.new is not None:
            return self.spec.new
        return 2 if len(self.groups) > 2 and self.groups[-2].name == "decoder" else 1

    def group_of(self, name: str) -> int | None:
        """Index of the group whose rules name ``name`` (a parameter or module path), ``None`` if none do."""
        hits = self.spec.match(canonical_path(name, self.wrapped) if self.adapted else name)
        return hits[0] if hits else None

    def table(self, lr: LRSpec | None = None, *, stages: StageRates | None = None) -> str:
        """The plan as a table: group, modules, parameters, then what trains.

        Args:
            lr: the rates of an optimizer built with this ``lr`` (:func:`~torchgraft.tune.rates.group_lrs`: a
                float, ``slice(lo, hi)``, one per group): an ``lr`` column beside each group's ``state`` now
                (``requires_grad``: ``trainable``, ``frozen``, ...). Without it there is no ``lr`` column.
            stages: ``(stage name, each group's rate or None)`` per stage of a fine-tune
                (:func:`torchgraft.train.stages.stage_rates`): one column per stage with the group's rate, or
                ``frozen`` where the stage leaves it frozen, instead of the state now.

        Example:
            >>> print(layer_groups(model).table(lr=slice(1e-5, 1e-3)))
            group  modules         parameters  lr      state
            body0  conv1–layer2     1,444,928  1e-05   frozen
            ...
        """
        names = [g.name for g in self.groups]
        rows = [["group", "modules", "parameters"]]
        rows += [[g.name, g.modules, f"{g.n_params:,}"] for g in self.groups]
        if stages is not None:
            for stage, rates in stages:
                if len(rates) != len(self.groups):
                    raise ValueError(
                        f"table: stage {stage!r} has {len(rates)} rates but the model has {len(self.groups)} layer "
                        f"groups ({', '.join(names)}); give one per group (None: frozen)."
                    )
                rows[0].append(stage)
                for row, rate in zip(rows[1:], rates, strict=True):
                    row.append("frozen" if rate is None else f"{rate:.3g}")
        else:
            if lr is not None:
                rows[0].append("lr")
                for row, rate in zip(rows[1:], group_lrs(lr, len(self.groups), names=names), strict=True):
                    row.append(f"{rate:.3g}")
            rows[0].append("state")
            for row, group in zip(rows[1:], self.groups, strict=True):
                row.append(group.state)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
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


def spec_from_assignment(
    scope: Sequence[str], assignment: Sequence[Sequence[str]], head: tuple[str, ...], method: str, strip: str
) -> GroupSpec:
    """Rules naming exactly the assigned parameters: the outermost modules each body group holds whole.

    Args:
        scope: every parameter name of the model, in order.
        assignment: the body's parameter names, one list per body group (early body first).
        head: module names of the head, its own last group (none: the last body group takes its role).
        method: where the split came from, shown in the plan.
        strip: the prefix left out when names are shown (see :class:`GroupSpec`).
    """
    groups = []
    for i, members in enumerate(assignment):
        groups.append((f"body{i}", tuple(compress_names(top_modules(members, scope)))))
    if not head:
        return GroupSpec(tuple(groups), groups[-1][0], method, strip)
    groups.append(("head", head))
    return GroupSpec(tuple(groups), "head", method, strip)
