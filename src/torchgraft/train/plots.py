"""Plots of a training run as PNG files: the loss of every step (smoothed) with the validation loss of each
epoch, the metrics, each layer group's learning rate, the lr_find curve. Every curve of a run is drawn over
the optimizer steps of the whole run, with the epochs of the run as integer ticks on top and each stage of a
fine-tune (``frozen``, ``top2``, ``unfrozen``, ...) marked where it begins. matplotlib is imported only when a
plot is asked for (:mod:`torchgraft.figures`; ``pip install matplotlib``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchgraft.figures import pyplot as _pyplot
from torchgraft.figures import save_figure as _save
from torchgraft.tasks.pictures import plot_confusion, plot_grid

__all__ = [
    "RunAxis",
    "history_figure",
    "lrs_figure",
    "plot_confusion",
    "plot_grid",
    "plot_history",
    "plot_lr_find",
    "plot_lrs",
    "plot_training",
    "smoothed",
    "stage_name",
]

_NOT_METRICS = ("phase", "epoch", "stage", "seconds", "train_loss", "valid_loss")


def stage_name(row: dict[str, Any]) -> str:
    """The stage a history row belongs to: its ``stage`` (``frozen``, ``unfrozen``, ...), else ``phase N``."""
    return str(row.get("stage") or f"phase {row.get('phase', 0)}")


def _numbers(history: Sequence[dict[str, Any]], key: str) -> bool:
    """Whether every value of ``key`` in the history is a number (a metric, not a name or a flag)."""
    return all(isinstance(row[key], int | float) and not isinstance(row[key], bool) for row in history if key in row)


def smoothed(values: Sequence[float], *, span: int) -> list[float]:
    """The exponential moving average of ``values`` over about ``span`` values (``alpha = 2 / (span + 1)``),
    bias-corrected at the start (the first value is itself, not a fraction of it); NaN values are skipped
    (their place gets the average so far).

    Example:
        >>> smoothed([1.0, 1.0, 4.0], span=1)
        [1.0, 1.0, 4.0]
    """
    beta = 1 - 2 / (max(1, span) + 1)
    average, weight, out = 0.0, 0.0, []
    for value in values:
        if not math.isnan(value):
            average, weight = beta * average + (1 - beta) * value, beta * weight + (1 - beta)
        out.append(average / weight if weight > 0 else math.nan)
    return out


@dataclass(frozen=True)
class RunAxis:
    """Where each epoch of a run ends on the x axis of its plots, and how the axis is labelled.

    Attributes:
        ends: per history row, the x of its epoch's end: the optimizer steps done by then (``per_step``),
            else the row's place in the run (1, 2, ...).
        per_step: whether x counts optimizer steps (the per-step records agree with the history).
        stages: ``(x where the stage begins, its name)`` for each stage of the run in order.
    """

    ends: list[float]
    per_step: bool
    stages: list[tuple[float, str]]

    @classmethod
    def of(cls, history: Sequence[dict[str, Any]], epoch_steps: Sequence[int], steps: int) -> RunAxis:
        """The axis of a run of ``history`` whose per-step records hold ``steps`` steps, ``epoch_steps`` the
        steps done at each row's end (:attr:`FitState.epoch_steps <torchgraft.train.state.FitState>`); steps
        that do not agree with the history (a run resumed from a checkpoint that predates them) give an axis
        of epochs."""
        per_step = (
            steps > 0
            and len(epoch_steps) == len(history)
            and list(epoch_steps) == sorted(epoch_steps)
            and epoch_steps[-1] == steps
        )
        ends = [float(s) for s in epoch_steps] if per_step else [float(i + 1) for i in range(len(history))]
        stages, previous = [], None
        for i, row in enumerate(history):
            key = (row.get("phase"), stage_name(row))
            if key != previous:
                start = (ends[i - 1] if i else 0.0) + 0.5
                stages.append((start, stage_name(row)))
                previous = key
        return cls(ends, per_step, stages)

    def decorate(self, axis: Any) -> None:
        """Stage boundaries as labelled vertical lines, integer epoch ticks (on top when x counts steps)."""
        upright = len(self.stages) > 3  # gradual unfreezing: many short stages, names written upwards
        for i, (x, name) in enumerate(self.stages):
            if i:
                axis.axvline(x, color="0.4", linestyle="--", linewidth=1)
            where = {"transform": axis.get_xaxis_transform(), "ha": "left", "va": "top", "fontsize": "small"}
            axis.text(x, 0.98, f" {name}", rotation=90 if upright else 0, **where)
        every = max(1, math.ceil(len(self.ends) / 15))  # at most ~15 epoch labels
        ticks = [(x, str(i + 1)) for i, x in enumerate(self.ends) if i % every == every - 1 or i == len(self.ends) - 1]
        axis.set_xlim(0.5, self.ends[-1] + 0.5)  # from the first stage's mark to the last epoch's end
        if self.per_step:
            axis.set_xlabel("optimizer step")
            axis.xaxis.get_major_locator().set_params(integer=True)
            top = axis.secondary_xaxis("top")
            top.set_xticks([x for x, _ in ticks], [label for _, label in ticks])
            top.set_xlabel("epoch (ends)", fontsize="small")
        else:
            axis.set_xticks([x for x, _ in ticks], [label for _, label in ticks])
            axis.set_xlabel("epoch")


def _legend_below(axis: Any) -> None:
    """The legend under the axes, clear of the curves and of the stage names along the top."""
    axis.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)


def plot_history(
    history: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    step_losses: Sequence[float] = (),
    epoch_steps: Sequence[int] = (),
) -> Path:
    """The loss (left) and every metric (right) of a run (:func:`history_figure`), as a PNG at ``path``.

    Raises:
        ValueError: an empty history.
    """
    return _save(history_figure(history, step_losses=step_losses, epoch_steps=epoch_steps), path)


def history_figure(
    history: Sequence[dict[str, Any]], *, step_losses: Sequence[float] = (), epoch_steps: Sequence[int] = ()
) -> Any:
    """The matplotlib figure of :func:`plot_history`: with the per-step records (``learner.loss_history``,
    ``learner.epoch_steps``) each step's training loss, faint, and its moving average (:func:`smoothed`), with
    the validation loss of each epoch at the epoch's last step; without them the epochs' training and
    validation losses. Right: every metric at its epoch's end. Epochs are integer ticks and each stage's start
    is marked (:class:`RunAxis`).

    Raises:
        ValueError: an empty history.
    """
    if not history:
        raise ValueError("plot_history: the history is empty; train for at least one epoch first.")
    plt = _pyplot()
    run = RunAxis.of(history, epoch_steps, len(step_losses))
    metrics = [
        k for k in dict.fromkeys(k for row in history for k in row) if k not in _NOT_METRICS and _numbers(history, k)
    ]
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(11, 4.8))
    if run.per_step:
        steps = range(1, len(step_losses) + 1)
        losses.plot(steps, step_losses, color="tab:blue", alpha=0.35, linewidth=0.8, label="train (each step)")
        span = max(3, min(50, len(step_losses) // 10))
        average = smoothed(step_losses, span=span)
        losses.plot(steps, average, color="tab:blue", label=f"train (moving average, ~{span} steps)")
    elif any("train_loss" in row for row in history):
        losses.plot(run.ends, [row.get("train_loss", math.nan) for row in history], marker="o", label="train")
    if any("valid_loss" in row for row in history):
        valid = [row.get("valid_loss", math.nan) for row in history]
        losses.plot(run.ends, valid, marker="o", color="tab:orange", label="valid (each epoch)")
    losses.set(ylabel="loss", title="loss")
    _legend_below(losses)
    run.decorate(losses)
    for key in metrics:
        scores.plot(run.ends, [row.get(key, math.nan) for row in history], marker="o", label=key)
    scores.set(title="validation metrics (each epoch)")
    if metrics:
        _legend_below(scores)
    run.decorate(scores)
    return figure


def plot_lrs(
    layer_rates: Sequence[dict[str, float | None]],
    path: str | Path,
    *,
    history: Sequence[dict[str, Any]] = (),
    epoch_steps: Sequence[int] = (),
) -> Path:
    """The rate each step used per layer group (:func:`lrs_figure`), as a PNG at ``path``."""
    return _save(lrs_figure(layer_rates, history=history, epoch_steps=epoch_steps), path)


def lrs_figure(
    layer_rates: Sequence[dict[str, float | None]],
    *,
    history: Sequence[dict[str, Any]] = (),
    epoch_steps: Sequence[int] = (),
) -> Any:
    """The matplotlib figure of :func:`plot_lrs`: one line per layer group (``body0``, ..., ``head``) for the
    whole run, on a log scale; steps where a group was frozen are gaps, and the legend gives each group's
    peak. With the run's ``history`` and ``epoch_steps``: epoch ticks and stage marks as :func:`plot_history`
    draws them."""
    if not layer_rates:
        raise ValueError("plot_lrs: no steps recorded; train first.")
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.8))
    names = list(dict.fromkeys(name for row in layer_rates for name in row))
    steps = range(1, len(layer_rates) + 1)
    for name in names:
        series = [row.get(name) for row in layer_rates]
        used = [rate for rate in series if rate is not None]
        label = f"{name}: peak {max(used):.2g}" if used else f"{name}: frozen throughout"
        axis.plot(steps, [math.nan if rate is None else rate for rate in series], label=label)
    axis.set(ylabel="learning rate", yscale="log", title="rate used per layer group (gaps: frozen)")
    _legend_below(axis)
    run = RunAxis.of(history, epoch_steps, len(layer_rates)) if history else None
    if run is not None and run.per_step:
        run.decorate(axis)
    else:
        axis.set_xlabel("optimizer step")
    return figure


def plot_lr_find(result: Any, path: str | Path) -> Path:
    """The smoothed loss against the learning rate (log scale) with the suggestion marked."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(result.lrs, result.losses)
    axis.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggestion {result.suggestion:.2g}")
    axis.set(xscale="log", xlabel="learning rate", ylabel="smoothed loss", title="lr_find")
    axis.legend()
    return _save(figure, path)


def plot_training(
    history: Sequence[dict[str, Any]],
    layer_rates: Sequence[dict[str, float | None]],
    directory: str | Path,
    *,
    step_losses: Sequence[float] = (),
    epoch_steps: Sequence[int] = (),
) -> list[Path]:
    """``loss.png`` (:func:`plot_history`) and ``lr.png`` (:func:`plot_lrs`: one line per layer group, the
    rate each step used) in ``directory``."""
    directory = Path(directory)
    steps = {"epoch_steps": epoch_steps}
    return [
        plot_history(history, directory / "loss.png", step_losses=step_losses, **steps),
        plot_lrs(layer_rates, directory / "lr.png", history=history, **steps),
    ]
