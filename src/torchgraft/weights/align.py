"""Align the keys of a checkpoint with the keys of a model, by name and by structure.

Works on names and shapes only (no tensors), in stages; each stage sees only what earlier stages left:

1. **rules** — the user's include/exclude patterns, prefix stripping, ``(regex, replacement)`` renames and
   prefix adding, applied in that order; then exact names;
2. **prefix** — names equal once wrapper prefixes are removed (``module.`` from DataParallel/DDP,
   ``_orig_mod.`` from torch.compile, ``model.`` from Lightning, the target's own, such as a grafted
   model's ``body.model.``, and the first segment most checkpoint keys carry when removing it makes most
   names equal, such as ``classifier.`` on a backbone saved beside a ``projector.`` head, whose own keys keep
   their names); names decide here, so a tensor of another shape is paired (and reported as mismatched by
   ``load_weights``) instead of leaving its neighbours unmatched;
3. **suffix** — the longest dotted name suffix shared with exactly one model key (``backbone.layer1.0.conv1.weight``
   -> ``body.model.layer1.0.conv1.weight``); the suffix must name a module, not just ``1.weight``;
4. **structure** — between keys already matched (anchors, in order), runs of remaining keys whose
   sequences of (tensor name, shape) are identical — ``weight (64, 3, 7, 7), bias (64,), ...`` — are paired
   in order: the same architecture saved by another codebase under other module names. A shorter run also
   pairs where it fits the longer one with some tensors left out — a truncated copy (timm ``features_only``,
   an encoder cut from a classifier) loading the full network's checkpoint, or the reverse: a tensor is paired
   when every such fit puts it at one place, or when exactly one of its places lies in the module its
   siblings went to; otherwise it is ambiguous. This needs the
   checkpoint's own key order: safetensors files sort their keys, so files written by
   :func:`torchgraft.save_weights` record the order, and others are put in natural order (``blocks.2``
   before ``blocks.10``), which a mismatch in tensor names then guards.

A key with more than one equally good partner is never guessed: it is reported as ambiguous.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from torchgraft.tune.names import compile_pattern

__all__ = ["WRAPPER_PREFIXES", "Alignment", "Match", "align_keys"]

Shape = tuple[int, ...]
WRAPPER_PREFIXES: tuple[str, ...] = ("module", "_orig_mod", "model")


@dataclass(frozen=True)
class Match:
    """One checkpoint key paired with one model key.

    Attributes:
        source: the key in the checkpoint (as saved).
        target: the key in the model.
        how: ``"exact"``, ``"rule"`` (after the user's rules), ``"prefix"``, ``"suffix"`` or ``"structure"``.
    """

    source: str
    target: str
    how: str


@dataclass
class Alignment:
    """The result of :func:`align_keys`.

    Attributes:
        matches: pairs, in model order.
        unexpected: checkpoint keys matched to nothing.
        missing: model keys matched to nothing.
        ambiguous: checkpoint key -> the model keys it could equally be (none of them was loaded).
        excluded: checkpoint keys dropped by include/exclude rules.
    """

    matches: list[Match] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)


def _apply_rules(
    names: Sequence[str],
    *,
    include: Sequence[str],
    exclude: Sequence[str],
    strip_prefix: str | None,
    renames: Sequence[tuple[str, str]],
    add_prefix: str | None,
) -> tuple[dict[str, str], list[str]]:
    """renamed key -> original key, and the excluded originals."""
    keep_patterns = [compile_pattern(p) for p in include]
    drop_patterns = [compile_pattern(p) for p in exclude]
    compiled = []
    for pattern, replacement in renames:
        try:
            compiled.append((re.compile(pattern), replacement))
        except re.error as error:
            raise ValueError(f"load_weights: rename pattern {pattern!r} is not a valid regex ({error}).") from None
    renamed: dict[str, str] = {}
    excluded = []
    for original in names:
        if (keep_patterns and not any(p.fullmatch(original) for p in keep_patterns)) or any(
            p.fullmatch(original) for p in drop_patterns
        ):
            excluded.append(original)
            continue
        name = original
        if strip_prefix and name.startswith(strip_prefix):
            name = name[len(strip_prefix) :]
        for regex, replacement in compiled:
            name = regex.sub(replacement, name)
        name = f"{add_prefix}{name}" if add_prefix else name
        if name in renamed:
            raise ValueError(
                f"load_weights: the rules map both {renamed[name]!r} and {original!r} to {name!r}; make them distinct."
            )
        renamed[name] = original
    return renamed, excluded


def _normalize(name: str, prefixes: Sequence[str]) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if name.startswith(prefix + "."):
                name, changed = name[len(prefix) + 1 :], True
    return name


def _unique_pairs(proposals: dict[str, list[str]], how: str, alignment: Alignment) -> dict[str, Match]:
    """Keep source -> target proposals where both sides are unique; report the rest as ambiguous."""
    claims: dict[str, list[str]] = defaultdict(list)
    for source, targets in proposals.items():
        if len(targets) == 1:
            claims[targets[0]].append(source)
        else:
            alignment.ambiguous[source] = sorted(targets)
    matched = {}
    for target, sources in claims.items():
        if len(sources) == 1:
            matched[target] = Match(sources[0], target, how)
        else:
            for source in sources:
                alignment.ambiguous[source] = [target]
    return matched


def _strip_first(name: str, first: str) -> str | None:
    """``name`` without its first dotted segment (and the wrappers under it) when that segment is ``first``."""
    return _normalize(name[len(first) + 1 :], WRAPPER_PREFIXES) if name.startswith(first + ".") else None


def _extra_prefix(plain: Mapping[str, str], index: Mapping[str, list[str]]) -> str | None:
    """The first dotted segment most checkpoint keys carry (``classifier`` of ``classifier.conv1.weight``)
    and the model's keys lack, kept when removing it pairs most names: a copy of the network saved inside
    another module, possibly beside keys of its own (a ``projector.`` head)."""
    firsts = Counter(name.split(".", 1)[0] for name in plain.values() if "." in name)
    if not firsts:
        return None
    first = firsts.most_common(1)[0][0]
    if first in WRAPPER_PREFIXES:
        return None
    before = sum(name in index for name in plain.values())
    after = before + sum(name not in index and _strip_first(name, first) in index for name in plain.values())
    return first if after > max(before, len(plain) // 2) else None


def _by_prefix(
    sources: list[str], targets: list[str], target_prefixes: Sequence[str], alignment: Alignment
) -> dict[str, Match]:
    index: dict[str, list[str]] = defaultdict(list)
    for target in targets:
        index[_normalize(target, (*target_prefixes, *WRAPPER_PREFIXES))].append(target)
    plain = {source: _normalize(source, WRAPPER_PREFIXES) for source in sources}
    first = _extra_prefix(plain, index)
    proposals = {}
    for source, name in plain.items():
        # the name as it is first; the extra prefix is removed only where that pairs it (once, at the start)
        key = name if name in index or first is None else _strip_first(name, first)
        if key in index:
            proposals[source] = index[key]
    return _unique_pairs(proposals, "prefix", alignment)


def _suffixes(name: str) -> list[str]:
    """Dotted suffixes that name a module (not only indices), longest first."""
    parts = name.split(".")
    out = []
    for start in range(len(parts) - 1):
        tail = parts[start:]
        if any(not p.isdigit() for p in tail[:-1]):
            out.append(".".join(tail))
    return out


def _by_suffix(sources: list[str], targets: list[str], alignment: Alignment) -> dict[str, Match]:
    index: dict[str, list[str]] = defaultdict(list)
    for target in targets:
        for suffix in _suffixes(target):
            index[suffix].append(target)
    proposals = {}
    for source in sources:
        suffix = next((s for s in _suffixes(source) if s in index), None)
        if suffix is not None:
            proposals[source] = index[suffix]
    return _unique_pairs(proposals, "suffix", alignment)


def _increasing_anchors(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest chain of anchors increasing in both source and target order."""
    pairs = sorted(pairs)
    tails: list[int] = []
    tail_at: list[int] = []
    parent = [-1] * len(pairs)
    for i, (_, t) in enumerate(pairs):
        k = bisect_left(tails, t)
        if k == len(tails):
            tails.append(t)
            tail_at.append(i)
        else:
            tails[k], tail_at[k] = t, i
        parent[i] = tail_at[k - 1] if k else -1
    chain, i = [], tail_at[-1] if tail_at else -1
    while i >= 0:
        chain.append(pairs[i])
        i = parent[i]
    return chain[::-1]


def _leaf(name: str) -> str:
    return name.rpartition(".")[2]


def _by_structure(
    source_order: list[str],
    target_order: list[str],
    matched: dict[str, Match],
    source_shapes: Mapping[str, Shape],
    target_shapes: Mapping[str, Shape],
    alignment: Alignment,
) -> dict[str, Match]:
    source_index = {name: i for i, name in enumerate(source_order)}
    target_index = {name: i for i, name in enumerate(target_order)}
    anchors = _increasing_anchors([(source_index[m.source], target_index[m.target]) for m in matched.values()])
    used_sources = {m.source for m in matched.values()}
    bounds = [(-1, -1), *anchors, (len(source_order), len(target_order))]
    found = {}
    for (s0, t0), (s1, t1) in pairwise(bounds):
        left = [n for n in source_order[s0 + 1 : s1] if n not in used_sources]
        right = [n for n in target_order[t0 + 1 : t1] if n not in matched]
        # same tensor names (weight, bias, running_mean: BatchNorm's four have one shape) and same shapes
        signature_left = [(_leaf(n), source_shapes[n]) for n in left]
        signature_right = [(_leaf(n), target_shapes[n]) for n in right]
        source_short = len(left) <= len(right)  # else the model is the shorter: a features-only copy
        short, long = (left, right) if source_short else (right, left)
        placements = _placements(
            *((signature_left, signature_right) if source_short else (signature_right, signature_left))
        )
        if placements is None:
            continue
        certain, unsure = _place(short, long, placements)
        for i, j in certain.items():
            source, target = (short[i], long[j]) if source_short else (long[j], short[i])
            found[target] = Match(source, target, "structure")
        for i, options in unsure.items():
            if source_short:
                alignment.ambiguous[short[i]] = [long[j] for j in options]
            else:
                for j in options:
                    alignment.ambiguous.setdefault(long[j], []).append(short[i])
    return found


_MAX_CELLS = 4_000_000  # segments up to this size (len(short) * (skipped + 1)) are searched


def _placements(short: Sequence[object], long: Sequence[object]) -> list[list[int]] | None:
    """For each item of ``short``, every position of ``long`` it takes in some in-order placement of all of
    ``short`` at equal items of ``long`` (the rest of ``long`` left out); ``None`` when there is no placement."""
    n, skip = len(short), len(long) - len(short)
    if n == 0 or skip < 0 or n * (skip + 1) > _MAX_CELLS:
        return None
    if skip == 0:  # the same length: one placement, item by item, or none
        return [[i] for i in range(n)] if list(short) == list(long) else None
    # after[i][k]: short[i:] fits into long[i + k:]; before[i][k]: short[:i] fits into long[:i + k]
    after = [[False] * (skip + 2) for _ in range(n + 1)]
    after[n] = [True] * (skip + 1) + [False]
    for i in range(n - 1, -1, -1):
        for k in range(skip, -1, -1):
            after[i][k] = after[i][k + 1] or (short[i] == long[i + k] and after[i + 1][k])
    if not after[0][0]:
        return None
    before = [[True] * (skip + 1)] + [[False] * (skip + 1) for _ in range(n)]
    for i in range(1, n + 1):
        for k in range(skip + 1):
            before[i][k] = (k > 0 and before[i][k - 1]) or (short[i - 1] == long[i - 1 + k] and before[i - 1][k])
    return [
        [i + k for k in range(skip + 1) if short[i] == long[i + k] and before[i][k] and after[i + 1][k]]
        for i in range(n)
    ]


def _module(name: str) -> str:
    return name.rpartition(".")[0]


def _place(
    short: list[str], long: list[str], placements: list[list[int]]
) -> tuple[dict[int, int], dict[int, list[int]]]:
    """Certain pairs (one possible position, or the one position in the module the item's siblings went to)
    and the ambiguous rest (item -> possible positions)."""
    certain = {i: options[0] for i, options in enumerate(placements) if len(options) == 1}
    siblings: dict[str, set[str]] = defaultdict(set)
    for i, j in certain.items():
        siblings[_module(short[i])].add(_module(long[j]))
    ambiguous = {}
    for i, options in enumerate(placements):
        if len(options) == 1:
            continue
        modules = siblings.get(_module(short[i]), set())
        fitting = [j for j in options if len(modules) == 1 and _module(long[j]) in modules]
        if len(fitting) == 1:
            certain[i] = fitting[0]
        else:
            ambiguous[i] = options
    return certain, ambiguous


def align_keys(
    source: Mapping[str, Shape],
    target: Mapping[str, Shape],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    strip_prefix: str | None = None,
    renames: Sequence[tuple[str, str]] = (),
    add_prefix: str | None = None,
    target_prefixes: Sequence[str] = (),
    structure: bool = True,
) -> Alignment:
    """Pair checkpoint keys with model keys (see the module docstring for the stages).

    Args:
        source: checkpoint key -> shape, in checkpoint order.
        target: model key -> shape, in model order.
        include: name patterns (:mod:`torchgraft.tune.names`) a checkpoint key must match to be used.
        exclude: name patterns of checkpoint keys to ignore.
        strip_prefix: removed from the start of checkpoint keys.
        renames: ``(regex, replacement)`` pairs applied to checkpoint keys in order (``re.sub``).
        add_prefix: added to the start of checkpoint keys.
        target_prefixes: wrapper prefixes of the model's own names, ignored by the prefix stage.
        structure: run the structure stage.

    Returns:
        An :class:`Alignment`. Shapes are not checked here except by the structure stage.

    Example:
        >>> align_keys({"module.fc.weight": (2, 3)}, {"fc.weight": (2, 3)}).matches
        [Match(source='module.fc.weight', target='fc.weight', how='prefix')]
    """
    alignment = Alignment()
    renamed, alignment.excluded = _apply_rules(
        list(source),
        include=include,
        exclude=exclude,
        strip_prefix=strip_prefix,
        renames=renames,
        add_prefix=add_prefix,
    )
    # stages work on the renamed keys; matches name the keys as saved
    matched = {
        name: Match(name, name, "exact" if name == renamed[name] else "rule") for name in renamed if name in target
    }
    for stage in ("prefix", "suffix"):
        used = {m.source for m in matched.values()}
        left = [name for name in renamed if name not in used and name not in alignment.ambiguous]
        right = [name for name in target if name not in matched]
        if stage == "prefix":
            matched.update(_by_prefix(left, right, target_prefixes, alignment))
        else:
            matched.update(_by_suffix(left, right, alignment))
    if structure:
        shapes = {name: source[original] for name, original in renamed.items()}
        matched.update(_by_structure(list(renamed), list(target), matched, shapes, target, alignment))
    used = {m.source for m in matched.values()}
    alignment.ambiguous = {renamed[s]: c for s, c in alignment.ambiguous.items() if s not in used}
    alignment.matches = [
        Match(renamed[m.source], m.target, m.how) for name in target if (m := matched.get(name)) is not None
    ]
    alignment.missing = [name for name in target if name not in matched]
    alignment.unexpected = [
        original for name, original in renamed.items() if name not in used and original not in alignment.ambiguous
    ]
    return alignment
