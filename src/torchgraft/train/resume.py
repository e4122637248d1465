"""Capturing and restoring a Learner's whole training state, for checkpoints that resume exactly.

Kept apart from the Learner so that the loop reads without it; it touches only the attributes named in
:class:`Resumable`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from torchgraft.train.distributed import on_main
from torchgraft.train.fsdp import full_model_state, full_optimizer_state, is_sharded, load_full_state
from torchgraft.train.runstate import load_training_state, read_state, training_state

__all__ = ["Resumable", "capture", "restore"]


class Resumable(Protocol):
    """What :func:`capture` and :func:`restore` read and write on a Learner."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    loop: Any
    train_dl: Any
    valid_dl: Any
    epoch: int
    step: int
    phase: int
    stage: str | None
    fit_kind: dict[str, Any]
    history: list[dict[str, Any]]
    lr_history: list[list[float]]
    resumed: Path | None
    progress_in_epoch: Any
    epoch_rng: dict[str, Any] | None
    resume_position: dict[str, Any] | None


def _position(learner: Resumable) -> dict[str, Any] | None:
    """Where the running epoch stands (``None`` between epochs): batches done, this rank's loss sum and count,
    and every generator's state when the epoch began."""
    progress = learner.progress_in_epoch
    if progress.batch == 0 or learner.epoch_rng is None:
        return None
    return {
        "batch": progress.batch,
        "loss_sum": float(progress.loss_sum),
        "count": int(progress.count),
        "epoch_rng": learner.epoch_rng,
    }


def capture(learner: Resumable) -> dict[str, Any]:
    """Model, optimizer, scheduler, gradient scaler, every random generator (the loaders' own too), the
    counters and the history of ``learner``; inside an epoch also its position (a mid-epoch checkpoint)."""
    if learner.optimizer is None:
        raise ValueError("state: nothing to capture before the first fit built an optimizer.")
    sharded = is_sharded(learner.model)  # whole tensors, gathered by every rank: the files of an unsharded run
    return training_state(
        learner.model,
        learner.optimizer,
        model_state=full_model_state(learner.model) if sharded else None,
        optimizer_state=full_optimizer_state(learner.optimizer) if sharded else None,
        scheduler=learner.scheduler,
        scaler=learner.loop.scaler,
        loaders=[learner.train_dl, learner.valid_dl],
        epoch=learner.epoch,
        step=learner.step,
        phase=learner.phase,
        stage=learner.stage,
        fit=learner.fit_kind,
        history=learner.history,
        lr_history=learner.lr_history,
        position=_position(learner),
    )


def restore(learner: Resumable, path: str | Path) -> None:
    """Put the state at ``path`` back into ``learner``, whose current fit must be the call that wrote it.

    Raises:
        ValueError: the checkpoint was written by another call (``fit`` vs ``fit_one_cycle``, other epochs).
        StateError: a damaged file, or one that is not a training state.
    """
    state = on_main(read_state, path)  # rank 0's file, on every rank (other machines need not see RUN_DIR)
    if state["fit"] != learner.fit_kind:
        raise ValueError(
            f"resume: {path} was written by {state['fit']['kind']}({state['fit']['epochs']} epochs), not "
            f"{learner.fit_kind['kind']}({learner.fit_kind['epochs']} epochs); resume with the same call."
        )
    assert learner.optimizer is not None
    loaders = [learner.train_dl, learner.valid_dl]
    scaler = learner.loop.scaler
    if is_sharded(learner.model):
        load_full_state(learner.model, state["model"], optimizer=learner.optimizer, optimizer_state=state["optimizer"])
        state = {**state, "model": None, "optimizer": None}
    load_training_state(
        state, learner.model, learner.optimizer, scheduler=learner.scheduler, scaler=scaler, loaders=loaders
    )
    learner.epoch, learner.step, learner.phase = state["epoch"], state["step"], state.get("phase", learner.phase)
    learner.resume_position = state.get("position")
    learner.history, learner.lr_history = list(state["history"]), [list(r) for r in state["lr_history"]]
    learner.resumed = Path(path)
