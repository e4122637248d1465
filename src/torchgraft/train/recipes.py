"""The measured fine-tuning recipes: one table of rates per kind of model and task, read by
:meth:`Learner.fine_tune <torchgraft.Learner.fine_tune>` for what it is not given, and by ``torchgraft train``.

=========  ========  =======  =========  ===========  ==========================================
kind       lr        lr_mult  frozen_lr  keep_frozen  measured by
=========  ========  =======  =========  ===========  ==========================================
image      3e-3      1        (lr)       0            bench/finetune_targets.py
text       1e-3      10       3e-2       0            bench/text.py (a head on cached features)
segment    4e-3      1        4e-3       -1           bench/segment.py (the backbone stays frozen)
detect     3e-4      1        (lr)       0            bench/detect.py (choosing targets)
=========  ========  =======  =========  ===========  ==========================================

The kind is ``segment`` for a segmentation task, ``detect`` for a task that trains on boxes, ``text`` for a
model that reads token ids (a Hugging Face text model inside, as :func:`torchgraft.graft` records it: a config
with a vocabulary), else ``image`` (docs/benchmarks.md has the measurements; detection's rate was chosen on
bench/detect.py's choosing targets and is reported on the others).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the command line reads RECIPES for its help without importing torch
    from torch import nn

    from torchgraft.tasks import Task

__all__ = ["RECIPES", "Kind", "Recipe", "model_kind", "recipe_for"]

Kind = Literal["image", "text", "segment", "detect"]


@dataclass(frozen=True)
class Recipe:
    """The rates of :meth:`Learner.fine_tune <torchgraft.Learner.fine_tune>` for one kind of model.

    Attributes:
        lr: the head's rate in the unfrozen stages (the highest).
        lr_mult: the first layer group trains at ``lr / lr_mult`` (1: every group at ``lr``).
        frozen_lr: the head's rate while the body is frozen (``None``: ``lr``).
        keep_frozen: layer groups that stay frozen after the frozen stage (-1: every body group).
    """

    lr: float
    lr_mult: float = 1.0
    frozen_lr: float | None = None
    keep_frozen: int = 0

    def filled(self, **given: Any) -> Recipe:
        """This recipe with every field given as not ``None`` replaced (what a caller chose wins).

        Example:
            >>> RECIPES["text"].filled(lr=2e-3, lr_mult=None)
            Recipe(lr=0.002, lr_mult=10.0, frozen_lr=0.03, keep_frozen=0)
        """
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        """The fields by name (``torchgraft train`` fills the settings left ``None`` from it)."""
        return dataclasses.asdict(self)


RECIPES: dict[str, Recipe] = {
    "image": Recipe(lr=3e-3, lr_mult=1.0, frozen_lr=None, keep_frozen=0),
    "text": Recipe(lr=1e-3, lr_mult=10.0, frozen_lr=3e-2, keep_frozen=0),
    "segment": Recipe(lr=4e-3, lr_mult=1.0, frozen_lr=4e-3, keep_frozen=-1),
    "detect": Recipe(lr=3e-4, lr_mult=1.0, frozen_lr=None, keep_frozen=0),
}


def model_kind(model: nn.Module, task: Task) -> Kind:
    """``"segment"`` for a segmentation task, ``"detect"`` for one that trains on boxes, ``"text"`` for a model
    that reads token ids, else ``"image"``."""
    from torchgraft.grafting.dryrun import default_example

    if task.name == "segment":
        return "segment"
    if task.targets == "detect":
        return "detect"
    return "text" if default_example(model) is not None else "image"


def recipe_for(model: nn.Module, task: Task) -> Recipe:
    """The measured recipe of ``model``'s kind and ``task`` (:data:`RECIPES`).

    Example:
        >>> recipe_for(graft(AutoModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2"), 5), Classification())
        Recipe(lr=0.001, lr_mult=10.0, frozen_lr=0.03, keep_frozen=0)
    """
    return RECIPES[model_kind(model, task)]
