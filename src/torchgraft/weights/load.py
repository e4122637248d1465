"""``load_weights``: load a checkpoint into a model — aligned, shape-checked, and reported key by key.

Unlike ``load_state_dict(strict=False)``, which silently loads nothing when every name differs, every key
is accounted for: loaded (and how it was paired), adapted, skipped for its shape, missing, unexpected or
ambiguous. A tensor never lands in a parameter of another shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchgraft.grafting.channels import adapt_conv_weight, find_input_conv
from torchgraft.grafting.guard import accept_pretrained
from torchgraft.grafting.loaded import record_loaded
from torchgraft.weights.align import Match, align_keys
from torchgraft.weights.checkpoint import read_checkpoint

__all__ = ["LoadError", "LoadReport", "load_weights"]

Shape = tuple[int, ...]


class LoadError(ValueError):
    """``strict=True`` and the checkpoint does not fit the model; the message lists every problem."""


@dataclass
class LoadReport:
    """What :func:`load_weights` did, as data; ``print()`` it for a table.

    Attributes:
        source: where the weights came from (file, nesting, number of tensors).
        loaded: checkpoint key -> model key pairs that were loaded, with how they were paired.
        adapted: ``(checkpoint key, model key, what was done)`` for tensors loaded after adaptation.
        mismatched: ``(checkpoint key, model key, saved shape, model shape)`` skipped (the model keeps its
            own values, e.g. a new head's initialisation).
        missing: model keys nothing was loaded into.
        unexpected: checkpoint keys that fit nothing.
        ambiguous: checkpoint key -> the model keys it could equally be (not loaded: never guessed).
        excluded: checkpoint keys left out by include/exclude rules.
    """

    source: str
    loaded: list[Match] = field(default_factory=list)
    adapted: list[tuple[str, str, str]] = field(default_factory=list)
    mismatched: list[tuple[str, str, Shape, Shape]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)

    @property
    def renamed(self) -> list[tuple[str, str]]:
        """``(checkpoint key, model key)`` of loaded tensors whose names differ."""
        return [(m.source, m.target) for m in self.loaded if m.source != m.target]

    @property
    def ok(self) -> bool:
        """Every model key loaded and every checkpoint key used (excluded keys aside)."""
        return not (self.missing or self.unexpected or self.mismatched or self.ambiguous)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-serialisable)."""
        return {
            "source": self.source,
            "loaded": [{"from": m.source, "to": m.target, "how": m.how} for m in self.loaded],
            "adapted": [{"from": s, "to": t, "what": w} for s, t, w in self.adapted],
            "mismatched": [{"from": s, "to": t, "saved": list(a), "model": list(b)} for s, t, a, b in self.mismatched],
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "ambiguous": {k: list(v) for k, v in self.ambiguous.items()},
            "excluded": list(self.excluded),
        }

    def problems(self) -> list[str]:
        """Every problem, one line each (what ``strict=True`` raises with)."""
        lines = [f"missing in the checkpoint: {name}" for name in self.missing]
        lines += [f"unexpected in the checkpoint: {name}" for name in self.unexpected]
        lines += [f"shape mismatch: {s} {tuple(a)} -> {t} {tuple(b)}" for s, t, a, b in self.mismatched]
        lines += [f"ambiguous: {s} could be {', '.join(c)}" for s, c in self.ambiguous.items()]
        return lines

    def __str__(self) -> str:
        how: dict[str, int] = {}
        for match in self.loaded:
            how[match.how] = how.get(match.how, 0) + 1
        paired = ", ".join(f"{k} {v}" for k, v in how.items())
        rows = [
            ("loaded", len(self.loaded), paired, []),
            ("renamed", len(self.renamed), "", [f"{s} -> {t}" for s, t in self.renamed]),
            ("adapted", len(self.adapted), "", [f"{t}: {what}" for _, t, what in self.adapted]),
            (
                "mismatched",
                len(self.mismatched),
                "skipped, the model keeps its own values",
                [f"{t}: saved {tuple(a)}, model {tuple(b)}" for _, t, a, b in self.mismatched],
            ),
            ("missing", len(self.missing), "", self.missing),
            ("unexpected", len(self.unexpected), "", self.unexpected),
            (
                "ambiguous",
                len(self.ambiguous),
                "not loaded",
                [f"{s} -> {' | '.join(c)}" for s, c in self.ambiguous.items()],
            ),
            ("excluded", len(self.excluded), "by include/exclude", []),
        ]
        lines = [f"load_weights: {self.source}"]
        for label, count, note, items in rows:
            lines.append(f"  {label:<11}{count:>6}  {note}".rstrip())
            lines += [f"      {item}" for item in items[:6]]
            if len(items) > 6:
                lines.append(f"      ... and {len(items) - 6} more")
        return "\n".join(lines)


def _target_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state (each tensor once, in order) and alias -> canonical key for tied weights."""
    state = model.state_dict(keep_vars=True)
    canonical: dict[int, str] = {}
    tensors, aliases = {}, {}
    for name, tensor in state.items():
        if id(tensor) in canonical:
            aliases[name] = canonical[id(tensor)]
            continue
        canonical[id(tensor)] = name
        tensors[name] = tensor
    return tensors, aliases


def _source_tensors(tensors: dict[str, torch.Tensor], aliases: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Drop the second copy of tied tensors (a key the model knows as an alias of one already saved)."""
    return {k: v for k, v in tensors.items() if not (k in aliases and aliases[k] in tensors)}


class _Adapter:
    """Shape adaptations the user asked for: input channels of the first convolution, class subsets."""

    def __init__(self, model: nn.Module, *, in_chans: bool, class_subset: Sequence[int] | None) -> None:
        self.model, self.in_chans, self.class_subset = model, in_chans, class_subset
        self._input_conv: str | None = None

    def input_conv(self) -> str:
        if self._input_conv is None:
            name, _ = find_input_conv(self.model)
            self._input_conv = f"{name}.weight"
        return self._input_conv

    def __call__(self, target: str, saved: torch.Tensor, shape: Shape) -> tuple[torch.Tensor, str] | None:
        # (out, in, kh, kw): everything but the input channels must agree
        same_kernel = (
            saved.ndim == 4 and len(shape) == 4 and saved.shape[0] == shape[0] and saved.shape[2:] == shape[2:]
        )
        if self.in_chans and same_kernel and target == self.input_conv():
            rule = "summed" if shape[1] == 1 else "tiled and rescaled"
            return adapt_conv_weight(saved, shape[1]), f"input channels {saved.shape[1]} -> {shape[1]} ({rule})"
        subset = self.class_subset
        rows = subset is not None and saved.ndim in (1, 2) and len(subset) == shape[0]
        if rows and tuple(saved.shape[1:]) == tuple(shape[1:]) and max(subset) < saved.shape[0]:
            index = torch.as_tensor(list(subset), dtype=torch.long)
            return saved[index], f"rows of {len(subset)} of {saved.shape[0]} classes"
        return None


def load_weights(
    model: nn.Module,
    source: str | Path | Mapping[str, Any] | nn.Module,
    *,
    key: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    renames: Sequence[tuple[str, str]] = (),
    strip_prefix: str | None = None,
    add_prefix: str | None = None,
    structure: bool = True,
    in_chans: bool = False,
    class_subset: Sequence[int] | None = None,
    strict: bool = False,
    trust_pickle: bool = False,
) -> LoadReport:
    """Load weights from a checkpoint into ``model``, aligning names (see :mod:`torchgraft.weights.align`).

    Args:
        model: the model to load into (its tensors are updated in place; parameters keep their identity,
            so optimizers and hooks stay valid).
        source: a ``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors`` file, a (nested) state dict, or a module.
        key: the entry of a training checkpoint holding the weights (found automatically by default).
        include: name patterns; only checkpoint keys matching one are used (e.g. ``["backbone"]``).
        exclude: name patterns of checkpoint keys to ignore.
        renames: ``(regex, replacement)`` pairs applied to checkpoint keys in order.
        strip_prefix: removed from the start of checkpoint keys.
        add_prefix: added to the start of checkpoint keys.
        structure: pair keys by the structure of the network when names differ.
        in_chans: adapt the first convolution's input channels when they differ (as ``graft(in_chans=)``).
        class_subset: for a classifier whose class count differs, copy these rows (class indices of the
            checkpoint, in the model's class order); without it, the model's own head is kept.
        strict: raise :class:`LoadError` listing every problem instead of loading a partial fit.
        trust_pickle: read pickles that need code from the file (only for files you trust).

    Returns:
        A :class:`LoadReport`.

    Raises:
        LoadError: ``strict=True`` and something does not fit (nothing is loaded then).
        UnsafeCheckpointError: the file needs code to unpickle and ``trust_pickle`` is false.
        CheckpointReadError: the file is empty, damaged, or not a checkpoint (the message names the fix).

    Example:
        >>> report = load_weights(graft(resnet50(), 10), "resnet50_imagenet.pth")
        >>> print(report)  # head.1.weight mismatched: saved (1000, 2048), model (10, 2048) ...
    """
    checkpoint = read_checkpoint(source, key=key, trust_pickle=trust_pickle)
    target, target_aliases = _target_tensors(model)
    saved = _source_tensors(checkpoint.tensors, {**target_aliases, **checkpoint.aliases})
    alignment = align_keys(
        {k: tuple(v.shape) for k, v in saved.items()},
        {k: tuple(v.shape) for k, v in target.items()},
        include=include,
        exclude=exclude,
        strip_prefix=strip_prefix,
        renames=renames,
        add_prefix=add_prefix,
        target_prefixes=("body.model",) if hasattr(getattr(model, "body", None), "model") else (),
        structure=structure,
    )
    report = LoadReport(checkpoint.description, ambiguous=alignment.ambiguous, excluded=alignment.excluded)
    report.unexpected = alignment.unexpected
    adapt = _Adapter(model, in_chans=in_chans, class_subset=class_subset)
    updates: dict[str, torch.Tensor] = {}
    for match in alignment.matches:
        tensor, shape = saved[match.source], tuple(target[match.target].shape)
        if tuple(tensor.shape) == shape:
            updates[match.target] = tensor
            report.loaded.append(match)
        elif (adapted := adapt(match.target, tensor, shape)) is not None:
            updates[match.target] = adapted[0]
            report.adapted.append((match.source, match.target, adapted[1]))
            report.loaded.append(match)
        else:
            report.mismatched.append((match.source, match.target, tuple(tensor.shape), shape))
    saved_counters = any(k.endswith("num_batches_tracked") for k in saved)
    report.missing = [
        name
        for name in alignment.missing
        if saved_counters or not name.endswith("num_batches_tracked")  # old checkpoints predate the counter
    ]
    if strict and not report.ok:
        raise LoadError(
            f"load_weights: {len(report.problems())} problem(s) loading {report.source}:\n  "
            + "\n  ".join(report.problems())
        )
    with torch.no_grad():
        for name, tensor in updates.items():
            target[name].copy_(tensor)
    record_loaded(model, updates)
    if getattr(model, "guard", None) is not None:
        accept_pretrained(model)  # loaded on purpose: the new values are the pretrained reference now
    return report
