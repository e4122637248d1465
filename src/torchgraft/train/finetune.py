"""The fine-tuning recipe: the rates of the model's kind and task (:mod:`torchgraft.train.recipes`), the stages
they make (:mod:`torchgraft.train.stages`), and running them one after another, each a one-cycle fit with its
leading layer groups frozen; a run resumed from a checkpoint starts in the stage that wrote it.

:class:`FineTuning` gives the :class:`~torchgraft.Learner` its ``recipe``, ``stages`` and ``fine_tune``
methods, over the Learner's ``fit_one_cycle``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from torchgraft.train.distributed import on_main
from torchgraft.train.recipes import Recipe, recipe_for
from torchgraft.train.runstate import read_state
from torchgraft.train.stages import Stage, plan_stages
from torchgraft.tune.freeze import BNPolicy, freeze_to
from torchgraft.tune.groups import layer_groups
from torchgraft.tune.optim import LRSpec

if TYPE_CHECKING:
    from torchgraft.tasks import Task
    from torchgraft.train.placement import Placement

__all__ = ["FineTuning", "check_epochs", "run_stages"]


def check_epochs(epochs: int, freeze_epochs: int) -> None:
    """Refuse a fine-tune of no epoch or of negative ones.

    Raises:
        ValueError: ``epochs`` or ``freeze_epochs`` below 0, or both 0.
    """
    if epochs < 0 or freeze_epochs < 0 or epochs + freeze_epochs < 1:
        raise ValueError(
            f"fine_tune: need epochs, freeze_epochs >= 0 and one epoch at least, got {epochs}, {freeze_epochs}."
        )


def _first_stage(stages: list[Stage], resume: str | Path | None) -> int:
    """Where a run resumed from ``resume`` starts: the stage its checkpoint was written in (else the first)."""
    saved = on_main(lambda: read_state(resume).get("stage")) if resume is not None else None
    names = [stage.name for stage in stages]
    return names.index(saved) if saved in names else 0


def run_stages(
    learner: FineTuning, stages: list[Stage], *, bn: BNPolicy, pct_start: float, resume: str | Path | None
) -> list[dict[str, Any]]:
    """Run ``stages`` on ``learner``: per stage ``learner.stage`` set, the leading groups frozen with BatchNorm
    policy ``bn``, one ``fit_one_cycle`` at the stage's rates (the first resumed from ``resume``). Returns the
    history of every fit."""
    try:
        for stage in stages[_first_stage(stages, resume) :]:
            learner.stage = stage.name
            freeze_to(learner.model, stage.frozen, bn=bn)
            learner.fit_one_cycle(stage.epochs, stage.lr, pct_start=pct_start, resume=resume)
            resume = None
        return learner.history
    finally:
        learner.stage = None


class FineTuning:
    """The fine-tuning methods of the :class:`~torchgraft.Learner` (``recipe``, ``stages``, ``fine_tune``), over
    its ``model``, ``task``, ``placement``, ``cache_features`` and ``fit_one_cycle``."""

    model: nn.Module
    stage: str | None
    history: list[dict[str, Any]]
    cache_features: bool
    placement: Placement
    task: Task

    if TYPE_CHECKING:

        def fit_one_cycle(
            self, epochs: int, lr_max: LRSpec = 1e-3, *, pct_start: float = 0.25, resume: str | Path | None = None
        ) -> list[dict[str, Any]]:
            """One one-cycle fit (the Learner's)."""

    def recipe(
        self,
        *,
        lr: float | None = None,
        lr_mult: float | None = None,
        frozen_lr: float | None = None,
        keep_frozen: int | None = None,
    ) -> Recipe:
        """The rates :meth:`fine_tune` uses: those given, the rest from the measured recipe of this model's kind
        and task (:func:`torchgraft.train.recipes.recipe_for`: images, texts, segmentation)."""
        given = {"lr": lr, "lr_mult": lr_mult, "frozen_lr": frozen_lr, "keep_frozen": keep_frozen}
        return recipe_for(self.model, self.task).filled(**given)

    def stages(
        self,
        epochs: int,
        lr: float | None = None,
        *,
        freeze_epochs: int = 1,
        lr_mult: float | None = None,
        frozen_lr: float | None = None,
        bn: BNPolicy = "frozen",
        gradual: bool = False,
        keep_frozen: int | None = None,
    ) -> list[Stage]:
        """The stages :meth:`fine_tune` with the same arguments runs (:mod:`torchgraft.train.stages`): per
        stage the frozen layer groups, the trained ones and their rates, the epochs, cached or not.

        Example:
            >>> print(plan_text(learner.stages(2, freeze_epochs=1, keep_frozen=1)))
        """
        check_epochs(epochs, freeze_epochs)
        recipe = self.recipe(lr=lr, lr_mult=lr_mult, frozen_lr=frozen_lr, keep_frozen=keep_frozen)
        structure = getattr(self.model, "body", None) is not None and getattr(self.model, "cacheable", True)
        cache = self.cache_features and bn == "frozen" and bool(structure) and not self.placement.shards
        groups = layer_groups(self.model)
        return plan_stages(groups, epochs, recipe=recipe, freeze_epochs=freeze_epochs, gradual=gradual, cache=cache)

    def fine_tune(
        self,
        epochs: int,
        lr: float | None = None,
        *,
        freeze_epochs: int = 1,
        lr_mult: float | None = None,
        frozen_lr: float | None = None,
        bn: BNPolicy = "frozen",
        pct_start: float = 0.25,
        gradual: bool = False,
        keep_frozen: int | None = None,
        resume: str | Path | None = None,
    ) -> list[dict[str, Any]]:
        """Transfer-learning recipe: ``freeze_epochs`` of one-cycle training of the head alone (body frozen
        with BatchNorm policy ``bn``), then ``epochs`` of the whole network with discriminative rates from
        ``lr / lr_mult`` (first group) to ``lr`` (head). ``resume=`` continues a run of the same call from
        its ``last.pt``, in whichever stage it stopped. ``frozen_lr`` sets the head's rate in the frozen stage
        apart (default ``lr``): a head on cached features (``cache_features=True``) trains almost for free and
        often wants a higher rate than the network. :meth:`stages` lists the stages this runs.

        Rates and ``keep_frozen`` left ``None`` come from the measured recipe of the model's kind and task
        (:mod:`torchgraft.train.recipes`, the same table ``torchgraft train`` reads): images 3e-3 for every
        group; texts (a Hugging Face text model) 1e-3 with ``lr_mult=10`` and ``frozen_lr=3e-2``;
        segmentation 4e-3 with the backbone kept frozen (``keep_frozen=-1``).

        ``gradual=True`` unfreezes ULMFiT-style: each of the ``epochs`` unfreezes one more layer group from
        the top (one one-cycle fit per epoch; ``learner.stage`` is ``"top2"``, ``"top3"``, ...) until every
        group trains; the epochs left after that train the whole network in one fit.

        ``keep_frozen=k`` leaves the first ``k`` layer groups frozen (with BatchNorm policy ``bn``) in the
        unfrozen stages too: their backward pass, the costliest part of a high-resolution network, is never
        run; ``-1`` keeps every body group frozen (only the head, and a dense graft's decoder, train: with
        ``cache_features`` every stage then trains on cached features). On small segmentation targets a
        decoder on frozen ImageNet features beat every unfrozen recipe (bench/segment.py).

        The image defaults were chosen by measurement (bench/finetune_targets.py, docs/benchmarks.md): on
        three small targets far from ImageNet (Fashion-MNIST, sklearn digits, lfw faces) a uniform rate
        (``lr_mult=1``) of 3e-3 beat every discriminative spread tried (2x, 3x, 10x) and rates of 1e-3 and
        2e-3 (5e-3 was close: better on two targets, worse on the third); pass ``lr_mult > 1`` for data
        close to the pretraining data, where early layers should move less.
        """
        options = {"lr_mult": lr_mult, "frozen_lr": frozen_lr, "keep_frozen": keep_frozen}
        stages = self.stages(epochs, lr, freeze_epochs=freeze_epochs, bn=bn, gradual=gradual, **options)
        return run_stages(self, stages, bn=bn, pct_start=pct_start, resume=resume)
