"""matplotlib for the PNG files torchgraft writes (a run's curves, a task's pictures): imported only when a
figure is asked for, with the install hint when it is missing, drawn off screen, saved at one resolution.

The training plots (:mod:`torchgraft.train.plots`) and the tasks' pictures (:mod:`torchgraft.tasks.pictures`)
both draw through it, so neither imports the other and ``import torchgraft`` imports no matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DPI", "pyplot", "save_figure"]

DPI = 100  # every PNG a run writes


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only: no display needed).

    Raises:
        ImportError: matplotlib is not installed, with the install command.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib (or torchgraft[plot])") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | Path) -> Path:
    """Lay ``figure`` out, write it to ``path`` as a PNG (folders made), close it; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    pyplot().close(figure)
    return path
