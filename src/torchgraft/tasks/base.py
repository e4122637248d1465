"""The Task contract: everything about a learning problem that the training loop and the application must not
hard-code.

A task owns how a batch becomes model inputs and targets, which layout of targets the data readers must
produce, the default loss, which metrics fit its targets (and in which direction they improve), how it fits
itself to the training targets, the report written after training, how outputs decode into predictions, and
what an export and a deployed file record so that ``predict`` can read it back. The Learner, ``lr_find``, the
feature cache and run/export/predict/deploy go through it, so a task defined outside the package (registered
with :func:`torchgraft.tasks.register_task`) trains, exports, predicts and deploys like the built-in ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from torchgraft.tasks.batch import call_model, output_tensor, split_batch

if TYPE_CHECKING:
    import torchmetrics

    from torchgraft.tasks.pictures import ValidationInputs

__all__ = ["TARGET_LAYOUTS", "Task", "TaskReport"]

# the layouts of targets the data readers produce: class indices, 0/1 rows, floats, class-index masks, and
# per-image {"boxes", "labels"} dicts
TARGET_LAYOUTS = ("classify", "multilabel", "regression", "segment", "detect")


@dataclass
class TaskReport:
    """What a task found on the validation set after training (:meth:`Task.report`).

    Attributes:
        final: values for the run's summary and ``model.json`` (per-class IoU, the chosen threshold, ...).
        lines: what to print, one line each.
        confusion: a ``classes x classes`` confusion matrix to draw (rows: true class), or ``None``.
    """

    final: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    confusion: list[list[int]] | None = None


class Task:
    """Base class of tasks; subclasses set :attr:`name`, :attr:`metric_names` and implement the hooks.

    Args:
        target_key: the key of the targets in mapping batches (``labels``, as Hugging Face collators write).
    """

    name: ClassVar[str] = "task"
    metric_names: ClassVar[tuple[str, ...]] = ()
    default_metrics: ClassVar[tuple[str, ...]] = ()
    targets: ClassVar[str] = "classify"  # the layout of targets it trains on (one of TARGET_LAYOUTS)
    dense: ClassVar[bool] = False  # outputs per pixel, (N, C, H, W): whole images in, masks out
    output: ClassVar[str] = "probabilities"  # the entry of decode() a deployed file returns
    # whether evaluation computes ``valid_loss`` with loss(outputs, targets); False for a task whose evaluation
    # outputs are not what its loss reads (detection: boxes in evaluation, the model's own losses in training)
    validation_loss: ClassVar[bool] = True

    @classmethod
    def for_run(cls, **options: Any) -> Task:
        """The task a ``torchgraft train`` run makes, from the run's options (``threshold``, ``dice_weight``,
        ``y_range``: each task takes those it knows; the base class takes none)."""
        return cls()

    def fit_targets(self, targets: Sequence[Any]) -> Task:
        """Fit the task to the training set's targets (as the data reader holds them: class indices, label
        tuples, value tuples, mask paths) before training (regression: their mean and std); returns self. The
        base class keeps nothing."""
        return self

    def __init__(self, *, target_key: str = "labels") -> None:
        self.target_key = target_key

    def split(self, batch: Any) -> tuple[Any, Any]:
        """``(inputs, targets)`` of a batch (see :func:`torchgraft.tasks.batch.split_batch`)."""
        return split_batch(batch, target_key=self.target_key)

    def outputs(self, raw: Any) -> torch.Tensor:
        """The tensor the loss and metrics read from what the model returned (``logits`` of a ModelOutput)."""
        return output_tensor(raw)

    def forward(self, model: nn.Module, inputs: Any, targets: Any, *, training: bool) -> Any:
        """The forward of one batch (inputs and targets on the device): what :meth:`loss` reads while training
        (``training=True``, the model in training mode) and what the metrics and :meth:`kept` read in evaluation.
        By default :meth:`outputs` of ``model(inputs)`` (``model(**inputs)`` for a mapping), the same in both
        modes. A task whose model computes its own loss overrides it: detection calls ``model(images,
        targets)`` while training (the losses) and ``model(images)`` in evaluation (the boxes), and sets
        :attr:`validation_loss` to ``False``."""
        return self.outputs(call_model(model, inputs))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The default training loss."""
        raise NotImplementedError

    def loss_description(self) -> str:
        """What the loss is and on which scale, for a run's plan (regression: on standardised targets, with
        their std); empty: nothing to say."""
        return ""

    def check(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Raise a clear error when ``targets`` are not of the kind this task trains on."""

    def check_training(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Checked on the first training batch of every fit (default: :meth:`check`)."""
        self.check(outputs, targets)

    def check_metric_name(self, name: str) -> None:
        """Raise ``ValueError`` naming the metrics that fit this task when ``name`` is not one of them."""
        if name not in self.metric_names:
            raise ValueError(
                f"unknown metric {name!r} for the {self.name} task. Choose from {', '.join(self.metric_names)}, "
                f"or pass a torchmetrics Metric or a callable(outputs, targets)."
            )

    def metric(self, name: str, outputs: torch.Tensor) -> torchmetrics.Metric:
        """A fresh accumulator for metric ``name``, sized from a first batch of ``outputs``."""
        raise NotImplementedError

    def build_metrics(self, names: Sequence[str], outputs: Any) -> dict[str, torchmetrics.Metric]:
        """Fresh accumulators for the metrics ``names`` of one :class:`~torchgraft.tasks.metrics.MetricSet`,
        built together from a first batch of ``outputs``: by default :meth:`metric` of each. A task whose
        metrics are values of one computation overrides it to share it (detection: one COCO evaluation gives
        ``map``, ``map_50`` and ``map_75``)."""
        return {name: self.metric(name, outputs) for name in names}

    def update_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What this task's own metrics are fed for one batch (default: outputs and targets as they are;
        regression maps outputs back to the targets' units)."""
        return outputs, targets

    def metric_direction(self, name: str) -> bool:
        """Whether a larger value of metric ``name`` is better."""
        return True

    def decode(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions from raw outputs (probabilities, labels, values, masks)."""
        raise NotImplementedError

    def report(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[str]) -> TaskReport:
        """What a run reports after training from the validation set's ``(outputs, targets)`` batches (on the
        CPU, in order); may set what the task decides on validation (multi-label: the threshold) before the
        export records it. The base class reports nothing (the batches are not read)."""
        return TaskReport()

    def pictures(
        self,
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        classes: Sequence[str],
        directory: Path,
        *,
        inputs: ValidationInputs | None = None,
        count: int = 8,
    ) -> list[Path]:
        """The task's own pictures of the validation set, as PNG files in ``directory`` (a run's
        ``RUN_DIR/pictures``), from the batches :meth:`kept` made (the exported epoch's, in the validation
        order): the confusion matrix and the ``count`` highest-loss samples (classification), per-label F1 and
        the threshold curve (multi-label), predicted against true (regression), the worst masks
        (segmentation). ``inputs`` says what the samples are, to show the worst ones (images, or texts as a
        table); without it those are left out. Returns the files written; the base class draws none. Needs
        matplotlib (:mod:`torchgraft.figures`)."""
        return []

    def per_class(
        self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[str]
    ) -> list[dict[str, Any]]:
        """One row per class (or label, or target) of the task's per-class metrics over the validation set,
        from the batches :meth:`kept` made: ``class``, ``support`` and the values (a run writes them to
        ``RUN_DIR/per_class.csv``). The base class has none."""
        return []

    def kept(self, outputs: torch.Tensor, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """What a run keeps of one validation batch for :meth:`report`, on the CPU (the report after training
        then reads the exported epoch's validation instead of a second pass: :mod:`torchgraft.train.kept`): by
        default the float outputs and the targets as they are. A task whose report needs less keeps less
        (segmentation: the predicted classes, not the logits); its report must accept what this returns."""
        return outputs.detach().float().cpu(), torch.as_tensor(targets).cpu()

    def prediction(
        self, decoded: dict[str, torch.Tensor], classes: Sequence[str], *, top_k: int
    ) -> tuple[list[tuple[str, float]], dict[str, float]]:
        """One sample's ``(top, values)`` from its :meth:`decode` (batch of one): ``top`` the ``top_k``
        classes by probability, best first, or ``values`` by name when the task decodes ``values``."""
        if "values" in decoded:
            return [], {name: float(v) for name, v in zip(classes, decoded["values"][0].tolist(), strict=True)}
        probabilities, indices = decoded["probabilities"][0].topk(max(1, min(top_k, len(classes))))
        return [(classes[i], float(p)) for p, i in zip(probabilities.tolist(), indices.tolist(), strict=True)], {}

    def deploy_record(self) -> dict[str, Any]:
        """What ``preprocessing.json`` says about the deployed file's output beyond its name (multi-label:
        the threshold; segmentation: how the mask is read)."""
        return {}

    def record(self) -> dict[str, Any]:
        """What an export writes about the task (``predict`` rebuilds the task from it)."""
        return {"name": self.name, "target_key": self.target_key}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target_key={self.target_key!r})"
