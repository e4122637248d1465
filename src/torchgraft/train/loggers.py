"""The loggers a Learner (``Learner(loggers=...)``) or a run (``torchgraft train --log``) is given by name, made
with their defaults: ``"tensorboard"`` (:class:`~torchgraft.train.track_tensorboard.TensorBoardLogger`) and
``"mlflow"`` (:class:`~torchgraft.train.track_mlflow.MLflowLogger`); each imports its library only when asked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torchgraft.choices import LOGGERS
from torchgraft.spelling import option
from torchgraft.train.tracking import Tracker

__all__ = ["LOGGERS", "make_loggers"]


def make_loggers(loggers: Sequence[str | Tracker] | str, *, run_dir: str | Path | None = None) -> list[Tracker]:
    """The :class:`~torchgraft.train.tracking.Tracker` of each entry of ``loggers``: a tracker as it is, a name
    (or ``"a,b"``) made with its defaults. Without ``run_dir``: TensorBoard's own folder (``runs/<date>_<host>``)
    and MLflow's ``MLFLOW_TRACKING_URI``, else a local store in ``./mlruns``; with ``run_dir`` (a
    ``torchgraft train`` run): ``RUN_DIR/tensorboard``, and ``RUN_DIR/mlruns`` when ``MLFLOW_TRACKING_URI`` is
    unset, the run named after the folder.

    Raises:
        ValueError: a name that is no logger, or one named twice.
        ImportError: a logger's library is not installed (the message gives the install command).

    Example:
        >>> make_loggers("tensorboard,mlflow", run_dir="runs/pets")
        [<TensorBoardLogger>, <MLflowLogger>]
    """
    entries = [loggers] if isinstance(loggers, str) else list(loggers)
    bad = [entry for entry in entries if not isinstance(entry, str | Tracker)]
    if bad:
        raise TypeError(
            f"Learner: loggers holds a {type(bad[0]).__name__}; give logger names ({', '.join(LOGGERS)}) or "
            f"Tracker objects (torchgraft.train.track_tensorboard.TensorBoardLogger, track_mlflow.MLflowLogger)."
        )
    named = [part.strip() for entry in entries if isinstance(entry, str) for part in entry.split(",") if part.strip()]
    unknown = [name for name in named if name not in LOGGERS]
    if unknown or len(set(named)) != len(named):
        what = f"{', '.join(map(repr, unknown))} is no logger" if unknown else "a logger is named twice"
        example = option('loggers=["tensorboard", "mlflow"]', "--log tensorboard,mlflow")
        raise ValueError(f"{option('loggers', '--log')}: {what}; choose from {', '.join(LOGGERS)} (e.g. {example}).")
    folder = Path(run_dir) if run_dir is not None else None
    made: list[Tracker] = []
    for entry in entries:
        if isinstance(entry, Tracker):
            made.append(entry)
            continue
        for name in (part.strip() for part in entry.split(",") if part.strip()):
            made.append(_made(name, folder))
    return made


def _made(name: str, folder: Path | None) -> Tracker:
    """The logger ``name`` with its defaults (in ``folder``, a RUN_DIR, when given)."""
    if name == "tensorboard":
        from torchgraft.train.track_tensorboard import TensorBoardLogger

        return TensorBoardLogger(folder / "tensorboard" if folder is not None else None)
    from torchgraft.train.track_mlflow import MLflowLogger

    if folder is None:
        return MLflowLogger()
    return MLflowLogger(local_dir=folder / "mlruns", run_name=folder.resolve().name)
