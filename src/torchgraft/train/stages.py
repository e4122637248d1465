"""The stages of a fine-tune, as data: which layer groups each one freezes, at which rates the others train,
for how many epochs, on cached features or not. :meth:`Learner.fine_tune <torchgraft.Learner.fine_tune>`
runs exactly the list :func:`plan_stages` returns, and :func:`plan_text` prints it, so the plan a run shows
is the plan it runs.

Example:
    >>> print(plan_text(learner.stages(2, freeze_epochs=1, keep_frozen=1)))
    stages (as fine_tune runs them):
      frozen    1 epoch   frozen: body0, body1  trains: head 0.003  features cached
      unfrozen  2 epochs  frozen: body0  trains: body1 0.003, head 0.003
"""

from __future__ import annotations

from dataclasses import dataclass

from torchgraft.spelling import option
from torchgraft.train.recipes import Recipe
from torchgraft.tune.groups import LayerGroups
from torchgraft.tune.optim import LRSpec, group_lrs

__all__ = ["GroupPlan", "Stage", "plan_stages", "plan_text", "stage_rates"]


@dataclass(frozen=True)
class GroupPlan:
    """One layer group in one stage: its name, whether it trains, its rate (the one-cycle maximum)."""

    name: str
    trainable: bool
    lr: float


@dataclass(frozen=True)
class Stage:
    """One one-cycle fit of a fine-tune.

    Attributes:
        name: ``"frozen"`` (the body frozen), ``"topN"`` (gradual: the top N groups train), ``"unfrozen"``.
        epochs: epochs of the stage.
        frozen: leading layer groups frozen (:func:`torchgraft.freeze_to`).
        lr: what the stage's fit is given (a float, or ``slice(lo, hi)`` over the groups).
        groups: every layer group, frozen or trainable, with its rate.
        cached: whether the head trains on cached body features (``cache_features=True`` and the whole
            body frozen with ``bn="frozen"``; a body with random layers is still run, the fit says so).
    """

    name: str
    epochs: int
    frozen: int
    lr: LRSpec
    groups: tuple[GroupPlan, ...]
    cached: bool

    @property
    def rates(self) -> list[float | None]:
        """Each layer group's rate in this stage, ``None`` for a group it leaves frozen (plan order)."""
        return [g.lr if g.trainable else None for g in self.groups]

    def __str__(self) -> str:
        frozen = ", ".join(g.name for g in self.groups if not g.trainable) or "none"
        trains = ", ".join(f"{g.name} {g.lr:.3g}" for g in self.groups if g.trainable)
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        cached = "  features cached" if self.cached else ""
        return f"{self.name:<9} {epochs:<9} frozen: {frozen}  trains: {trains}{cached}"


def _frozen_counts(
    groups: LayerGroups, epochs: int, freeze_epochs: int, gradual: bool, keep_frozen: int
) -> list[tuple[str, int, int]]:
    """``(stage name, frozen groups, epochs)`` of each stage."""
    count, new = len(groups), groups.n_new  # new: the head (and a dense graft's decoder) train throughout
    keep_frozen = count - new + 1 + keep_frozen if keep_frozen < 0 else keep_frozen  # -1: every body group
    if not 0 <= keep_frozen <= count - new:
        raise ValueError(
            f"fine_tune: {option(f'keep_frozen={keep_frozen}', f'--keep-frozen {keep_frozen}')}, but the model has "
            f"{count - new} body groups "
            f"({', '.join(g.name for g in groups.groups)}); give 0..{count - new}."
        )
    stages = [("frozen", count - new, freeze_epochs)] if freeze_epochs > 0 else []
    if gradual:  # each epoch one more group from the top, until every group trains
        partial = min(epochs, max(0, count - new - 1))
        stages += [(f"top{k + new + 1}", count - k - new - 1, 1) for k in range(partial)]
        stages = [(name, max(frozen, keep_frozen), n) for name, frozen, n in stages]
        epochs -= partial
    return stages + ([("unfrozen", keep_frozen, epochs)] if epochs > 0 else [])


def plan_stages(
    groups: LayerGroups,
    epochs: int,
    *,
    recipe: Recipe,
    freeze_epochs: int = 1,
    gradual: bool = False,
    cache: bool = False,
) -> list[Stage]:
    """The stages of ``fine_tune(epochs, freeze_epochs=..., gradual=...)`` with ``recipe``'s rates and
    ``keep_frozen``, over ``groups`` (the model's layer groups). ``cache``: the Learner caches features
    while the body is fully frozen (``cache_features=True``, ``bn="frozen"``, a grafted model).

    Raises:
        ValueError: ``keep_frozen`` beyond the model's body groups.
    """
    body = len(groups) - groups.n_new
    stages = []
    for name, frozen, n in _frozen_counts(groups, epochs, freeze_epochs, gradual, recipe.keep_frozen):
        lr: LRSpec = (
            (recipe.frozen_lr or recipe.lr) if name == "frozen" else slice(recipe.lr / recipe.lr_mult, recipe.lr)
        )
        rates = group_lrs(lr, len(groups), names=[g.name for g in groups])
        plans = tuple(
            GroupPlan(g.name, i >= frozen, rate) for i, (g, rate) in enumerate(zip(groups, rates, strict=True))
        )
        stages.append(Stage(name, n, frozen, lr, plans, cache and frozen >= body))
    return stages


def stage_rates(stages: list[Stage]) -> list[tuple[str, list[float | None]]]:
    """``(stage name, each layer group's rate or None when frozen)`` per stage: the columns of the layer-group
    table that shows which groups each stage trains (``describe(model, stages=stage_rates(stages))``, the
    plan of a run)."""
    return [(stage.name, stage.rates) for stage in stages]


def plan_text(stages: list[Stage]) -> str:
    """The stages, one line each: name, epochs, the frozen groups, the trained ones with their rates, cached."""
    return "\n".join(["stages (as fine_tune runs them):", *(f"  {stage}" for stage in stages)])
