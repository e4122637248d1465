"""The grafted model: a pretrained body and a new head, with the record of how they were made."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchgraft.grafting.adapters import active_module
from torchgraft.grafting.guard import PretrainedGuard
from torchgraft.grafting.heads import Pool, run_head
from torchgraft.grafting.info import GraftInfo

__all__ = ["Grafted"]


class Grafted(nn.Module):
    """A pretrained body and a new head: ``forward(x) = head(body(x))``.

    ``info`` (a :class:`GraftInfo`) records what was cut and which parameters are pretrained or new;
    ``guard`` holds the fingerprints of the pretrained tensors (see :func:`torchgraft.check_pretrained`).
    """

    def __init__(self, body: nn.Module, head: nn.Module, info: GraftInfo, guard: PretrainedGuard | None) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.info = info
        self.guard = guard

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``head(body(...))``, called like the source network (``model(x)``, ``model(**tokenizer(...))``);
        token features are pooled over the ``attention_mask`` when one is passed."""
        return run_head(self.head, self.body(*args, **kwargs), self._mask(kwargs))

    def _mask(self, kwargs: dict[str, Any]) -> torch.Tensor | None:
        return kwargs.get("attention_mask") if self.info.layout == "nlc" else None

    def features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """What the head's first trainable layer reads: the body's output, pooled (with the attention mask)
        when the head starts with a :class:`~torchgraft.grafting.heads.Pool` (the feature cache stores it)."""
        features = self.body(*args, **kwargs)
        head = active_module(self.head)  # the trained copy when peft wraps the head (modules_to_save)
        if isinstance(head, nn.Sequential) and len(head) > 1 and isinstance(head[0], Pool):
            return head[0](features, self._mask(kwargs))
        return features

    def pooled_head(self) -> nn.Module:
        """The head after its leading ``Pool`` (the same modules): it maps :meth:`features` to outputs."""
        head = active_module(self.head)
        if isinstance(head, nn.Sequential) and len(head) > 1 and isinstance(head[0], Pool):
            return head[1:]
        return head

    def pretrained_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs that came from the source network and are still in the model."""
        names = set(self.info.pretrained)
        return [(n, p) for n, p in self.named_parameters() if n in names]

    def new_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs that were not in the source network (the head, later additions)."""
        names = set(self.info.pretrained)
        return [(n, p) for n, p in self.named_parameters() if n not in names]
