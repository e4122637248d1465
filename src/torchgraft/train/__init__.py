"""Training: the Learner and its loop, callbacks (progress, best epoch, checkpoints), the measured recipes and the
stages of a fine-tune, lr_find, the feature cache, run state, distributed."""

from torchgraft.train.callbacks import BestEpoch, Callback, Checkpointer, EarlyStopping, LambdaCallback
from torchgraft.train.learner import Learner
from torchgraft.train.loop import TrainingDivergedError
from torchgraft.train.recipes import RECIPES, Recipe, recipe_for
from torchgraft.train.stages import Stage, plan_text

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
]
