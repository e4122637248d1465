"""Pretrained-weights guard: notice when pretrained tensors change by anything other than training.

The classic silent bug: a model is grafted, then "the new layers" are initialised with a loop over
``model.modules()`` — which also walks the backbone and re-initialises every pretrained layer. The model
still trains, just badly, and nothing says why.

The guard records, for every pretrained parameter, its in-place version counter and a content fingerprint.
A global ``torch.optim`` step hook (installed once, costing a dictionary lookup per parameter and step)
marks which changes came from optimizer steps. :func:`check_pretrained` then names every pretrained
parameter that was modified outside a step — by an init function, ``copy_``, a manual ``mul_`` — and
raises. Training never trips it; unchanged tensors are never recomputed (their version counter is
enough), so a check costs microseconds per parameter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.weak import WeakIdKeyDictionary

from torchgraft.grafting.adapters import adapter_view

__all__ = [
    "GuardReport",
    "PretrainedGuard",
    "PretrainedWeightsChangedError",
    "accept_pretrained",
    "check_pretrained",
    "fingerprint",
]

_SAMPLES = 4096
_GUARDED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # parameter -> _Record
_HOOKS: list[Any] = []


class PretrainedWeightsChangedError(RuntimeError):
    """Pretrained tensors were changed outside an optimizer step; the message names them and the fix."""


def fingerprint(tensor: torch.Tensor) -> tuple[float, tuple[float, ...]] | None:
    """A cheap content signature: the float64 sum and up to 4096 evenly strided values. ``None`` on meta."""
    if tensor.device.type == "meta":
        return None
    local = getattr(tensor, "to_local", None)  # an FSDP2 shard (DTensor): each rank signs its own shard
    flat = (local() if callable(local) else tensor).detach().reshape(-1)
    stride = max(1, flat.numel() // _SAMPLES)
    sample = flat[::stride][:_SAMPLES].to("cpu", torch.float64)
    return float(flat.sum(dtype=torch.float64)), tuple(sample.tolist())


def _same(a: tuple[float, tuple[float, ...]] | None, b: tuple[float, tuple[float, ...]] | None) -> bool:
    if a is None or b is None:
        return a is b
    scale = max(1.0, abs(a[0]))
    return a[1] == b[1] and abs(a[0] - b[0]) <= 1e-6 * scale


@dataclass
class _Record:
    version: int
    fingerprint: tuple[float, tuple[float, ...]] | None
    param_id: int
    stepped: bool = False
    changed_outside: bool = False


@dataclass(frozen=True)
class GuardReport:
    """Result of a guard check: pretrained parameter names that were changed, replaced or removed."""

    changed: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    checked: int = 0

    @property
    def ok(self) -> bool:
        """True when no pretrained tensor was changed outside an optimizer step."""
        return not self.changed


def _pre_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            record = _GUARDED.get(param)
            if record is not None and param._version != record.version and not record.changed_outside:
                unchanged = not record.stepped and _same(fingerprint(param), record.fingerprint)
                record.changed_outside = not unchanged


def _post_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            record = _GUARDED.get(param)
            if record is not None and param._version != record.version:
                record.version = param._version
                record.stepped = True


def _install_hooks() -> None:
    if not _HOOKS:
        _HOOKS.append(register_optimizer_step_pre_hook(_pre_step))
        _HOOKS.append(register_optimizer_step_post_hook(_post_step))


@dataclass
class PretrainedGuard:
    """Fingerprints of a model's pretrained parameters, taken when it was grafted.

    Create it with :meth:`track`; check with :meth:`check` (or :func:`check_pretrained` on a grafted
    model). Names are relative to the model passed to :meth:`track`.
    """

    records: dict[str, _Record] = field(default_factory=dict)

    @classmethod
    def track(cls, model: nn.Module, names: Iterable[str]) -> PretrainedGuard:
        """Start guarding parameters ``names`` of ``model``.

        Example:
            >>> guard = PretrainedGuard.track(model, [n for n, _ in model.named_parameters()])
        """
        _install_hooks()
        params = dict(model.named_parameters(remove_duplicate=False))
        guard = cls()
        for name in names:
            param = params[name]
            record = _Record(version=param._version, fingerprint=fingerprint(param), param_id=id(param))
            guard.records[name] = record
            _GUARDED[param] = record
        return guard

    def check(self, model: nn.Module) -> GuardReport:
        """Compare the current parameters of ``model`` with the records; never raises."""
        params = _by_plain_name(model)
        changed, replaced, removed = [], [], []
        for name, record in self.records.items():
            param = params.get(name)
            if param is None:
                removed.append(name)
            elif id(param) != record.param_id:
                if record.stepped or not _same(fingerprint(param), record.fingerprint):
                    replaced.append(name)
            elif record.changed_outside or (param._version != record.version and not self._unchanged(param, record)):
                changed.append(name)
        return GuardReport(tuple(changed), tuple(replaced), tuple(removed), checked=len(self.records))

    @staticmethod
    def _unchanged(param: torch.Tensor, record: _Record) -> bool:
        if record.stepped or not _same(fingerprint(param), record.fingerprint):
            return False
        record.version = param._version
        return True

    def accept(self, model: nn.Module) -> None:
        """Take the current tensors as the pretrained reference (after a deliberate change, e.g. loading a
        checkpoint)."""
        plain = _by_plain_name(model)
        current = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        kept = [(n, current[id(plain[n])]) for n in self.records if n in plain]
        fresh = PretrainedGuard.track(model, [now for _, now in kept])
        self.records = {n: fresh.records[now] for n, now in kept}


def _by_plain_name(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters by the names the model had before peft adapted it (adapter tensors left out)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    view = adapter_view(model)
    if view is None:
        return params
    return {view.canonical[n]: p for n, p in params.items() if view.roles[n] in ("base", "plain")}


def _guard_of(model: nn.Module) -> PretrainedGuard:
    guard = getattr(model, "guard", None)
    if not isinstance(guard, PretrainedGuard):
        raise TypeError(
            f"guard: {type(model).__name__} has no pretrained-weights guard; it is set by torchgraft.graft(). "
            f"For another model use PretrainedGuard.track(model, names).check(model)."
        )
    return guard


def check_pretrained(model: nn.Module, *, limit: int = 12) -> GuardReport:
    """Raise if pretrained tensors of a grafted ``model`` were changed other than by an optimizer step.

    Raises:
        PretrainedWeightsChangedError: naming the changed parameters (up to ``limit``, then a count).

    Example:
        >>> model = graft(resnet50(weights="DEFAULT"), 10)
        >>> for m in model.modules(): init_weights(m)   # bug: also walks the backbone
        >>> check_pretrained(model)
        PretrainedWeightsChangedError: guard: 161 pretrained tensors were changed outside ...
    """
    report = _guard_of(model).check(model)
    if report.changed:
        shown = ", ".join(report.changed[:limit])
        more = f" and {len(report.changed) - limit} more" if len(report.changed) > limit else ""
        raise PretrainedWeightsChangedError(
            f"guard: {len(report.changed)} of {report.checked} pretrained tensors were changed outside an "
            f"optimizer step: {shown}{more}. This is what an init loop over model.modules() does to the "
            f"backbone; initialise only the new layers (model.head.apply(...)). If the change was "
            f"deliberate (you loaded other weights), call torchgraft.accept_pretrained(model)."
        )
    return report


def accept_pretrained(model: nn.Module) -> None:
    """Re-fingerprint a grafted model's pretrained tensors after a deliberate change."""
    _guard_of(model).accept(model)
