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

from torchgraft.grafting.adapters import active_module
from torchgraft.grafting.body import Body, PrunedModule, replace_module
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
from torchgraft.grafting.guard import PretrainedGuard
from torchgraft.grafting.heads import POOLS, Pool, infer_layout, linear_head, mlp_head, run_head

__all__ = ["GraftInfo", "Grafted", "graft"]

HeadSpec = str | nn.Module | Callable[[torch.Size], nn.Module]
CutSpec = int | str | Callable[[nn.Module], nn.Module] | None


@dataclass
class GraftInfo:
    """What :func:`graft` did, as data (``describe`` prints it).

    Attributes:
        source: class name of the source network.
        method: ``"classifier"`` (replaced in place, model pooling kept), ``"timm"`` (timm's
            ``reset_classifier``), ``"unpooled"`` (cut before the model's pooling), ``"cut"`` (user cut),
            ``"callable"`` or ``"timm-features"``.
        cut_at: module whose output the body returns, if the body is cut there.
        classifier: names of the classifier layers that were found (and removed).
        removed: every module removed from the source network (classifier, aux heads, pruned layers).
        removed_params: number of pretrained parameters removed with them.
        input_size: the per-sample input shape used for the dry runs.
        body_output: per-sample shape of the body's output (``None`` for structured outputs).
        layout: ``"nc"``, ``"nchw"``, ``"nhwc"`` or ``"nlc"`` (``None`` for structured outputs).
        pool: how the head pools the features (``"model"``: the body already pooled them).
        in_chans: the input-convolution adaptation, if any.
        pretrained: names (in the grafted model) of parameters that came from the source network.
        new: names of the new head's parameters.
        notes: anything else worth knowing (an auxiliary head kept, ...).
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


class Grafted(nn.Module):
    """A pretrained body and a new head: ``forward(x) = head(body(x))``.

    ``info`` (a :class:`GraftInfo`) records what was cut and which parameters are pretrained or new;
    ``guard`` holds the fingerprints of the pretrained tensors (see :func:`torchgraft.check_pretrained`).
    """

    def __init__(self, body: nn.Module, head: nn.Module, info: GraftInfo, guard: PretrainedGuard | None) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.info = info
        self.guard = guard

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``head(body(...))``, called like the source network (``model(x)``, ``model(**tokenizer(...))``);
        token features are pooled over the ``attention_mask`` when one is passed."""
        return run_head(self.head, self.body(*args, **kwargs), self._mask(kwargs))

    def _mask(self, kwargs: dict[str, Any]) -> torch.Tensor | None:
        return kwargs.get("attention_mask") if self.info.layout == "nlc" else None

    def features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """What the head's first trainable layer reads: the body's output, pooled (with the attention mask)
        when the head starts with a :class:`~torchgraft.grafting.heads.Pool` (the feature cache stores it)."""
        features = self.body(*args, **kwargs)
        head = active_module(self.head)  # the trained copy when peft wraps the head (modules_to_save)
        if isinstance(head, nn.Sequential) and len(head) > 1 and isinstance(head[0], Pool):
            return head[0](features, self._mask(kwargs))
        return features

    def pooled_head(self) -> nn.Module:
        """The head after its leading ``Pool`` (the same modules): it maps :meth:`features` to outputs."""
        head = active_module(self.head)
        if isinstance(head, nn.Sequential) and len(head) > 1 and isinstance(head[0], Pool):
            return head[1:]
        return head

    def pretrained_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs that came from the source network and are still in the model."""
        names = set(self.info.pretrained)
        return [(n, p) for n, p in self.named_parameters() if n in names]

    def new_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs that were not in the source network (the head, later additions)."""
        names = set(self.info.pretrained)
        return [(n, p) for n, p in self.named_parameters() if n not in names]


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


def _build_body(
    model: nn.Module, cut: CutSpec, pool: str | None, size: Probe, eval_trace: Trace
) -> tuple[Body, str, ClassifierInfo | None, list[str], list[str]]:
    """Cut ``model``; returns the body, the method, the classifier found, removed names and notes."""
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
        return Body(model), "backbone", None, [], []  # the whole network; its main output is the features
    if pool in (None, "model"):
        return _replace_classifier(model, info, eval_trace, size)
    if is_timm_model(model):
        model.reset_classifier(0)
        removed, notes = _remove_aux_heads(model, size, eval_trace)
        return Body(model, method="forward_features"), "timm-features", info, list(info.names) + removed, notes
    unpooled = find_unpooled(eval_trace, info.names[0])
    return _exit_body(model, unpooled.name, "unpooled", eval_trace, size, info)


def _exit_body(
    model: nn.Module, name: str, method: str, eval_trace: Trace, size: Probe, info: ClassifierInfo | None
) -> tuple[Body, str, ClassifierInfo | None, list[str], list[str]]:
    calls = len(eval_trace.by_name.get(name, []))
    if calls != 1:
        raise ValueError(
            f"graft: cut={name!r} runs {calls} times in {type(model).__name__}.forward, so it does not mark "
            f"one point of the network. Cut at a module that runs once (candidates: "
            f"{', '.join(candidate_cuts(model, eval_trace))}) or pass a callable."
        )
    removed, notes = _remove_aux_heads(model, size, eval_trace)
    # the automatic cut wants the feature tensor; a user cut keeps a tuple (multi-scale backbones) whole
    # but unwraps a mapping (a Hugging Face ModelOutput) to its main tensor
    select_main = method == "unpooled" or isinstance(eval_trace.by_name[name][0].output, dict)
    return Body(model, exit_at=name, select_main=select_main), method, info, removed, notes


def _replace_classifier(
    model: nn.Module, info: ClassifierInfo, eval_trace: Trace, size: Probe
) -> tuple[Body, str, ClassifierInfo | None, list[str], list[str]]:
    if info.method == "timm":
        model.reset_classifier(0)
        method = "timm"
    else:
        for name in info.names:
            replace_module(model, name, nn.Identity())
        method = "classifier"
    removed, notes = _remove_aux_heads(model, size, eval_trace)
    return Body(model), method, info, list(info.names) + removed, notes


def _make_head(
    head: HeadSpec, n_out: int, shape: Any, layout: str | None, pool: str, options: dict[str, Any]
) -> nn.Module:
    if isinstance(head, nn.Module):
        return head
    if not isinstance(head, str):
        return head(shape)
    if layout is None or not isinstance(shape, torch.Size):
        raise ValueError(
            f"graft: the body returns {shape}, not one tensor, so head={head!r} cannot be built. "
            f"Pass head=<a module that takes that output>."
        )
    channels = int(shape[1] if layout in ("nc", "nchw") else shape[-1])
    mode = "avg" if pool == "model" else pool
    if head == "linear":
        return linear_head(
            channels,
            n_out,
            layout=layout,
            pool=mode,
            dropout=options.get("dropout") or 0.0,
            y_range=options.get("y_range"),
        )
    if head == "mlp":
        mode = "concat" if pool == "model" and layout != "nc" else mode
        kwargs = {k: v for k, v in options.items() if v is not None}
        return mlp_head(channels, n_out, layout=layout, pool=mode, **kwargs)
    raise ValueError(f"graft: unknown head={head!r}. Choose 'linear', 'mlp', an nn.Module or a callable(shape).")


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
    body, method, info, removed, notes = _cut_body(model, cut, pool, probe)
    body_trace = _trace(body, probe)
    shape = body_trace.output
    layout = _layout(body_trace, info, model)
    head_pool = pool or ("model" if cut is None else ("concat" if head == "mlp" else "avg"))
    options = {"hidden": hidden, "dropout": dropout, "batch_norm": batch_norm, "y_range": y_range}
    new_head = _make_head(head, n_out, shape, layout, head_pool, options)
    reference = next(body.parameters(), None)
    if reference is not None and head in ("linear", "mlp"):
        new_head = new_head.to(device=reference.device, dtype=reference.dtype)
    graft_info = GraftInfo(
        source=source,
        method=method,
        cut_at=body.exit_at,
        classifier=info.names if info else (),
        removed=tuple(removed),
        removed_params=before + adaptation_delta(adaptation, model) - _param_count(body),
        input_size=size if example is None else body_trace.input_shape,
        body_output=tuple(shape[1:]) if isinstance(shape, torch.Size) else None,
        layout=layout,
        pool=head_pool,
        in_chans=adaptation,
        notes=tuple(notes),
    )
    grafted = Grafted(body, new_head, graft_info, None)
    graft_info.pretrained = tuple(f"body.{n}" for n, _ in body.named_parameters())
    graft_info.new = tuple(f"head.{n}" for n, _ in new_head.named_parameters())
    if guard:
        grafted.guard = PretrainedGuard.track(grafted, graft_info.pretrained)
    return grafted


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


def _cut_body(
    model: nn.Module, cut: CutSpec, pool: str | None, probe: Probe
) -> tuple[Body, str, ClassifierInfo | None, list[str], list[str]]:
    """The body (by a callable ``cut``, or from a dry run), the method, the classifier found, the removed
    module names (pruned layers included) and notes."""
    if callable(cut) and not isinstance(cut, nn.Module):
        return Body(cut(model), select_main=False), "callable", None, [], []
    eval_trace = _trace(model, probe)
    body, method, info, removed, notes = _build_body(model, cut, pool, probe, eval_trace)
    if body.exit_at is not None or body.method != "forward":
        removed += _prune_unused(body, probe, eval_trace.names())
    return body, method, info, removed, notes


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
