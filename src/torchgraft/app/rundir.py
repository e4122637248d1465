"""A run folder holds one run: training into a folder that holds an earlier run either refuses (naming
overwrite and resume) or, with overwrite, first removes every file the earlier run wrote — the files
torchgraft writes into a RUN_DIR, by name, and nothing else (a user's own files stay).

So a new model never sits beside an earlier run's ``model.onnx``, ``model.pt2`` or plots that would answer for it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["DEPLOYED", "RUN_FILES", "RUN_FOLDERS", "RunDirInUse", "claim_run_dir", "earlier_run_files"]

# every file torchgraft train / export writes at the top of a RUN_DIR (ship.deploy's metadata names included)
RUN_FILES = (
    "model.safetensors",
    "model.json",
    "adapter_model.safetensors",
    "adapter_config.json",
    "history.csv",
    "history.json",
    "plan.txt",
    "loss.png",
    "lr.png",
    "confusion.png",
    "masks.png",
    "report.html",
    "per_class.csv",
    "model.onnx",
    "model.pt2",
    "preprocessing.json",
    "preprocessing.pt2.json",
    "model.partial.onnx",
    "model.partial.pt2",
    "model.json.partial",
    "model.safetensors.partial",
)
RUN_FOLDERS = ("checkpoints", "hf", "pictures")  # written whole by a run: checkpoints, a text model's tokenizer, the
# task's pictures
DEPLOYED = ("model.onnx", "model.pt2", "preprocessing.json", "preprocessing.pt2.json")  # torchgraft export's files
# what says a run got somewhere (a folder holding only plan.txt is a run killed before its first checkpoint:
# nothing of it can answer for the next run, which rewrites plan.txt)
_MARKERS = ("model.json", "model.safetensors", "history.json", "checkpoints/last.pt", "checkpoints/best.pt", *DEPLOYED)
RUN_FOLDERS += ("tensorboard", "mlruns")  # --log tensorboard's event files, --log mlflow's local store


class RunDirInUse(ValueError):
    """A RUN_DIR already holds an earlier run and neither overwrite nor resume was asked for.

    The message speaks Python (``overwrite=True``), or with ``cli`` the CLI's flags (``--overwrite``).
    """

    def __init__(self, run_dir: Path, found: list[str], *, cli: bool = False) -> None:
        self.run_dir, self.found = run_dir, found
        words = ("--overwrite", "--resume", "train") if cli else ("overwrite=True", "resume=True", "train_run")
        super().__init__(self._message(*words))

    def __reduce__(self) -> tuple[object, ...]:  # picklable (on_main hands it to every rank): rebuilt as it was
        return (_rebuild, (self.run_dir, self.found, self.args[0]))

    def _message(self, overwrite: str, resume: str, where: str) -> str:
        shown = ", ".join(self.found[:4]) + (f" (and {len(self.found) - 4} more)" if len(self.found) > 4 else "")
        return (
            f"{where}: {self.run_dir} already holds an earlier run ({shown}); pass {overwrite} to remove that run's "
            f"files first, {resume} to continue it, or choose another folder."
        )


def _rebuild(run_dir: Path, found: list[str], message: str) -> RunDirInUse:
    error = RunDirInUse(run_dir, found)
    error.args = (message,)
    return error


def earlier_run_files(run_dir: str | Path) -> list[str]:
    """The names (relative to ``run_dir``) of the files and folders an earlier run wrote there, sorted; empty
    when ``run_dir`` holds no run (missing, empty, or only other files)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any((run_dir / marker).exists() for marker in _MARKERS):
        return []
    return sorted(name for name in (*RUN_FILES, *RUN_FOLDERS) if (run_dir / name).exists())


def claim_run_dir(run_dir: str | Path, *, overwrite: bool, resume: bool) -> list[str]:
    """Make ``run_dir`` ready for a new run: nothing to do when it holds no earlier run; with ``overwrite``
    remove the earlier run's files (:data:`RUN_FILES`, :data:`RUN_FOLDERS`) and return their names; with
    ``resume`` remove only what ``torchgraft export`` made of the model before (:data:`DEPLOYED`: the resumed
    run exports another model, which those files would contradict); else raise.

    Raises:
        RunDirInUse: an earlier run is there and neither ``overwrite`` nor ``resume`` is set.
        ValueError: both ``overwrite`` and ``resume``.

    Example:
        >>> claim_run_dir("runs/pets", overwrite=True, resume=False)
        ['checkpoints', 'history.csv', 'history.json', 'model.json', 'model.onnx', ...]
    """
    if overwrite and resume:
        raise ValueError(
            "train: overwrite and resume contradict each other (resume continues the earlier run); choose one."
        )
    run_dir = Path(run_dir)
    found = earlier_run_files(run_dir)
    if resume:
        found = [name for name in found if name in DEPLOYED]
    elif found and not overwrite:
        raise RunDirInUse(run_dir, found)
    for name in found:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return found
