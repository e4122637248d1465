"""Regression: one or several float targets per sample; losses on standardised targets, metrics in units.

The loss is always on the standardised scale, ``(y - mean) / std`` of the training targets, whether the model
learns standardised targets (the default) or its head is bounded in the targets' units (``y_range``): the
losses of the two runs are the same function of the errors, so they compare (an MSE of 1.0 is the variance of
the targets, what always predicting the mean scores)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from torchgraft.spelling import option
from torchgraft.tasks.base import Task
from torchgraft.tasks.metrics import TargetError

if TYPE_CHECKING:
    import torchmetrics

    from torchgraft.tasks.pictures import ValidationInputs

__all__ = ["Regression"]

LossName = Literal["mse", "l1", "huber"]
_LOSSES = {"mse": nn.functional.mse_loss, "l1": nn.functional.l1_loss, "huber": nn.functional.huber_loss}


class Regression(Task):
    """Float targets ``(B,)`` or ``(B, K)``; outputs ``(B, K)``.

    The model learns standardised targets, ``(y - mean) / std``, so that every target weighs the same in the
    loss and the head starts at the right scale; metrics and :meth:`decode` map outputs back to the
    targets' units. :meth:`fit_scale` takes mean and std from the training targets (pass ``mean=0,
    std=1`` when the head already bounds outputs in units, ``y_range``, and ``loss_scale`` the targets' std
    so that the loss stays on the standardised scale: :meth:`fit_loss_scale`).

    Args:
        loss: ``"mse"`` (default), ``"l1"`` or ``"huber"``.
        mean: per-target mean(s) of the training targets.
        std: per-target standard deviation(s).
        loss_scale: for outputs in units (``mean=0, std=1``): the training targets' std(s); errors are divided
            by it before the loss, so the loss is on the standardised scale as without ``y_range``. ``None``:
            the loss is on the outputs' own scale.
        target_key: key of the targets in mapping batches.

    Metrics: ``mae``, ``rmse``, ``r2`` (per target, averaged), in the targets' units, over the whole set.
    """

    name: ClassVar[str] = "regression"
    metric_names: ClassVar[tuple[str, ...]] = ("mae", "rmse", "r2")
    default_metrics: ClassVar[tuple[str, ...]] = ("mae", "rmse", "r2")  # every one the README names
    targets: ClassVar[str] = "regression"
    output: ClassVar[str] = "values"

    def __init__(
        self,
        *,
        loss: LossName = "mse",
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        loss_scale: float | Sequence[float] | None = None,
        target_key: str = "labels",
    ) -> None:
        super().__init__(target_key=target_key)
        if loss not in _LOSSES:
            raise ValueError(f"Regression: unknown loss {loss!r}. Choose from {', '.join(_LOSSES)}.")
        self.loss_name = loss
        self.standardise = True  # fit_targets takes mean and std from the training targets
        self.mean = torch.atleast_1d(torch.as_tensor(mean, dtype=torch.float32))
        self.std = torch.atleast_1d(torch.as_tensor(std, dtype=torch.float32))
        if bool((self.std <= 0).any()):
            raise ValueError(f"Regression: std must be > 0, got {self.std.tolist()}.")
        self.loss_scale = None if loss_scale is None else torch.atleast_1d(torch.as_tensor(loss_scale).float())
        if self.loss_scale is not None and bool((self.loss_scale <= 0).any()):
            raise ValueError(f"Regression: loss_scale must be > 0, got {self.loss_scale.tolist()}.")

    @classmethod
    def for_run(cls, **options: Any) -> Regression:
        """Targets standardised on the training set (:meth:`fit_targets`) unless ``y_range`` bounds the
        outputs in the targets' units."""
        task = cls()
        task.standardise = options.get("y_range") is None
        return task

    def fit_targets(self, targets: Sequence[Any]) -> Regression:
        """:meth:`fit_scale` on the training targets (values or tuples of values); for a run whose head is
        bounded in units, :meth:`fit_loss_scale` (outputs stay in units, the loss on the standardised scale)."""
        values = torch.tensor(targets, dtype=torch.float32)
        return self.fit_scale(values) if self.standardise else self.fit_loss_scale(values)

    def fit_loss_scale(self, targets: torch.Tensor) -> Regression:
        """Keep the outputs in units and divide errors by the training targets' std in the loss (a constant
        target keeps 1); returns self."""
        self.loss_scale = _spread(targets.float().reshape(len(targets), -1))
        return self

    def fit_scale(self, targets: torch.Tensor) -> Regression:
        """Take ``mean`` and ``std`` from the training targets (a constant target keeps std 1); returns self."""
        values = targets.float().reshape(len(targets), -1)
        self.mean, self.std, self.loss_scale = values.mean(dim=0), _spread(values), None
        return self

    def loss_description(self) -> str:
        """What the loss is and on which scale, for the run's plan: ``MSE on standardised targets (std 21.8)``."""
        name = {"mse": "MSE", "l1": "L1", "huber": "Huber"}[self.loss_name]
        scale = self.std if self.loss_scale is None else self.loss_scale
        if self.loss_scale is None and bool((self.std == 1).all()) and bool((self.mean == 0).all()):
            return f"{name} in the targets' units (not standardised)"
        stds = ", ".join(f"{v:.4g}" for v in scale.tolist())
        baseline = "; 1.0 = always predicting the mean" if self.loss_name == "mse" else ""
        return f"{name} on standardised targets (std {stds}{baseline})"

    def _columns(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Targets as ``(B, K)`` columns matching ``outputs``."""
        return targets.reshape(outputs.shape) if targets.ndim == 1 and outputs.ndim == 2 else targets

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The chosen loss between outputs and standardised targets (outputs in units with ``loss_scale``:
        both divided by it, the same function of the errors)."""
        targets = self._columns(outputs, targets).to(outputs.dtype)
        if self.loss_scale is not None:
            scale = self.loss_scale.to(outputs.device, outputs.dtype)
            values = outputs * self.std.to(outputs.device) + self.mean.to(outputs.device)
            return _LOSSES[self.loss_name](values / scale, targets / scale)
        scaled = (targets - self.mean.to(outputs.device)) / self.std.to(outputs.device)
        return _LOSSES[self.loss_name](outputs, scaled)

    def check(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Float targets with one value per output."""
        if not targets.is_floating_point():
            classify = option("task='classify'", "--task classify")
            raise TargetError(
                f"regression: needs float targets, got integer targets of shape {tuple(targets.shape)} (class "
                f"indices? use {classify}; integer counts: convert with .float())."
            )
        if outputs.ndim != 2 or self._columns(outputs, targets).shape != outputs.shape:
            raise TargetError(
                f"regression: outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} do not match; "
                f"graft the model with one output per target column."
            )
        if self.mean.numel() not in (1, outputs.shape[1]):
            raise TargetError(f"regression: {self.mean.numel()} target means for {outputs.shape[1]} outputs.")

    def metric(self, name: str, outputs: torch.Tensor) -> torchmetrics.Metric:
        """An accumulator for ``name`` (``r2`` averaged over the target columns)."""
        import torchmetrics

        self.check_metric_name(name)
        columns = int(outputs.shape[1]) if outputs.ndim == 2 else 1
        if name == "mae":
            return torchmetrics.MeanAbsoluteError()
        if name == "rmse":
            return torchmetrics.MeanSquaredError(squared=False)
        return torchmetrics.R2Score(multioutput="uniform_average") if columns > 1 else torchmetrics.R2Score()

    def metric_direction(self, name: str) -> bool:
        """``r2`` improves upwards, errors downwards."""
        return name == "r2"

    def update_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs in the targets' units, with the targets' shape (squeezed for one column)."""
        values = self.decode(outputs)["values"]
        targets = self._columns(outputs, targets).float()
        return (values.squeeze(1), targets.squeeze(1)) if values.shape[1] == 1 else (values, targets)

    def decode(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``values``: outputs mapped back to the targets' units."""
        outputs = outputs.float()
        return {"values": outputs * self.std.to(outputs.device) + self.mean.to(outputs.device)}

    def _values(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(true, predicted)`` values in the targets' units, ``(N, K)`` each."""
        from torchgraft.tasks.pictures import concatenated

        outputs, targets = concatenated(batches)
        predicted = self.decode(outputs)["values"]
        return self._columns(predicted, targets).float().reshape(predicted.shape), predicted

    def per_class(
        self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Per target column (``class``: its name): ``support``, ``mae``, ``rmse`` and ``r2`` in its units."""
        truth, predicted = self._values(batches)
        errors = predicted - truth
        rows = []
        for k, name in enumerate(classes):
            spread = float(((truth[:, k] - truth[:, k].mean()) ** 2).sum())
            r2 = 1 - float((errors[:, k] ** 2).sum()) / spread if spread > 0 else float("nan")
            mae, rmse = float(errors[:, k].abs().mean()), float((errors[:, k] ** 2).mean().sqrt())
            rows.append({"class": name, "support": len(truth), "mae": mae, "rmse": rmse, "r2": r2})
        return rows

    def pictures(
        self,
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        classes: Sequence[str],
        directory: Path,
        *,
        inputs: ValidationInputs | None = None,
        count: int = 8,
    ) -> list[Path]:
        """``scatter.png`` (predicted against true, per target, in units) and the ``count`` samples of largest
        error on the standardised scale (``worst.png``, texts: ``worst_texts``) with true and predicted values."""
        from torchgraft.tasks.pictures import plot_scatter, show_worst, worst

        truth, predicted = self._values(batches)
        files = [plot_scatter(truth, predicted, classes, directory / "scatter.png")]
        scale = self.std if self.loss_scale is None else self.loss_scale
        errors = (((predicted - truth) / scale) ** 2).sum(dim=1)
        chosen = worst(errors, count)

        def values(row: torch.Tensor) -> str:
            return ", ".join(f"{v:.4g}" for v in row.tolist())

        captions = [f"true {values(truth[i])}\npredicted {values(predicted[i])}" for i in chosen]
        scores = [("squared error (standardised)", [round(float(errors[i]), 4) for i in chosen])]
        return files + show_worst(inputs, chosen, captions, directory, total=len(truth), scores=scores)

    def record(self) -> dict[str, Any]:
        """The task name, target key, loss and the scale of the targets (and of the loss, for outputs in units)."""
        scale = {} if self.loss_scale is None else {"loss_scale": self.loss_scale.tolist()}
        units = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        return {**super().record(), "loss": self.loss_name, **units, **scale}


def _spread(values: torch.Tensor) -> torch.Tensor:
    """Per-column std of ``(N, K)`` values; 1 where it is 0 or there is one row."""
    std = values.std(dim=0) if len(values) > 1 else torch.ones(values.shape[1])
    return torch.where(std > 0, std, torch.ones_like(std))
