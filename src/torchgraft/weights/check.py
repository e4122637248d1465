"""What a run checks of its ``--model``/``--weights`` before it reads any data: a weights file that is not
there, a timm name timm does not know. Standard library only at import (the command line checks before torch is
imported: an offline ``--model timm/<typo>`` is refused in well under a second once timm's names are cached).
"""

from __future__ import annotations

from pathlib import Path

from torchgraft.spelling import option
from torchgraft.weights.timm_names import check_timm_name

__all__ = ["HUB_NAMES", "check_weights", "weights_file"]

HUB_NAMES = ("imagenet", "default", "pretrained")


def weights_file(weights: str) -> Path | None:
    """The checkpoint path ``weights`` names, or ``None`` for ``"none"`` and the hub names; cheap, so a run can
    check it before scanning its data.

    Raises:
        FileNotFoundError: ``weights`` is neither a known name nor an existing file.
    """
    if weights.lower() in ("none", *HUB_NAMES):
        return None
    path = Path(weights)
    if not path.is_file():
        given, names = (
            option(f"weights={weights!r}", f"--weights {weights}"),
            option("'imagenet' / 'none'", "imagenet / none"),
        )
        raise FileNotFoundError(f"{given}: no such file (or use {names}).")
    return path


def check_weights(architecture: str, weights: str = "imagenet") -> None:
    """Fail now, before any data is read and without the network, what :func:`pretrained_model` would fail
    later: a missing weights file, an unknown timm name. (Hub weights that cannot be had fail when the model is
    built, in about a second offline: one connection attempt, no retries.)

    Raises:
        FileNotFoundError, UnknownModelError: as :func:`pretrained_model`.
    """
    if weights_file(weights) is None and weights.lower() != "none" and architecture.startswith(("timm/", "timm:")):
        check_timm_name(architecture[5:])
