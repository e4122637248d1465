"""Graft a new head onto any pretrained network: find the classifier, cut the body, build the head.

``graft`` never re-initialises or copies a pretrained tensor: the source network becomes the body (it is
modified in place — pass ``copy.deepcopy(model)`` to keep the original), only the new head is created,
and a guard fingerprints the pretrained tensors so that an accidental re-initialisation is caught.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchgraft.grafting.body import Body, PrunedModule, rebuild_body, replace_module
from torchgraft.grafting.channels import InputAdaptation, adapt_input_channels
from torchgraft.grafting.classifier import (
    ClassifierInfo,
    ClassifierNotFoundError,
    candidate_cuts,
    find_aux_heads,
    find_classifier,
    find_unpooled,
    is_timm_model,
    suggest_names,
)
from torchgraft.grafting.dryrun import Example, Trace, default_example, infer_input_size, trace
from torchgraft.grafting.grafted import Grafted
from torchgraft.grafting.guard import PretrainedGuard
from torchgraft.grafting.heads import POOLS, infer_layout, make_head
from torchgraft.grafting.info import GraftInfo, GraftRecordError

__all__ = ["Cut", "cut_body", "graft", "rebuild_grafted"]

HeadSpec = str | nn.Module | Callable[[torch.Size], nn.Module]
CutSpec = int | str | Callable[[nn.Module], nn.Module] | None


def _param_count(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def _named_child_cut(model: nn.Module, index: int) -> str:
    children = [name for name, _ in model.named_children()]
    position = index if index > 0 else len(children) + index
    if not 0 < position <= len(children):
        raise ValueError(
            f"graft: cut={index} is out of range for {type(model).__name__}, which has {len(children)} "
            f"children ({', '.join(children)}); the body keeps children[:cut]."
        )
    return children[position - 1]


Probe = tuple[int, ...] | Example
"""What a dry run feeds the network: a per-sample input size, or a real example batch (text models)."""


def _trace(model: nn.Module, probe: Probe, *, train: bool = False) -> Trace:
    if isinstance(probe, tuple):
        return trace(model, probe, train=train)
    return trace(model, example=probe, train=train)


def _train_trace(model: nn.Module, probe: Probe) -> Trace | None:
    """A training-mode dry run, at ``probe`` or a larger standard size (auxiliary heads may need more than
    the classifier path: Inception v3's needs 299 px); ``None`` if none runs."""
    probes = [probe]
    if isinstance(probe, tuple) and len(probe) == 3:
        probes += [(probe[0], side, side) for side in (299, 384) if max(probe[1:]) < side]
    for candidate in probes:
        try:
            return _trace(model, candidate, train=True)
        except Exception:  # try the next size
            continue
    return None


def _remove_aux_heads(model: nn.Module, size: Probe, eval_trace: Trace) -> tuple[list[str], list[str]]:
    """Drop train-only heads (GoogLeNet ``aux1``/``aux2``, Inception ``AuxLogits``) if the forward allows."""
    removed, notes = [], []
    train_trace = _train_trace(model, size)
    if train_trace is None:
        return [], [
            f"the network does not run in training mode at {size} or larger standard sizes, so "
            f"auxiliary heads could not be looked for; pass input_size=."
        ]
    retry = train_trace.input_shape if isinstance(size, tuple) else size
    for name in find_aux_heads(eval_trace, train_trace):
        old = replace_module(model, name, None)
        try:
            _trace(model, retry, train=True)
            removed.append(name)
        except Exception as error:  # the forward needs it: keep it
            replace_module(model, name, old)
            notes.append(f"auxiliary head '{name}' kept: the forward needs it in training mode ({error}).")
    return removed, notes


def _prune_unused(body: Body, size: Probe, source_ran: set[str]) -> list[str]:
    """Replace every top-most module that ran in the source network but runs in neither mode in the body
    (the layers after the cut) by a :class:`PrunedModule`. Modules that never ran as modules are kept:
    their parameters may be used functionally (``MultiheadAttention.out_proj``)."""
    ran = _trace(body, size).names() | _trace(body, size, train=True).names()
    ran = {name.removeprefix("model.") for name in ran}
    pruned: list[str] = []
    for name, module in list(body.model.named_modules()):
        if not name or name in ran or name not in source_ran or any(name.startswith(p + ".") for p in pruned):
            continue
        if next(module.parameters(), None) is not None or next(module.buffers(), None) is not None:
            replace_module(body.model, name, PrunedModule(name))
            pruned.append(name)
    return pruned


def _check_pool(pool: str | None) -> None:
    if pool is not None and pool != "model" and pool not in POOLS:
        raise ValueError(
            f"graft: unknown pool={pool!r}. Choose 'model' (keep the network's pooling) or one of {POOLS}."
        )


@dataclass
class Cut:
    """How a source network was cut: the body, the method (see :class:`GraftInfo`), the classifier found,
    the auxiliary heads dropped, the modules pruned after the cut, and notes."""

    body: Body
    method: str
    found: ClassifierInfo | None
    dropped: list[str]
    notes: list[str]
    pruned: list[str] = field(default_factory=list)

    @property
    def removed(self) -> list[str]:
        """Every module removed: the classifier (unless it was pruned with the rest), aux heads, pruned."""
        replaced = self.found is not None and self.method in ("classifier", "timm", "timm-features")
        return [*(self.found.names if replaced else ()), *self.dropped, *self.pruned]  # type: ignore[union-attr]


def _build_body(model: nn.Module, cut: CutSpec, pool: str | None, size: Probe, eval_trace: Trace) -> Cut:
    """Cut ``model`` (the pruning after the cut is :func:`cut_body`'s)."""
    if cut is not None:
        name = _named_child_cut(model, cut) if isinstance(cut, int) else cut
        if not isinstance(name, str) or name not in dict(model.named_modules()):
            raise ValueError(
                f"graft: cut={cut!r} is not a module of {type(model).__name__}. Close names: "
                f"{suggest_names(model, str(cut))}."
            )
        return _exit_body(model, name, "cut", eval_trace, size, None)
    try:
        info = find_classifier(model, eval_trace)
    except ClassifierNotFoundError as error:
        if pool in (None, "model"):
            raise ClassifierNotFoundError(
                f"{error} A backbone without a classifier (a Hugging Face AutoModel, a features network) "
                f"grafts whole with pool='token', 'mean', 'avg', 'max' or 'concat'."
            ) from None
        return Cut(Body(model), "backbone", None, [], [])  # the whole network; its main output is the features
    if pool in (None, "model"):
        return _replace_classifier(model, info, eval_trace, size)
    if is_timm_model(model):
        model.reset_classifier(0)
        dropped, notes = _remove_aux_heads(model, size, eval_trace)
        return Cut(Body(model, method="forward_features"), "timm-features", info, dropped, notes)
    unpooled = find_unpooled(eval_trace, info.names[0])
    return _exit_body(model, unpooled.name, "unpooled", eval_trace, size, info)


def _exit_body(
    model: nn.Module, name: str, method: str, eval_trace: Trace, size: Probe, info: ClassifierInfo | None
) -> Cut:
    calls = len(eval_trace.by_name.get(name, []))
    if calls != 1:
        raise ValueError(
            f"graft: cut={name!r} runs {calls} times in {type(model).__name__}.forward, so it does not mark "
            f"one point of the network. Cut at a module that runs once (candidates: "
            f"{', '.join(candidate_cuts(model, eval_trace))}) or pass a callable."
        )
    dropped, notes = _remove_aux_heads(model, size, eval_trace)
    # the automatic cut wants the feature tensor; a user cut keeps a tuple (multi-scale backbones) whole
    # but unwraps a mapping (a Hugging Face ModelOutput) to its main tensor
    select_main = method == "unpooled" or isinstance(eval_trace.by_name[name][0].output, dict)
    return Cut(Body(model, exit_at=name, select_main=select_main), method, info, dropped, notes)


def _replace_classifier(model: nn.Module, info: ClassifierInfo, eval_trace: Trace, size: Probe) -> Cut:
    if info.method == "timm":
        model.reset_classifier(0)
        method = "timm"
    else:
        for name in info.names:
            replace_module(model, name, nn.Identity())
        method = "classifier"
    dropped, notes = _remove_aux_heads(model, size, eval_trace)
    return Cut(Body(model), method, info, dropped, notes)


def _head(head: HeadSpec, info: GraftInfo, shape: Any, body: nn.Module) -> nn.Module:
    """The new head for ``info`` (outputs, layout, pooling, options) on body outputs of ``shape``; a built
    head takes the body's device and dtype."""
    if isinstance(head, nn.Module):
        return head
    if not isinstance(head, str):
        return head(shape)
    options = {k: info.options.get(k) for k in ("hidden", "dropout", "batch_norm", "y_range")}
    new_head = make_head(head, info.n_out, shape, info.layout, info.pool, options)
    reference = next(body.parameters(), None)
    return new_head if reference is None else new_head.to(device=reference.device, dtype=reference.dtype)


def _grafted(body: Body, head: nn.Module, info: GraftInfo, *, guard: bool) -> Grafted:
    """The model, with the names of its pretrained and new parameters recorded (and fingerprinted)."""
    grafted = Grafted(body, head, info, None)
    info.pretrained = tuple(f"body.{n}" for n, _ in body.named_parameters())
    info.new = tuple(f"head.{n}" for n, _ in head.named_parameters())
    if guard:
        grafted.guard = PretrainedGuard.track(grafted, info.pretrained)
    return grafted


def graft(
    model: nn.Module,
    n_out: int,
    *,
    cut: CutSpec = None,
    head: HeadSpec = "linear",
    pool: str | None = None,
    in_chans: int | None = None,
    input_size: Sequence[int] | None = None,
    example: Example | None = None,
    hidden: Sequence[int] | None = None,
    dropout: float | None = None,
    batch_norm: bool | None = None,
    y_range: tuple[float, float] | None = None,
    guard: bool = True,
) -> Grafted:
    """Cut ``model`` into a pretrained body and graft a new head with ``n_out`` outputs.

    Args:
        model: a pretrained network (torchvision, timm, Hugging Face or your own). It becomes the body and
            is modified in place; no pretrained tensor is copied or re-initialised.
        n_out: number of outputs of the new head (classes, or regression targets).
        cut: where the body ends. ``None`` finds the classifier by a dry run; an ``int`` keeps
            ``children[:cut]`` (as fastai); a dotted module name (``"features.18"``) ends the body with that
            module's output; a callable ``cut(model) -> body`` builds the body itself.
        head: ``"linear"`` (default), ``"mlp"`` (fastai's concat-pool head), an ``nn.Module``, or a callable
            taking the body's output shape (with batch dimension) and returning a module.
        pool: ``None``/``"model"`` keeps the network's own pooling (and pre-logits layers); ``"avg"``
            (``"mean"``), ``"max"``, ``"concat"`` or ``"token"`` (the first token) cut before it and let the
            head pool (with a ``cut``, how the head pools the body's feature map). Token features pool over
            the ``attention_mask`` passed to the model. A backbone without a classifier (``AutoModel``)
            grafts whole with one of these.
        in_chans: adapt the first convolution to this many input channels (see
            :func:`torchgraft.adapt_input_channels`).
        input_size: per-sample input shape for the dry runs (default: from the model's metadata, else
            ``(C, 224, 224)``).
        example: a real example batch for the dry runs instead — a tensor, or a dict of keyword arguments
            (``{"input_ids": ..., "attention_mask": ...}``). Hugging Face text models get token ids from
            their config by default (:func:`~torchgraft.grafting.dryrun.default_example`).
        hidden: hidden layer widths of the ``"mlp"`` head (default ``(512,)``).
        dropout: dropout of the head (``"mlp"``: ``dropout / 2`` before the first layer; default 0.5 for
            ``"mlp"``, none for ``"linear"``).
        batch_norm: BatchNorm layers in the ``"mlp"`` head (default ``True``).
        y_range: squash outputs into ``(low, high)`` with a scaled sigmoid (regression).
        guard: fingerprint the pretrained tensors (see :func:`torchgraft.check_pretrained`).

    Returns:
        A :class:`Grafted` model with ``.body``, ``.head`` and ``.info``.

    Raises:
        ClassifierNotFoundError: no classifier found and no ``cut`` given (the message lists candidates).
        ValueError: a bad ``cut``, ``head`` or ``pool``.

    Example:
        >>> model = graft(torchvision.models.mobilenet_v2(weights="DEFAULT"), 10)
        >>> model.info.classifier
        ('classifier.1',)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"graft: expected an nn.Module, got {type(model).__name__}.")
    if not isinstance(n_out, int) or n_out < 1:
        raise ValueError(f"graft: n_out must be a positive int, got {n_out!r}.")
    _check_pool(pool)
    source, before = type(model).__name__, _param_count(model)
    if example is None and input_size is None:
        example = default_example(model)
    size = tuple(input_size) if input_size is not None else infer_input_size(model)
    adaptation, size = _adapt_channels(model, in_chans, size, example)
    probe: Probe = size if example is None else example
    cut_done = cut_body(model, cut, pool, probe)
    body, found = cut_done.body, cut_done.found
    body_trace = _trace(body, probe)
    shape = body_trace.output
    head_pool = pool or ("model" if cut is None else ("concat" if head == "mlp" else "avg"))
    options = {"hidden": hidden, "dropout": dropout, "batch_norm": batch_norm, "y_range": y_range}
    info = GraftInfo(
        source=source,
        method=cut_done.method,
        cut_at=body.exit_at,
        classifier=found.names if found else (),
        removed=tuple(cut_done.removed),
        removed_params=before + adaptation_delta(adaptation, model) - _param_count(body),
        input_size=size if example is None else body_trace.input_shape,
        body_output=tuple(shape[1:]) if isinstance(shape, torch.Size) else None,
        layout=_layout(body_trace, found, model),
        pool=head_pool,
        in_chans=adaptation,
        notes=tuple(cut_done.notes),
        n_out=n_out,
        options={"head": _head_kind(head), **_recorded(options)},
        dropped=tuple(cut_done.dropped),
        pruned=tuple(cut_done.pruned),
        body_method=body.method,
        select_main=body.select_main,
    )
    return _grafted(body, _head(head, info, shape, body), info, guard=guard)


def _head_kind(head: HeadSpec) -> str:
    """What the record says of ``head``: its name, or ``"module"`` / ``"callable"`` (not replayable)."""
    if isinstance(head, str):
        return head
    return "module" if isinstance(head, nn.Module) else "callable"


def _recorded(options: dict[str, Any]) -> dict[str, Any]:
    """The head options as given, sequences as tuples of numbers (what a JSON record gives back)."""
    return {k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in options.items()}


def rebuild_grafted(model: nn.Module, info: GraftInfo) -> Grafted:
    """The :func:`graft` that ``info`` records, rebuilt on ``model`` (a fresh source network of the same
    architecture, any weights) without a dry run: the same modules under the same names, the head's weights
    fresh (load the trained ones with ``load_state_dict``); no guard.

    Raises:
        GraftRecordError: ``info`` records a head or cut given as code.
    """
    problem = info.replay_problem()
    if problem is not None:
        raise GraftRecordError(f"rebuild_grafted: {problem}, which a record cannot rebuild.")
    body = rebuild_body(model, info)
    shape = torch.Size((1, *info.body_output)) if info.body_output is not None else None
    return _grafted(body, _head(info.options["head"], info, shape, body), info, guard=False)


def _adapt_channels(
    model: nn.Module, in_chans: int | None, size: tuple[int, ...], example: Example | None
) -> tuple[InputAdaptation | None, tuple[int, ...]]:
    """Adapt the input convolution to ``in_chans`` (if asked); returns what was done and the new input size."""
    if in_chans is None:
        return None, size
    if example is not None:
        takes = "a tensor" if isinstance(example, torch.Tensor) else ", ".join(example)
        raise ValueError(
            f"graft: in_chans= adapts an image network's first convolution; {type(model).__name__} takes {takes}."
        )
    return adapt_input_channels(model, in_chans, input_size=size), (in_chans, *size[1:])


def cut_body(model: nn.Module, cut: CutSpec, pool: str | None, probe: Probe) -> Cut:
    """Cut ``model`` (by a callable ``cut``, or from a dry run at ``probe``) and prune what runs after the cut."""
    if callable(cut) and not isinstance(cut, nn.Module):
        return Cut(Body(cut(model), select_main=False), "callable", None, [], [])
    eval_trace = _trace(model, probe)
    done = _build_body(model, cut, pool, probe, eval_trace)
    if done.body.exit_at is not None or done.body.method != "forward":
        done.pruned = _prune_unused(done.body, probe, eval_trace.names())
    return done


def adaptation_delta(adaptation: InputAdaptation | None, model: nn.Module) -> int:
    """Parameters added (negative: removed) by adapting the input convolution."""
    if adaptation is None or adaptation.rule == "unchanged":
        return 0
    conv = model.get_submodule(adaptation.module)
    per_channel = conv.weight.numel() // conv.in_channels
    return (adaptation.to_channels - adaptation.from_channels) * per_channel


def _layout(body_trace: Trace, info: ClassifierInfo | None, model: nn.Module) -> str | None:
    shape = body_trace.output
    if not isinstance(shape, torch.Size):
        return None
    fmt = getattr(model, "output_fmt", None)
    return infer_layout(shape, channels=info.in_features if info else None, fmt=str(fmt) if fmt else None)
