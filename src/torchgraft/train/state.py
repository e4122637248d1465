"""Where training stands, as one object (like Hugging Face's ``TrainerState``): the counters of the current
fit, the history of every fit, the best epoch, the running epoch's position. Checkpoints save it and
:func:`torchgraft.train.resume.restore` gives it back; the Learner reads its ``epoch``, ``step``, ``phase``,
``stage``, ``history``, ... from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchgraft.train.loop import EpochProgress

__all__ = ["FitState", "Held"]


@dataclass
class FitState:
    """The state of a Learner's training.

    Attributes:
        kind: the running fit's call (``{"kind": "fit_one_cycle", "epochs": 3}``): a resumed fit must be the same.
        epoch: epochs completed in the current fit (a record's ``epoch`` counts over the whole run).
        step: optimizer steps in the current fit.
        phase: fits completed so far (a fine-tune's stages are phases).
        stage: the part of a fine-tune running (``"frozen"``, ``"top2"``, ``"unfrozen"``), else ``None``.
        history: one record per epoch, every fit: ``stage`` (the fine-tune's ``"frozen"``, ``"top2"``,
            ``"unfrozen"``; ``"fit"`` for a plain ``fit``/``fit_one_cycle``), ``phase`` (which fit, from 0),
            ``epoch`` (within the whole run: 1, 2, ... over every fit, never repeated — the row of
            ``history.csv`` and of the printed table), ``train_loss``, ``valid_loss``, the metrics, ``seconds``.
        lr_history: each optimizer group's rate in every step (the rate the step used, before the schedule
            moved it on).
        layer_lr_history: per step, ``{layer group: rate}`` over every layer group of the model, in the
            plan's order (``body0``, ..., ``head``), ``None`` for a frozen group; decay and no-decay optimizer
            groups of a layer group are one entry.
        loss_history: per optimizer step, over every fit, the training loss of the step (the mean over the
            batches whose gradients it summed; this process's batches under ``torchrun``).
        epoch_steps: per history row, the optimizer steps done (over every fit) when its epoch ended: where
            the epoch ends in ``loss_history`` and ``layer_lr_history``.
        best_epoch: the best epoch by the monitored value (:class:`~torchgraft.train.callbacks.BestEpoch`).
        stop: a callback sets it to end the fit after the current epoch.
        stepped: whether the last batch ended with an optimizer step.
        resumed: the checkpoint the current fit resumed from.
        progress: batches done in the running epoch (mid-epoch checkpoints).
        epoch_rng: every generator's state when the running epoch began.
        resume_position: a mid-epoch checkpoint's place in its epoch, until the epoch resumes there.
    """

    kind: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    phase: int = 0
    stage: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    lr_history: list[list[float]] = field(default_factory=list)
    layer_lr_history: list[dict[str, float | None]] = field(default_factory=list)
    loss_history: list[float] = field(default_factory=list)
    epoch_steps: list[int] = field(default_factory=list)
    best_epoch: dict[str, Any] | None = None
    stop: bool = False
    stepped: bool = False
    resumed: Path | None = None
    progress: EpochProgress = field(default_factory=EpochProgress)
    epoch_rng: dict[str, Any] | None = None
    resume_position: dict[str, Any] | None = None

    def start_fit(self, kind: dict[str, Any]) -> None:
        """Counters of a new fit (the history, phase, stage and best epoch go on)."""
        self.kind, self.epoch, self.step, self.stop, self.resumed = kind, 0, 0, False, None


class Held:
    """An attribute of the owner kept on one of its parts, ``fit_state`` by default (``learner.epoch`` is
    ``learner.fit_state.epoch``, ``learner.model`` is ``learner.placement.model``), so that callbacks keep
    reading ``learner.step``, ``learner.history``, ... wherever the value lives."""

    def __init__(self, part: str = "fit_state") -> None:
        self.part = part

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, owner: Any, kind: type | None = None) -> Any:
        return self if owner is None else getattr(getattr(owner, self.part), self.name)

    def __set__(self, owner: Any, value: Any) -> None:
        setattr(getattr(owner, self.part), self.name, value)
