"""Rebuild a graft from its record: the same modules under the same names, without a dry run.

``replay_graft(fresh_source, model.info.record())`` gives the module structure that :func:`~torchgraft.graft`
or :func:`~torchgraft.graft_dense` made, on a fresh copy of the source network (any weights), so that the
trained state dict loads with exact keys (``load_state_dict(strict=True)``). What ``model.json`` records
and :func:`torchgraft.load_exported` replays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from torchgraft.grafting.dense import rebuild_segmenter
from torchgraft.grafting.detector import rebuild_detector
from torchgraft.grafting.grafted import Grafted
from torchgraft.grafting.info import GraftInfo, GraftRecordError
from torchgraft.grafting.redetect import rebuild_redetected
from torchgraft.grafting.resegment import rebuild_resegmented
from torchgraft.grafting.surgery import rebuild_grafted

__all__ = ["replay_graft"]


def replay_graft(model: nn.Module, record: GraftInfo | Mapping[str, Any]) -> Grafted | nn.Module:
    """Graft ``model`` (a fresh source network of the recorded architecture) as ``record`` says.

    Args:
        model: the source network, built again (``torchgraft.build_model(name)``, an ``AutoModel`` from its
            config); modified in place. Its weights do not matter: load the trained state dict afterwards.
        record: a :class:`GraftInfo` or what :meth:`GraftInfo.record` returned (JSON values).

    Returns:
        The grafted model (a :class:`Grafted`, a :class:`~torchgraft.grafting.dense.Segmenter` or a
        :class:`~torchgraft.grafting.resegment.Resegmented`; for a detector, the torchvision detector) with a
        copy of the record as ``.info``; no guard.

    Raises:
        GraftRecordError: a record of another version, or of a head or cut given as code.

    Example:
        >>> record = graft(resnet18(weights="DEFAULT"), 10).info.record()
        >>> model = replay_graft(resnet18(), record)   # no dry run
        >>> model.load_state_dict(trained_state, strict=True)
    """
    info = GraftInfo.from_record(record.record() if isinstance(record, GraftInfo) else record)
    if type(model).__name__ != info.source:
        raise GraftRecordError(
            f"replay_graft: the record grafts a {info.source}, not a {type(model).__name__}; build the network "
            f"the record was made on."
        )
    problem = info.replay_problem()
    if problem is not None:
        raise GraftRecordError(f"replay_graft: {problem}, which a record cannot rebuild; rebuild it in your code.")
    if info.method == "dense":
        return rebuild_segmenter(model, info)
    if info.method == "detector":
        return rebuild_detector(model, info)
    if info.method == "redetect":
        return rebuild_redetected(model, info)
    if info.method == "resegment":
        return rebuild_resegmented(model, info)
    return rebuild_grafted(model, info)
