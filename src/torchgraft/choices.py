"""The words the options accept, in one module that imports nothing: the command line builds its parsers (and
``torchgraft --help``) from them without importing torch. Each owning module re-exports its own and checks
against them: :mod:`torchgraft.data.images` (``CHECKS``), :mod:`torchgraft.train.placement` (``BATCHNORM_MODES``,
``STRATEGIES``), :mod:`torchgraft.grafting.decoders` (``DECODERS``), :mod:`torchgraft.grafting.detector`
(``DETECTOR_HEADS``, ``DETECTOR_BATCH_NORM``), :mod:`torchgraft.ship.export` (``ADAPTER_EXPORTS``),
:mod:`torchgraft.ship.program` (``DEPLOY_FORMATS``), :mod:`torchgraft.tasks` (the built-in task names),
:mod:`torchgraft.train.loggers` (``LOGGERS``)."""

from __future__ import annotations

import sys

__all__ = [
    "ADAPTER_EXPORTS",
    "BATCHNORM_MODES",
    "BUILT_IN_TASKS",
    "CHECKS",
    "DECODERS",
    "DEPLOY_FORMATS",
    "DETECTOR_BATCH_NORM",
    "DETECTOR_HEADS",
    "LOGGERS",
    "STRATEGIES",
    "task_names",
]

CHECKS: tuple[str, ...] = ("header", "full", "none")  # how much of each file scan_images reads, cheapest first
BATCHNORM_MODES: tuple[str, ...] = ("train", "eval", "sync")
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp")
DECODERS: tuple[str, ...] = ("unet", "fpn")
DETECTOR_HEADS: tuple[str, ...] = ("fcos", "retinanet", "fasterrcnn")  # graft_detector's torchvision detectors
DETECTOR_BATCH_NORM: tuple[str, ...] = ("frozen", "train")  # graft_detector: the backbone's BatchNorm
ADAPTER_EXPORTS: tuple[str, ...] = ("merge", "separate")
DEPLOY_FORMATS: tuple[str, ...] = ("onnx", "pt2")
LOGGERS: tuple[str, ...] = ("tensorboard", "mlflow")  # the trackers a run logs to (torchgraft.train.loggers)
BUILT_IN_TASKS: tuple[str, ...] = ("classify", "multilabel", "regression", "segment", "detect")


def task_names() -> list[str]:
    """The names ``--task`` accepts: the task registry's when :mod:`torchgraft.tasks` is imported (it holds
    the tasks given to :func:`torchgraft.register_task`, which only a process that imported it can have),
    else the built-in ones (the registry holds exactly those until something is registered)."""
    registry = sys.modules.get("torchgraft.tasks")
    tasks = getattr(registry, "TASKS", None)
    return list(tasks) if tasks is not None else list(BUILT_IN_TASKS)
