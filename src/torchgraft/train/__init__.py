"""Training: the Learner and its loop, callbacks (progress, best epoch, checkpoints), the measured recipes and the
stages of a fine-tune, lr_find, the feature cache, run state, distributed."""

from typing import TYPE_CHECKING

from torchgraft._lazy import lazy_exports

if TYPE_CHECKING:  # at run time each name is imported when first read (torchgraft._lazy)
    from torchgraft.train.callbacks import BestEpoch, Callback, Checkpointer, EarlyStopping, LambdaCallback
    from torchgraft.train.learner import Learner
    from torchgraft.train.loop import TrainingDivergedError
    from torchgraft.train.recipes import RECIPES, Recipe, recipe_for
    from torchgraft.train.stages import Stage, plan_text, stage_rates

_EXPORTS: dict[str, tuple[str, ...]] = {
    "torchgraft.train.callbacks": ("BestEpoch", "Callback", "Checkpointer", "EarlyStopping", "LambdaCallback"),
    "torchgraft.train.learner": ("Learner",),
    "torchgraft.train.loop": ("TrainingDivergedError",),
    "torchgraft.train.recipes": ("RECIPES", "Recipe", "recipe_for"),
    "torchgraft.train.stages": ("Stage", "plan_text", "stage_rates"),
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = [
    "RECIPES",
    "BestEpoch",
    "Callback",
    "Checkpointer",
    "EarlyStopping",
    "LambdaCallback",
    "Learner",
    "Recipe",
    "Stage",
    "TrainingDivergedError",
    "plan_text",
    "recipe_for",
    "stage_rates",
]
