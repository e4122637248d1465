"""Capturing and restoring a Learner's whole training state, for checkpoints that resume exactly.

Kept apart from the Learner so that the loop reads without it: it reads and returns a
:class:`~torchgraft.train.state.FitState` and the objects of :class:`Trained`, nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchgraft.train.distributed import is_main, on_main, reduce_sum
from torchgraft.train.frozen_state import full_model_state as completed_state
from torchgraft.train.frozen_state import leave_out_frozen
from torchgraft.train.fsdp import full_model_state, full_optimizer_state, is_sharded, load_full_state
from torchgraft.train.loop import EpochProgress
from torchgraft.train.runstate import (
    get_loader_rng_state,
    get_rng_state,
    load_training_state,
    read_state,
    set_loader_rng_state,
    set_rng_state,
    training_state,
    write_state,
)
from torchgraft.train.state import FitState

__all__ = ["Trained", "capture", "epoch_batches", "load_best_weights", "restore", "save_state", "set_sampler_epoch"]


@dataclass(frozen=True)
class Trained:
    """What a checkpoint holds besides the :class:`FitState`: the objects whose states it saves."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    scaler: Any
    loaders: list[Any]


def _position(state: FitState) -> dict[str, Any] | None:
    """Where the running epoch stands (``None`` between epochs): batches done, this rank's loss sum and count,
    and every generator's state when the epoch began."""
    progress = state.progress
    if progress.batch == 0 or state.epoch_rng is None:
        return None
    return {
        "batch": progress.batch,
        "loss_sum": float(progress.loss_sum),
        "count": int(progress.count),
        "epoch_rng": state.epoch_rng,
    }


def capture(state: FitState, trained: Trained) -> dict[str, Any]:
    """Model, optimizer, scheduler, gradient scaler, every random generator (the loaders' own too), the
    counters and the history of ``state``; inside an epoch also its position (a mid-epoch checkpoint)."""
    if trained.optimizer is None:
        raise ValueError("state: nothing to capture before the first fit built an optimizer.")
    sharded = is_sharded(trained.model)  # whole tensors, gathered by every rank: the files of an unsharded run
    return training_state(
        trained.model,
        trained.optimizer,
        model_state=full_model_state(trained.model) if sharded else None,
        optimizer_state=full_optimizer_state(trained.optimizer) if sharded else None,
        scheduler=trained.scheduler,
        scaler=trained.scaler,
        loaders=trained.loaders,
        epoch=state.epoch,
        step=state.step,
        phase=state.phase,
        stage=state.stage,
        fit=state.kind,
        history=state.history,
        lr_history=state.lr_history,
        layer_lr_history=state.layer_lr_history,
        loss_history=state.loss_history,
        epoch_steps=state.epoch_steps,
        position=_position(state),
    )


def restore(path: str | Path, state: FitState, trained: Trained) -> FitState:
    """Put the checkpoint at ``path`` back into ``trained``'s objects; returns ``state`` with its counters,
    history and epoch position. The current fit (``state.kind``) must be the call that wrote it.

    Raises:
        ValueError: the checkpoint was written by another call (``fit`` vs ``fit_one_cycle``, other epochs).
        StateError: a damaged file, or one that is not a training state.
    """
    saved = on_main(
        _read_whole, path, trained.model
    )  # rank 0's files, on every rank (other machines need not see RUN_DIR)
    if saved["fit"] != state.kind:
        raise ValueError(
            f"resume: {path} was written by {saved['fit']['kind']}({saved['fit']['epochs']} epochs), not "
            f"{state.kind['kind']}({state.kind['epochs']} epochs); resume with the same call."
        )
    assert trained.optimizer is not None
    if is_sharded(trained.model):
        load_full_state(trained.model, saved["model"], optimizer=trained.optimizer, optimizer_state=saved["optimizer"])
        saved = {**saved, "model": None, "optimizer": None}
    load_training_state(
        saved,
        trained.model,
        trained.optimizer,
        scheduler=trained.scheduler,
        scaler=trained.scaler,
        loaders=trained.loaders,
    )
    return dataclasses.replace(
        state,
        epoch=saved["epoch"],
        step=saved["step"],
        phase=saved.get("phase", state.phase),
        resume_position=saved.get("position"),
        history=list(saved["history"]),
        lr_history=[list(r) for r in saved["lr_history"]],
        layer_lr_history=[dict(r) for r in saved.get("layer_lr_history", [])],
        loss_history=[float(x) for x in saved.get("loss_history", [])],  # absent from older checkpoints
        epoch_steps=[int(x) for x in saved.get("epoch_steps", [])],
        resumed=Path(path),
    )


def _read_whole(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """The checkpoint at ``path`` with its whole model state (frozen tensors from ``frozen.pt`` put back)."""
    state = read_state(path)
    return {**state, "model": completed_state(state, model, path=path)}


def save_state(
    path: str | Path,
    state: dict[str, Any],
    *,
    distributed: bool,
    device: torch.device,
    model: torch.nn.Module | None = None,
    first: dict[str, str] | None = None,
) -> None:
    """Write a state from :func:`capture` to ``path`` atomically on rank 0. Under DDP every rank must call it:
    inside an epoch the ranks' partial training losses are summed first. With ``model`` and its ``first``
    fingerprints, its frozen parameters that still have them are kept in ``frozen.pt`` beside ``path``, not in
    the file (:func:`torchgraft.train.frozen_state.leave_out_frozen`)."""
    position = state.get("position")
    if position is not None and distributed:
        sums = torch.tensor([position["loss_sum"], position["count"]], dtype=torch.float64, device=device)
        position["loss_sum"], position["count"] = reduce_sum(sums).tolist()
    if is_main():
        write_state(path, leave_out_frozen(state, model, first, path) if model is not None else state)


def load_best_weights(checkpoint_dir: Path | None, model: torch.nn.Module) -> dict[str, Any]:
    """Put the weights of ``checkpoint_dir/best.pt`` into ``model`` (sharded or not); returns that epoch's record.
    Every rank must call it.

    Raises:
        FileNotFoundError: no ``checkpoint_dir``, or no ``best.pt`` in it yet.
    """
    path = checkpoint_dir / "best.pt" if checkpoint_dir is not None else None
    if path is None or not on_main(path.is_file):
        raise FileNotFoundError(
            f"load_best: no best.pt{f' in {checkpoint_dir}' if path else ''}; the Learner writes it with "
            f"checkpoint_dir= after each epoch that improves the monitored value."
        )
    state = on_main(_read_whole, path, model)
    if is_sharded(model):
        load_full_state(model, state["model"])
    else:
        model.load_state_dict(state["model"])
    return dict(state["history"][-1])


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """A new shuffle each epoch, the same on every rank: samplers with ``set_epoch`` get ``epoch`` (the Learner
    gives the epochs trained over every fit, so that the stages of a recipe do not repeat one order)."""
    held = (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None), getattr(loader, "dataset", None))
    for sampler in {id(s): s for s in held}.values():  # a stream (an IterableDataset) takes the epoch itself
        setter = getattr(sampler, "set_epoch", None)
        if callable(setter):
            setter(epoch)


def epoch_batches(train: Any, loaders: list[Any], state: FitState, *, distributed: bool) -> Iterator[Any]:
    """The epoch's training batches, ``state.progress`` and ``state.epoch_rng`` set for it. A fit resumed from a
    mid-epoch checkpoint (``state.resume_position``) starts at the saved batch: every generator is put back to
    its state at the start of that epoch, the iterator is made (the same shuffle, the same worker seeds), the
    batches already trained are skipped — by the sampler when it can
    (:class:`~torchgraft.data.sampling.SeededSampler`: nothing read), else by reading them — and the
    generators are set to where the checkpoint left them."""
    position, state.resume_position = state.resume_position, None
    state.progress = EpochProgress()
    if position is None:
        state.epoch_rng = {"rng": get_rng_state(), "loader_rng": get_loader_rng_state(loaders)}
        return iter(train)
    now = {"rng": get_rng_state(), "loader_rng": get_loader_rng_state(loaders)}
    state.epoch_rng = position["epoch_rng"]
    set_rng_state(state.epoch_rng["rng"])
    set_loader_rng_state(loaders, state.epoch_rng["loader_rng"])
    done = position["batch"]
    sampler, size = getattr(train, "sampler", None), getattr(train, "batch_size", None)
    skip_batches = getattr(getattr(train, "dataset", None), "skip_batches", None)
    if callable(skip_batches):  # a stream skips whole batches without decoding them (SampleStream)
        skip_batches(done)
        batches = iter(train)
        skip_batches(0)
    elif callable(getattr(sampler, "skip", None)) and size:
        sampler.skip(done * size)
        batches = iter(train)
    else:
        batches = iter(train)
        for _ in range(done):
            next(batches)
    set_rng_state(now["rng"])
    set_loader_rng_state(loaders, now["loader_rng"])
    main = is_main() or not distributed  # the saved loss sum is every rank's: one rank carries it
    state.progress = EpochProgress(
        batch=done, loss_sum=position["loss_sum"] if main else 0.0, count=position["count"] if main else 0
    )
    return batches
