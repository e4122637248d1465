"""Read checkpoints safely (whatever wraps them) and save weights as safetensors.

Checkpoints are untrusted input. ``.pth``/``.pt``/``.bin``/``.ckpt`` files are read with
``torch.load(weights_only=True)``: a file that needs code from itself to unpickle is refused, and only an
explicit ``trust_pickle=True`` loads it. ``.safetensors`` files hold no code at all. What a file is comes
from its first bytes (:mod:`torchgraft.weights.formats`): a text file named ``x.pth``, an empty or truncated
file, a zip archive of something else, a safetensors file under a ``.pth`` name, each fails with one line
naming the file, what it is not, and the fix (:class:`CheckpointReadError`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchgraft.spelling import option
from torchgraft.weights.formats import PYTORCH_KINDS, FileFormat, file_format, zip_members

__all__ = ["Checkpoint", "CheckpointReadError", "UnsafeCheckpointError", "read_checkpoint", "save_weights"]

NESTED_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")
EMA_KEYS: tuple[str, ...] = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")
_ALIASES = "torchgraft.aliases"
_ORDER = "torchgraft.order"
_NUMBER = re.compile(r"(\d+)")


class UnsafeCheckpointError(ValueError):
    """The checkpoint needs arbitrary code to unpickle and was not loaded."""


class CheckpointReadError(ValueError):
    """The checkpoint file is damaged (empty, truncated, a corrupt header) or not a checkpoint at all."""


_AGAIN = "download or copy it again"
_NOT_WEIGHTS = "pass a file written by torch.save or safetensors; if this one should be, download or copy it again"
_UNSAFE_SIGNS = ("GLOBAL", "unrecognized function", "allowlisted")  # torch refusing code or objects


def _unreadable(path: Path, what: str, fix: str) -> CheckpointReadError:
    """One line: the file, its size, what it is (or is not), and the fix."""
    return CheckpointReadError(
        f"cannot read checkpoint {path} ({path.stat().st_size:,} bytes): {what}. {fix[0].upper()}{fix[1:]}."
    )


def _first_sentence(text: str, default: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0].split(". ")[0].rstrip(".") if lines else default


@dataclass
class Checkpoint:
    """The tensors of a checkpoint, and where they came from.

    Attributes:
        tensors: key -> tensor, in saved order.
        description: a readable account (file, nesting, number of tensors).
        metadata: string metadata (safetensors header, or the keys found beside the weights).
        aliases: key -> the key it duplicates (tied weights written once by :func:`save_weights`).
    """

    tensors: dict[str, torch.Tensor]
    description: str
    metadata: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


def _load_file(path: Path, *, trust_pickle: bool) -> tuple[Any, dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        found = file_format(path)  # by content: a text file named x.pth is named so, not unpickled
    except OSError as error:
        raise _unreadable(path, f"it cannot be opened ({error.strerror})", "check its permissions") from None
    if found.kind == "empty":
        raise _unreadable(path, "the file is empty", _AGAIN)
    if path.suffix == ".safetensors":
        return _load_safetensors(path, found)
    return _load_pytorch(path, found, trust_pickle=trust_pickle), {}


def _load_safetensors(path: Path, found: FileFormat) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if found.kind in PYTORCH_KINDS:
        what = f"it is a PyTorch checkpoint ({found.description} written by torch.save), not a safetensors file"
        raise _unreadable(path, what, f"rename it to {path.with_suffix('.pth').name}")
    if found.kind != "safetensors":
        raise _unreadable(path, f"it is {found.description}, not a safetensors file", _NOT_WEIGHTS)
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(str(path)), metadata
    except Exception as error:  # safetensors raises its own SafetensorError for a bad header or short data
        raise _unreadable(
            path, f"a damaged safetensors file ({_first_sentence(str(error), 'unreadable')})", _AGAIN
        ) from None


def _load_pytorch(path: Path, found: FileFormat, *, trust_pickle: bool) -> Any:
    if found.kind == "safetensors":
        what = "it is a safetensors file, not a PyTorch checkpoint"
        raise _unreadable(path, what, f"rename it to {path.with_suffix('.safetensors').name}")
    if found.kind not in PYTORCH_KINDS:
        what = f"it is {found.description}, not a PyTorch checkpoint (a zip archive or pickle written by torch.save)"
        raise _unreadable(path, what, _NOT_WEIGHTS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on old pickle protocols: the refusal says it all
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as error:
        text = str(error)
        reason = _first_sentence(text.partition("WeightsUnpickler error:")[2] or text, type(error).__name__)
        if trust_pickle or not any(sign in reason for sign in _UNSAFE_SIGNS):
            raise _damaged(path, found, reason) from None
        raise UnsafeCheckpointError(
            f"refused {path}: unpickling it would run code named in the file ({reason}). If you trust where it "
            f"came from, pass {option('trust_pickle=True', '--trust-pickle')} (this runs that code); better, "
            "convert it once to safetensors."
        ) from None
    except (EOFError, RuntimeError, OSError, IndexError, KeyError, ValueError, struct.error) as error:
        raise _damaged(path, found, _first_sentence(str(error), "it ends too early")) from None


def _damaged(path: Path, found: FileFormat, reason: str) -> CheckpointReadError:
    """A zip archive that torch.save did not write, or a damaged or truncated checkpoint."""
    members = zip_members(path) if found.kind == "zip" else None
    if members is not None and not any(name.endswith("data.pkl") for name in members):
        shown = ", ".join(members[:3]) + (", ..." if len(members) > 3 else "")
        what = f"it is a zip archive holding {shown or 'nothing'}, not a PyTorch checkpoint (no data.pkl inside)"
        return _unreadable(path, what, _NOT_WEIGHTS)
    return _unreadable(path, f"a damaged or truncated PyTorch checkpoint ({found.description}: {reason})", _AGAIN)


def _tensor_share(value: Any) -> float:
    if not isinstance(value, Mapping) or not value:
        return 0.0
    return sum(isinstance(v, torch.Tensor) for v in value.values()) / len(value)


def _unwrap(obj: Any, key: str | None, notes: list[str]) -> Mapping[str, Any]:
    """Find the state dict inside a training checkpoint (Lightning, timm, torchvision references, ...)."""
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = ", ".join(map(repr, list(obj)[:10])) if isinstance(obj, Mapping) else type(obj).__name__
            raise KeyError(f"key={key!r} is not in the checkpoint (it holds {found}).")
        notes.append(f"nested under {key!r}")
        return _unwrap(obj[key], None, notes)
    if not isinstance(obj, Mapping):
        raise TypeError(f"the checkpoint holds a {type(obj).__name__}, not a state dict.")
    if _tensor_share(obj) >= 0.5:
        return obj
    for name in (*NESTED_KEYS, *EMA_KEYS):
        if isinstance(obj.get(name), Mapping) and (
            _tensor_share(obj[name]) > 0 or any(isinstance(v, Mapping) for v in obj[name].values())
        ):
            notes.append(
                f"nested under {name!r}" + (" (EMA weights: no other state dict found)" if name in EMA_KEYS else "")
            )
            return _unwrap(obj[name], None, notes)
    raise ValueError(
        f"no state dict found in the checkpoint; its keys are {', '.join(map(repr, list(obj)[:10]))}. "
        f"Pass key=... naming the one that holds the weights."
    )


def read_checkpoint(
    source: str | Path | Mapping[str, Any] | nn.Module, *, key: str | None = None, trust_pickle: bool = False
) -> Checkpoint:
    """Read the tensors of a checkpoint file, a (possibly nested) state dict or a module.

    Args:
        source: a ``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors`` path, a mapping, or an ``nn.Module``.
        key: the entry holding the weights in a training checkpoint (default: found automatically among
            ``state_dict``, ``model_state_dict``, ``model``, ``module``, ``net``, ``network``, ``weights``, then EMA
            entries).
        trust_pickle: load pickles that need code from the file (never for files you did not make).

    Raises:
        UnsafeCheckpointError: the file needs arbitrary code to unpickle and ``trust_pickle`` is false.
        CheckpointReadError: the file is empty, damaged or truncated, or not a checkpoint (text, another
            archive, a safetensors file under a ``.pth`` name or the reverse).
        FileNotFoundError: no such file.
        KeyError, ValueError: no state dict inside.

    Example:
        >>> read_checkpoint("lightning.ckpt").description
        "lightning.ckpt, nested under 'state_dict', 322 tensors"
    """
    notes: list[str] = []
    metadata: dict[str, str] = {}
    if isinstance(source, nn.Module):
        obj: Any = source.state_dict()
        where = f"{type(source).__name__} module"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        obj, metadata = _load_file(path, trust_pickle=trust_pickle)
        obj, where = _with_frozen(obj, path, trust_pickle=trust_pickle), path.name
    elif isinstance(source, Mapping):
        obj, where = source, "state dict"
    else:
        raise TypeError(f"source must be a file path, a state dict or an nn.Module, got {type(source).__name__}.")
    state = _unwrap(obj, key, notes)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    skipped = len(state) - len(tensors)
    if skipped:
        notes.append(f"{skipped} non-tensor entries ignored")
    aliases = json.loads(metadata.get(_ALIASES, "{}"))
    tensors = (
        _saved_order(tensors, metadata)
        if isinstance(source, (str, Path)) and str(source).endswith(".safetensors")
        else tensors
    )
    description = ", ".join([where, *notes, f"{len(tensors)} tensors"])
    return Checkpoint(tensors, description, metadata, aliases)


def _with_frozen(obj: Any, path: Path, *, trust_pickle: bool) -> Any:
    """A torchgraft training checkpoint whose untouched frozen weights are kept in ``frozen.pt`` beside it
    (:mod:`torchgraft.train.frozen_state`) with those weights put back, matched by recorded fingerprint."""
    if not (isinstance(obj, dict) and isinstance(obj.get("frozen"), dict) and isinstance(obj.get("model"), dict)):
        return obj
    wanted: dict[str, str] = obj["frozen"]["fingerprints"]
    side = path.with_name(obj["frozen"].get("file", "frozen.pt"))
    stored, _ = _load_file(side, trust_pickle=trust_pickle) if side.is_file() else ({}, {})
    held = stored.get("fingerprints", {}) if isinstance(stored, dict) else {}
    missing = sorted(name for name, value in wanted.items() if held.get(name) != value)
    if missing:
        raise CheckpointReadError(
            f"{path}: {len(missing)} frozen tensors it leaves out ({', '.join(missing[:3])}, ...) are not in {side} "
            f"as written with it; put back the {side.name} of the same run."
        )
    return {**obj, "model": {**obj["model"], **{name: stored["model"][name] for name in wanted}}}


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in _NUMBER.split(name)]


def _saved_order(tensors: dict[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """safetensors sorts its keys: restore the order recorded by save_weights, else use natural order."""
    recorded = json.loads(metadata.get(_ORDER, "[]"))
    if set(recorded) == set(tensors):
        return {name: tensors[name] for name in recorded}
    return {name: tensors[name] for name in sorted(tensors, key=_natural)}


def _dedupe(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors to write (each storage once: safetensors refuses shared memory) and alias -> kept key."""
    kept: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    aliases: dict[str, str] = {}
    pointers: set[int] = set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        view = (
            tensor.untyped_storage().data_ptr() + tensor.storage_offset() * tensor.element_size(),
            tuple(tensor.shape),
            tensor.stride(),
            tensor.dtype,
        )
        if view in seen:
            aliases[name] = seen[view]
            continue
        pointer = tensor.untyped_storage().data_ptr()
        shared = pointer in pointers and tensor.numel() > 0
        kept[name] = tensor.clone().contiguous() if shared or not tensor.is_contiguous() else tensor
        seen[view] = name
        pointers.add(pointer)
    return kept, aliases


def save_weights(model: nn.Module, path: str | Path, *, metadata: Mapping[str, str] | None = None) -> Path:
    """Save ``model``'s state dict: safetensors (default, no code in the file) or, for a ``.pt``/``.pth``
    path, ``torch.save``. Tied weights are written once; the metadata records them (and the model class
    and torchgraft version) so that :func:`torchgraft.load_weights` restores every key.

    Returns:
        The path written (``.safetensors`` is added when the path has no suffix).

    Example:
        >>> save_weights(model, "run/model.safetensors")
        >>> load_weights(fresh_model, "run/model.safetensors").ok
        True
    """
    from torchgraft._version import __version__

    path = Path(path)
    path = path if path.suffix else path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    partial = path.with_name(path.name + ".partial")  # written whole, then renamed: never half a file
    if path.suffix in (".pt", ".pth"):
        torch.save(state, partial)
        os.replace(partial, path)
        return path
    if path.suffix != ".safetensors":
        raise ValueError(f"save_weights: unknown format {path.suffix!r}; use .safetensors (default), .pt or .pth.")
    from safetensors.torch import save_file

    tensors, aliases = _dedupe(state)
    header = {
        "format": "pt",
        "torchgraft.version": __version__,
        "torchgraft.model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        _ALIASES: json.dumps(aliases),
        _ORDER: json.dumps(list(tensors)),
        **dict(metadata or {}),
    }
    mode = _ordinary_mode(partial)
    save_file(tensors, str(partial), metadata=header)
    os.chmod(partial, mode)  # safetensors writes 0600; a model file is as readable as any other file
    os.replace(partial, path)
    return path


def _ordinary_mode(path: Path) -> int:
    """The mode a new file at ``path`` gets under this process's umask (0644 under umask 022), read from
    a file created there (``os.umask`` itself cannot be read without being set, which races with threads)."""
    path.unlink(missing_ok=True)  # a partial file left by a crash keeps its own mode
    descriptor = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o666)
    try:
        return os.fstat(descriptor).st_mode & 0o777
    finally:
        os.close(descriptor)
