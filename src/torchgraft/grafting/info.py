"""What a graft did, as data: :class:`GraftInfo`, and its JSON record (what ``model.json`` stores).

The record holds everything :func:`~torchgraft.grafting.replay.replay_graft` needs to rebuild the grafted
module structure on a fresh copy of the source network without a dry run (the cut point, the removed and
pruned modules, the head and its options, a dense graft's taps and decoder) and everything ``describe``
prints; ``GraftInfo.from_record(info.record()) == info``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Any

from torchgraft.grafting.channels import InputAdaptation
from torchgraft.grafting.taps import Tap

__all__ = ["RECORD_VERSION", "GraftInfo", "GraftRecordError"]

RECORD_VERSION = 1
_NOT_RECORDED = ("pretrained", "new")  # parameter names: the rebuilt model gives them again
REPLAYABLE_HEADS = ("linear", "mlp")


class GraftRecordError(ValueError):
    """A graft record that cannot be read or replayed (another version, a head or cut given as code)."""


@dataclass
class GraftInfo:
    """What :func:`graft` (or :func:`~torchgraft.graft_dense`) did, as data (``describe`` prints it).

    Attributes:
        source: class name of the source network.
        method: ``"classifier"`` (replaced in place, model pooling kept), ``"timm"`` (timm's
            ``reset_classifier``), ``"unpooled"`` (cut before the model's pooling), ``"cut"`` (user cut),
            ``"backbone"`` (a network without classifier, whole), ``"callable"``, ``"timm-features"``,
            ``"dense"`` (:func:`~torchgraft.graft_dense`'s decoder), ``"resegment"`` (new classifiers),
            ``"detector"`` (:func:`~torchgraft.graft_detector`'s pyramid and detector) or ``"redetect"`` (a
            torchvision detector's new class layers).
        cut_at: module whose output the body returns, if the body is cut there.
        classifier: names of the classifier layers that were found (and removed or replaced).
        removed: every module removed from the source network (classifier, aux heads, pruned layers).
        removed_params: number of pretrained parameters removed with them.
        input_size: the per-sample input shape used for the dry runs.
        body_output: per-sample shape of the body's output (``None`` for structured outputs).
        layout: ``"nc"``, ``"nchw"``, ``"nhwc"`` or ``"nlc"`` (``None`` for structured outputs).
        pool: how the head pools the features (``"model"``: the body already pooled them; a dense graft: its
            decoder).
        in_chans: the input-convolution adaptation, if any.
        pretrained: names (in the grafted model) of parameters that came from the source network.
        new: names of the new head's parameters.
        notes: anything else worth knowing (an auxiliary head kept, ...).
        n_out: outputs of the new head (classes per pixel for a dense graft).
        options: the head's options as given (``head``, ``hidden``, ``dropout``, ``batch_norm``,
            ``y_range``; a dense graft: ``decoder``, ``widths``; a new-classifier graft: ``aux``, ``backbone``).
        dropped: auxiliary heads removed from the source network (set to ``None``).
        pruned: modules after the cut replaced by a :class:`~torchgraft.grafting.body.PrunedModule`.
        body_method: the method the body calls (``"forward"``, timm's ``"forward_features"``).
        select_main: whether the body returns the main tensor of a structured output.
        taps: a dense graft's multi-scale features, finest first.
    """

    source: str
    method: str
    cut_at: str | None
    classifier: tuple[str, ...]
    removed: tuple[str, ...]
    removed_params: int
    input_size: tuple[int, ...]
    body_output: tuple[int, ...] | None
    layout: str | None
    pool: str
    in_chans: InputAdaptation | None
    pretrained: tuple[str, ...] = ()
    new: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    n_out: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    pruned: tuple[str, ...] = ()
    body_method: str = "forward"
    select_main: bool = True
    taps: tuple[Tap, ...] = ()

    def replay_problem(self) -> str | None:
        """Why this graft cannot be rebuilt from its record (a cut or head given as code), else ``None``."""
        if self.method == "callable":
            return "the body was cut by your own callable (cut=<function>)"
        head = self.options.get("head")
        if self.method not in ("dense", "resegment", "detector", "redetect") and head not in REPLAYABLE_HEADS:
            return f"the head is your own {head or 'module'} (head=<module or callable>)"
        return None

    def record(self) -> dict[str, Any]:
        """The graft as JSON values (lists for tuples, dicts for the input adaptation and taps).

        Example:
            >>> graft(resnet18(), 10).info.record()["classifier"]
            ['fc']
        """
        values = {f.name: _json(getattr(self, f.name)) for f in fields(self) if f.name not in _NOT_RECORDED}
        return {"record": RECORD_VERSION, **values}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> GraftInfo:
        """The :class:`GraftInfo` that :meth:`record` wrote (``pretrained``/``new`` empty until replayed).

        Raises:
            GraftRecordError: another record version, or fields this version does not know.
        """
        values = dict(record)
        version = values.pop("record", None)
        if version != RECORD_VERSION:
            raise GraftRecordError(
                f"graft record version {version!r}; this torchgraft reads version {RECORD_VERSION}. Export the "
                f"model again with this torchgraft."
            )
        known = {f.name for f in fields(cls)} - set(_NOT_RECORDED)
        unknown = sorted(set(values) - known)
        if unknown:
            raise GraftRecordError(f"graft record: unknown fields {unknown}; this torchgraft knows {sorted(known)}.")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in values]
        if missing:
            raise GraftRecordError(f"graft record: fields {missing} are missing; export the model again.")
        for name in ("classifier", "removed", "notes", "dropped", "pruned"):
            values[name] = tuple(values.get(name, ()))
        for name in ("input_size", "body_output"):
            values[name] = tuple(values[name]) if values.get(name) is not None else values.get(name)
        if values.get("in_chans") is not None:
            values["in_chans"] = InputAdaptation(**values["in_chans"])
        values["taps"] = tuple(Tap(**tap) for tap in values.get("taps", ()))
        values["options"] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.get("options", {}).items()}
        return cls(**values)


def _json(value: Any) -> Any:
    """``value`` as JSON values: tuples as lists, dataclasses as dicts."""
    if is_dataclass(value) and not isinstance(value, type):
        return _json(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    return value
