"""A table a person can read: what was cut, where, the body's output, the head, pretrained (what a loader
recorded as loaded) vs new."""

from __future__ import annotations

from torch import nn

from torchgraft.grafting.adapters import adapter_view, base_model
from torchgraft.grafting.dryrun import trace
from torchgraft.grafting.loaded import loaded_names
from torchgraft.grafting.redetect import class_layers, is_detector
from torchgraft.tune.group_types import StageRates
from torchgraft.tune.groups import layer_groups
from torchgraft.tune.rates import LRSpec

__all__ = ["describe"]

_METHODS = {
    "classifier": "classifier {names} replaced; the network's own pooling kept",
    "timm": "classifier {names} removed with timm's reset_classifier; timm's pooling kept",
    "unpooled": "cut after '{cut}', before the network's pooling; the head pools ({pool})",
    "timm-features": "cut at timm's forward_features; the head pools ({pool})",
    "cut": "cut after '{cut}' (cut= given); the head pools ({pool})",
    "callable": "body built by the cut= callable",
    "backbone": "the whole network (it has no classifier); the head pools its main output ({pool})",
    "dense": "backbone cut after its deepest tap '{cut}'; a {pool} decoder reads the taps (notes)",
    "resegment": "it segments already: its decoder kept, classifier {names} replaced (head)",
    "detector": "backbone cut after its deepest tap '{cut}'; torchvision's FPN and {pool} detector read the taps",
    "redetect": "a pretrained detector: class layers {names} replaced (head); the rest kept",
}


def _count(params: list[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        cell.ljust(width) if i == 0 else cell.rjust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [_row(row, widths) for row in rows]


def _parameter_rows(model: nn.Module) -> list[list[str]]:
    """Per part: parameters, pretrained (kept from the source network *and* recorded as loaded; ``-`` when
    no torchgraft loader left a record), new, trainable."""
    kept = set(getattr(getattr(model, "info", None), "pretrained", ()))
    model = base_model(model)  # a PeftModel: the parts of the network inside it
    loaded = loaded_names(model)
    view = adapter_view(model)
    rows = [["part", "parameters", "pretrained", "new", "trainable"]]
    totals = [0, 0, 0, 0]
    for part, module in model.named_children():
        named = [(f"{part}.{n}", p) for n, p in module.named_parameters()]
        if view:  # the base's pretrained tensors by their plain names; adapters are new
            named = [(view.canonical[n] if view.roles[n] != "adapter" else n, p) for n, p in named]
        counts = [
            _count([p for _, p in named]),
            _count([p for n, p in named if n in kept and (loaded is None or n in loaded)]),
            _count([p for n, p in named if n not in kept]),
            _count([p for _, p in named if p.requires_grad]),
        ]
        totals = [t + c for t, c in zip(totals, counts, strict=True)]
        rows.append([part, *_cells(counts, known=loaded is not None)])
    rows.append(["total", *_cells(totals, known=loaded is not None)])
    return rows


def _cells(counts: list[int], *, known: bool) -> list[str]:
    """The row's numbers; without a load record, the pretrained count (kept tensors, loaded or not) is ``-``."""
    cells = [f"{c:,}" for c in counts]
    return cells if known or not counts[1] else [cells[0], "-", *cells[2:]]


def _head_lines(head: nn.Module) -> list[str]:
    children = list(head.named_children()) or [("", head)]
    lines = []
    for name, child in children:
        text = " ".join(repr(child).split())
        lines.append(f"    {name:>3} {text[:100]}")
    return lines


def _outputs(head: nn.Module, body_output: tuple[int, ...] | None) -> int | str:
    """Number of outputs of ``head``: from a dry run on the body's output shape (any head, custom final
    modules such as ``SigmoidRange`` included), else the last layer that declares it."""
    if body_output is not None:
        try:
            shape = trace(head, tuple(body_output)).main_shape
            if shape is not None and len(shape) == 2:
                return int(shape[1])
        except Exception:  # a head that needs more than one tensor: fall back to its layers
            pass
    for module in reversed(list(head.modules())):
        for attribute in ("out_features", "out_channels"):
            if isinstance(getattr(module, attribute, None), int):
                return getattr(module, attribute)
    return "?"


def describe(model: nn.Module, *, lr: LRSpec | None = None, stages: StageRates | None = None) -> str:
    """Describe a grafted model: the cut, what was removed, input and body output shapes, the head's
    layers, parameter counts (pretrained, new, trainable) per part, and the layer-group plan (with the
    learning rate of each group when ``lr`` is given, as for :func:`torchgraft.param_groups`; with ``stages``,
    :func:`torchgraft.train.stages.stage_rates` of a fine-tune, one column per stage: the rate it trains each
    group at, or ``frozen``; see :meth:`LayerGroups.table <torchgraft.tune.group_types.LayerGroups.table>`).

    Example:
        >>> print(describe(graft(torchvision.models.resnet18(), 7)))
        torchgraft: ResNet grafted -> 7 outputs
          cut          classifier 'fc' replaced; the network's own pooling kept
        ...
    """
    info = getattr(model, "info", None)
    if info is None or not hasattr(info, "method"):
        raise TypeError(
            f"describe: {type(model).__name__} is not a grafted model. Graft it first: torchgraft.graft(model, n_out)."
        )
    detector = is_detector(model)
    n_out = (
        f"a {type(model).__name__} for {info.n_out} classes"
        if detector
        else f"{_outputs(model.head, info.body_output)} outputs"
    )
    names = ", ".join(f"'{n}'" for n in info.classifier) or "(none: the network was headless)"
    lines = [
        f"torchgraft: {info.source} grafted -> {n_out}",
        f"  cut          {_METHODS[info.method].format(names=names, cut=info.cut_at, pool=info.pool)}",
        f"  removed      {', '.join(info.removed) or 'nothing'} ({info.removed_params:,} parameters)",
        f"  input        {tuple(info.input_size)}",
    ]
    if info.in_chans is not None:
        adapt = info.in_chans
        lines.append(
            f"  in_chans     '{adapt.module}': {adapt.from_channels} -> {adapt.to_channels} channels ({adapt.rule})"
        )
    output = f"{info.body_output} [{info.layout}]" if info.body_output is not None else "structured output"
    if info.method in ("dense", "detector"):
        output = "the taps' feature maps (notes)"
    lines += [f"  body output  {output}", "  head"]
    if detector:  # the class layers (the rest of a torchvision detector's head is in the groups below)
        lines += [f"    {name} {' '.join(repr(model.get_submodule(name)).split())}" for name, _ in class_layers(model)]
    else:
        lines += _head_lines(model.head)
    lines += [f"  note         {note}" for note in info.notes]
    if loaded_names(model) is None:
        lines.append(
            "  note         pretrained: not known (the weights were not loaded by pretrained_model/load_weights)"
        )
    lines += ["", *("  " + line for line in _table(_parameter_rows(model)))]
    groups = layer_groups(model)
    title = "  layer groups" + (": the rate each stage trains a group at, or frozen" if stages is not None else "")
    lines += ["", title, *("  " + line for line in groups.table(lr, stages=stages).splitlines())]
    return "\n".join(lines)
