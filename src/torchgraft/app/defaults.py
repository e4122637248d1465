"""The defaults of the image and text recipes (the settings each fills when left ``None``), in a module that
imports no torch: ``torchgraft train --help`` shows them. :class:`~torchgraft.app.images.ImageInput` and
:class:`~torchgraft.app.texts.TextInput` take theirs from here."""

from __future__ import annotations

from typing import Any

from torchgraft.weights.hf import DEFAULT_TEXT_MODEL

__all__ = ["IMAGE_DEFAULTS", "TEXT_DEFAULTS"]

# rates: the Learner's measured recipe of the model's kind (torchgraft.train.recipes)
IMAGE_DEFAULTS: dict[str, Any] = {"model": "resnet50", "batch_size": 64}
TEXT_DEFAULTS: dict[str, Any] = {"model": DEFAULT_TEXT_MODEL, "batch_size": 16}
