"""Layer groups the user writes: ``rules={"group": patterns or modules, ...}`` (or a list of lists).

Patterns are :mod:`torchgraft.tune.names` globs or ``re:`` regexes over full parameter names; on a grafted
model the source network's names work too (they are moved under ``body.model.`` when the spec is made).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import nn

from torchgraft.tune.group_types import GroupSpec
from torchgraft.tune.names import compile_pattern, shown_names, under

__all__ = ["RuleSpec", "user_spec"]

RuleSpec = Mapping[str, "str | nn.Module | Sequence[str | nn.Module]"] | Sequence[Sequence["str | nn.Module"]]


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
            examples = ", ".join(shown_names(list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))[:6], strip))
            raise ValueError(
                f"layer_groups: pattern {item!r} of group {group!r} names no parameter of "
                f"{type(model).__name__}. Module names look like: {examples}."
            )
    return tuple(patterns)


def user_spec(model: nn.Module, rules: RuleSpec, head: tuple[str, ...], strip: str) -> GroupSpec:
    """The split that ``rules`` (as given to :func:`torchgraft.layer_groups`) describe; the model's head
    (``head``) gets its own last group unless a rule names all of it.

    Raises:
        ValueError: empty rules, a pattern naming no parameter, a module not in the model, or a rule group
            called ``head`` that does not hold the head.
        TypeError: a group holding something other than patterns or modules.
    """
    items = rules.items() if isinstance(rules, Mapping) else ((f"group{i}", r) for i, r in enumerate(rules))
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    groups = [(str(group), _rule_patterns(model, items_, str(group), names, strip)) for group, items_ in items]
    if not groups:
        raise ValueError("layer_groups: rules= is empty; give at least one group of name patterns.")
    spec = GroupSpec(tuple(groups), groups[-1][0], "rules", strip)
    head_params = [name for name in names if under(name, head)]
    if head and not all(spec.match(name) for name in head_params):
        if "head" in dict(groups):
            raise ValueError("layer_groups: a rule group is called 'head' but does not hold the model's head.")
        spec = GroupSpec((*spec.groups, ("head", head)), "head", "rules", strip)
    return spec
