"""The kinds of input a run trains on (images, image + mask pairs, texts): what each recipe provides, the one
probe that picks the recipe for the data, and the pieces the image-like recipes share.

A recipe owns everything that depends on the kind of input: its defaults, the checks of the settings that
can fail before the data is read, the reader, the model builder (with its preprocessing), the loaders, the
validation examples an export records and the pictures a run draws. :func:`torchgraft.app.prepare.prepare_run`
calls a recipe top to bottom; a new kind of input is one more recipe in :data:`RECIPES`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchgraft.app.settings import TrainSettings
from torchgraft.data.images import usable_cores
from torchgraft.data.sampling import SeededSampler, SeededSamples, lone_last_batch
from torchgraft.tasks import TASKS

if TYPE_CHECKING:
    from torchgraft.ship.export import Preprocessor
    from torchgraft.tasks.pictures import ValidationInputs

__all__ = [
    "CUDA_PREFETCH",
    "Built",
    "InputRecipe",
    "LabelledData",
    "dataset_loaders",
    "default_workers",
    "read_options",
    "target_layout",
]

CUDA_PREFETCH = 4  # batches each loader process keeps ready on CUDA (PyTorch's default: 2)


class LabelledData(Protocol):
    """What a run reads from checked data of any kind (:class:`~torchgraft.data.folders.ImageData`,
    :class:`~torchgraft.data.masks.MaskData`, :class:`~torchgraft.data.texts.TextData`)."""

    classes: list[str]
    train: list[Any]
    valid: list[Any]
    task: str
    task_reason: str
    bad_rows: list[str]
    warnings: list[str]
    skipped: list[Any]

    @property
    def n_outputs(self) -> int: ...

    def summary(self) -> str: ...


@dataclass
class Built:
    """The grafted network of a run and what its export needs: where the weights came from, the name the
    export rebuilds it from, the preprocessing validation uses, and the extra files (a text model's tokenizer)
    written beside the export by ``save_assets(run_dir)``; a text model's tokenizer."""

    model: nn.Module
    origin: str
    architecture: str
    preprocessing: Preprocessor
    save_assets: Callable[[Path], list[Path]] = field(default=lambda run_dir: [])
    tokenizer: Any = None


class InputRecipe:
    """One kind of input. Subclasses set :attr:`name`, :attr:`defaults` and implement the hooks."""

    name: ClassVar[str] = "input"
    defaults: ClassVar[dict[str, Any]] = {}  # TrainSettings fields left None take these
    cache_features: ClassVar[bool] = False  # cache the frozen body's features while it is frozen

    def claims(self, data: Any, settings: TrainSettings) -> bool:
        """Whether ``data`` (a path or checked data) with ``settings`` is this kind of input."""
        raise NotImplementedError

    def check(self, settings: TrainSettings) -> None:
        """Refuse settings that do not apply to this input, and fail what can fail before the data is read
        (an unknown model, a missing weights file). ``settings`` have the defaults filled in."""

    def is_read(self, data: Any) -> bool:
        """Whether ``data`` is already checked data of this kind (then it is not read again)."""
        raise NotImplementedError

    def read(self, data: str | Path, settings: TrainSettings, *, progress: bool) -> LabelledData:
        """List, split and check the data (under ``torchrun``: on rank 0 only)."""
        raise NotImplementedError

    def build(self, data: LabelledData, settings: TrainSettings, say: Callable[[str], None]) -> Built:
        """The pretrained network with its new head (or decoder) for ``data``, and its preprocessing."""
        raise NotImplementedError

    def loaders(
        self, data: LabelledData, built: Built, settings: TrainSettings, device: torch.device
    ) -> tuple[Any, Any]:
        """The training and validation loaders."""
        raise NotImplementedError

    def examples(self, data: LabelledData, count: int = 4) -> list[str]:
        """A few validation inputs recorded in ``model.json`` (``deploy`` checks exported files on them)."""
        return [str(Path(x).resolve()) for x, _ in data.valid[:count]]

    def figures(self, data: LabelledData, built: Built, device: torch.device, run_dir: Path) -> list[Path]:
        """Pictures of the trained model on validation inputs (default: none)."""
        return []

    def validation_inputs(self, data: LabelledData) -> ValidationInputs | None:
        """The validation samples in the data's order, for the task's pictures of the worst ones (image files,
        or texts); default: none known."""
        return None


def target_layout(settings: TrainSettings) -> str | None:
    """The layout of targets the reader must produce for ``settings.task`` (a task name, registered ones
    included), or ``None`` to infer it from the data. ``y_range`` without a task means regression: whole-number
    targets (ages) are then values, not class names."""
    if settings.task is None and settings.y_range is not None:
        return TASKS["regression"].targets
    if settings.task is None or settings.task == "text":
        return None
    if settings.task not in TASKS:
        raise ValueError(
            f"--task {settings.task}: unknown task. Choose from {', '.join(TASKS)} or text, or register yours "
            f"with torchgraft.register_task."
        )
    return TASKS[settings.task].targets


def read_options(settings: TrainSettings) -> dict[str, Any]:
    """What the folder and table readers (:func:`~torchgraft.data.folders.image_data`,
    :func:`~torchgraft.data.texts.text_data`) take from the settings: the layout of targets, the columns, the
    split and what to do with bad rows."""
    return {
        "task": target_layout(settings),
        "x_col": settings.x_col,
        "y_col": settings.y_col,
        "valid_pct": settings.valid_pct,
        "seed": settings.seed,
        "skip_bad": settings.skip_bad,
    }


def default_workers() -> int:
    """Loader processes for this process's share of the cores it may run on (``os.sched_getaffinity``, else
    the CPU count; under ``torchrun``, shared among the ``LOCAL_WORLD_SIZE`` processes of the machine): one
    per core, less one for the training process itself when the share is more than two.

    Example:
        >>> default_workers()  # 16 cores, one process; under torchrun --nproc_per_node 4: 3
        15
    """
    share = max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return share - 1 if share > 2 else share


def dataset_loaders(
    train: Dataset,
    valid: Dataset,
    settings: TrainSettings,
    device: torch.device,
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> tuple[DataLoader, DataLoader]:
    """The training loader (shuffled from ``settings.seed``, ``batch_size``) and the validation loader (twice
    the batch) of an image run: ``workers`` processes (default: :func:`default_workers`), kept between
    epochs; on CUDA, pinned memory and :data:`CUDA_PREFETCH` batches in flight per worker. The training
    samples are drawn by a :class:`~torchgraft.data.sampling.SeededSampler`, each augmented from a seed of its
    own, so a run under ``torchrun`` augments exactly as one process does, and a resumed run exactly as the
    uninterrupted one, whatever the number of workers; an epoch that would end on a batch of one sample drops
    it (:func:`~torchgraft.data.sampling.lone_last_batch`). ``collate_fn`` makes the batches of both (PyTorch's
    default when ``None``; :class:`~torchgraft.data.preprocess.PixelCollate` for uint8 crops)."""
    workers = settings.workers if settings.workers is not None else default_workers()
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda", "collate_fn": collate_fn}
    if workers > 0:
        options["persistent_workers"] = True
        if device.type == "cuda":
            options["prefetch_factor"] = CUDA_PREFETCH
    assert settings.batch_size is not None
    sampler = SeededSampler(len(train), seed=settings.seed)  # type: ignore[arg-type]
    lone = lone_last_batch(len(sampler), settings.batch_size)
    return (
        DataLoader(SeededSamples(train), batch_size=settings.batch_size, sampler=sampler, drop_last=lone, **options),
        DataLoader(valid, batch_size=settings.batch_size * 2, **options),
    )
