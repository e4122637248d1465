"""Is ``NAME`` a timm model? Answered without importing timm (which imports torch and torchvision: 5-6 s on a
2-core machine), so that a command line refuses ``--model timm/<typo>`` at once:

1. from the names timm itself registered, which torchgraft saves in its cache (per installed timm: version and
   location) whenever it imports timm (:func:`remember_timm_names`);
2. else from timm's sources: the functions its model files decorate with ``@register_model`` and the keys of
   their ``register_model_deprecations`` tables (60 ms; the test suite checks that this gives timm's registry
   exactly);
3. else (sources in a layout the reading does not know) from timm itself.

Standard library only at import.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from torchgraft.cachedir import cache_root

__all__ = ["TimmNames", "UnknownModelError", "check_timm_name", "remember_timm_names", "timm_model_names"]

_REGISTERED = re.compile(r"^@register_model(?:\(\))?\s*\ndef\s+(\w+)", re.M)
_DEPRECATIONS = re.compile(r"register_model_deprecations\(\s*__name__\s*,\s*\{(.*?)\}\s*\)", re.S)
_KEY = re.compile(r"""^\s*['"]([\w.]+)['"]\s*:""", re.M)


class UnknownModelError(ValueError):
    """The model name is not a torchvision builder nor a timm model."""


class TimmNames(NamedTuple):
    """The model names of a timm installation: current ones, and deprecated ones it still builds (with a
    warning)."""

    models: list[str]
    deprecated: list[str]


def _timm_install() -> tuple[str, str]:
    """timm's version and where it is installed, without importing it."""
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        raise ImportError("timm models need timm: pip install 'torchgraft[timm]'")
    return importlib.metadata.version("timm"), str(Path(spec.origin).resolve().parent)


def _names_file(version: str, location: str) -> Path:
    key = hashlib.sha256(f"{version}\0{location}".encode()).hexdigest()[:16]
    return cache_root() / "timm" / f"models-{version}-{key}.json"


def _write(file: Path, names: dict[str, list[str]]) -> None:
    """Save the list atomically; a cache that cannot be written is only a slower next check."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=file.parent, prefix=file.stem, suffix=".tmp")
        with os.fdopen(handle, "w") as out:
            json.dump(names, out)
        os.replace(temporary, file)
    except OSError:
        pass


def _from_sources(location: str) -> TimmNames:
    """The names timm's model files register, read from their source."""
    models: set[str] = set()
    deprecated: set[str] = set()
    for file in sorted(Path(location, "models").glob("*.py")):
        try:
            source = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        models.update(_REGISTERED.findall(source))
        for table in _DEPRECATIONS.findall(source):
            deprecated.update(_KEY.findall(table))
    return TimmNames(sorted(models), sorted(deprecated - models))


def _from_registry(timm: Any) -> TimmNames:
    """The names an imported timm holds."""
    models = list(timm.list_models())
    deprecated = timm.models.get_deprecated_models() if hasattr(timm.models, "get_deprecated_models") else {}
    return TimmNames(models, sorted(set(deprecated) - set(models)))


def remember_timm_names(timm: Any) -> None:
    """Save the names of the imported ``timm`` in the cache, for the next check without timm."""
    try:
        version, location = _timm_install()
    except (ImportError, ValueError):
        return
    names = _from_registry(timm)
    _write(_names_file(version, location), {"models": names.models, "deprecated": names.deprecated})


def timm_model_names() -> TimmNames:
    """Every model name the installed timm registers (``timm.list_models()``, and its deprecated names), without
    importing timm where the cache or timm's sources tell.

    Raises:
        ImportError: timm is not installed (with the install command).
    """
    version, location = _timm_install()
    try:
        saved = json.loads(_names_file(version, location).read_text())
        return TimmNames(list(saved["models"]), list(saved["deprecated"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not there yet, or damaged
    names = _from_sources(location)
    if names.models:
        return names
    timm = importlib.import_module("timm")
    remember_timm_names(timm)
    return _from_registry(timm)


def check_timm_name(arch: str) -> str:
    """``arch`` if timm knows it (``convnext_tiny``; a pretrained tag, ``convnext_tiny.fb_in22k``, is checked by
    its model name: the tag is timm's to check when the weights are fetched).

    Raises:
        UnknownModelError: with the closest names timm knows.
    """
    known = timm_model_names()
    names = known.models
    model = arch.split(".", 1)[0]
    if model not in names and model not in known.deprecated:
        close = difflib.get_close_matches(model, names, n=5) or sorted(n for n in names if model.lower() in n)[:5]
        hint = (
            f"close names: {', '.join(close)}"
            if close
            else f"no close name among timm's {len(names)} models (list some: timm.list_models('*{model[:4]}*'))"
        )
        raise UnknownModelError(f"unknown timm model {arch!r}; {hint}.")
    return arch
