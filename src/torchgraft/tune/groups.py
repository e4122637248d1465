"""Layer groups: the network split into consecutive parameter groups, early body to head.

A split is a list of name rules (:mod:`torchgraft.tune.names` patterns) stored on the model, so it is written
once and *resolved from the current parameters every time it is used*: replace a layer and its new
parameters land in the group whose rule names it; a parameter no rule names goes to the head group and is
reported; a parameter named by two groups is an error.

Where the rules come from, in order of precedence:

1. ``rules=`` given by the user (:mod:`torchgraft.tune.user_rules`);
2. a detector's parts (:mod:`torchgraft.tune.detection`: the backbone's own split, neck, proposal network,
   box heads, class layers);
3. a family rule (fastai's split points for ResNet, DenseNet, VGG-BN, AlexNet, SqueezeNet, written as module
   names: :mod:`torchgraft.tune.family_rules`) when ``n`` is not given;
4. timm's own ``group_matcher()`` on a timm model (:mod:`torchgraft.tune.family_rules`);
5. the automatic split of any other network (:mod:`torchgraft.tune.autosplit`), ``n - 1`` body groups
   balanced by parameter count (``n`` body groups for a headless network).

The head (:mod:`torchgraft.tune.discovery`) is always its own, last group.
"""

from __future__ import annotations

import warnings

from torch import nn

from torchgraft.grafting.adapters import AdapterView, adapter_view, base_model, is_peft_wrapper
from torchgraft.tune.autosplit import auto_spec
from torchgraft.tune.detection import detector_spec
from torchgraft.tune.discovery import body_sizes, has_decoder, head_names, is_grafted
from torchgraft.tune.family_rules import family_spec, timm_spec
from torchgraft.tune.group_types import GroupSpec, LayerGroup, LayerGroups
from torchgraft.tune.names import collapse_names, shown_names, top_modules
from torchgraft.tune.user_rules import RuleSpec, user_spec

__all__ = ["group_state", "layer_groups"]

_SPEC_ATTR = "_torchgraft_groups"


def _make_spec(model: nn.Module, n: int | str | None, rules: RuleSpec | None) -> GroupSpec:
    model = base_model(model)  # a PeftModel splits as the model inside it (names are matched without the prefix)
    detector = detector_spec(model, n) if rules is None else None
    if detector is not None:
        return detector
    spec = _split(model, n, rules)
    if is_grafted(model) and has_decoder(model) and rules is None:
        # a dense graft: the backbone's groups, then the decoder, then the classifier
        *body, (name, patterns) = spec.groups
        head = (name, tuple(p for p in patterns if p != "decoder"))
        spec = GroupSpec((*body, ("decoder", ("decoder",)), head), spec.head, f"{spec.method}; decoder", spec.strip)
    return spec


def _split(model: nn.Module, n: int | str | None, rules: RuleSpec | None) -> GroupSpec:
    head, run = head_names(model)
    strip = "body.model." if is_grafted(model) else ""
    if rules is not None:
        return user_spec(model, rules, head, strip)
    body, sizes = body_sizes(model, head)
    if n is None:
        family = family_spec(model, head, body, strip)
        if family is not None:
            return family
    count = 3 if n is None else n
    if count != "blocks" and (not isinstance(count, int) or count < 2):
        raise ValueError(f"layer_groups: n must be an int >= 2 (body groups + head) or 'blocks', got {n!r}.")
    return timm_spec(model, count, head, body, strip) or auto_spec(model, count, head, body, sizes, strip, run)


def _resolve(model: nn.Module, spec: GroupSpec) -> LayerGroups:
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
        hits = spec.match(view.canonical[name] if view else name)
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
        shown = collapse_names(shown_names(top_modules(listed, scope), spec.strip)) if listed else "(empty)"
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
    groups = _resolve(model, spec)
    if len(groups) == 1:
        warnings.warn(
            "layer_groups: the model has a single group, so discriminative rates and freezing do nothing.", stacklevel=2
        )
    return groups
