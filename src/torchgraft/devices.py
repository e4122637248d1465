"""Check a device the user asked for before anything is put on it: a known kind (``cpu``, ``cuda``,
``cuda:N``, ``mps``), present on this machine, with an index it has. PyTorch itself answers a missing GPU
with a ``RuntimeError`` deep inside the first ``.to(device)`` ("Found no NVIDIA driver"); this answers with
a :class:`DeviceError` (a ``ValueError``) that names the device, what this machine has and what to pass.
"""

from __future__ import annotations

import difflib

import torch

from torchgraft.spelling import option

__all__ = ["DEVICE_KINDS", "DeviceError", "available_devices", "check_device"]

DEVICE_KINDS = ("cpu", "cuda", "mps")


class DeviceError(ValueError):
    """A device that is not a device name, or not on this machine."""


def available_devices() -> list[str]:
    """The devices this machine can run on, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def _spelled(text: str) -> str:
    return option(f"device={text!r}", f"--device {text}")


def _use(alternatives: list[str]) -> str:
    return " or ".join(option(f"device={d!r}", f"--device {d}") for d in alternatives)


def _parsed(text: str) -> torch.device:
    try:
        return torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        kind = text.split(":", 1)[0].strip().lower()
        close = difflib.get_close_matches(kind, DEVICE_KINDS, n=1, cutoff=0.5)
        guess = f"did you mean {close[0]!r}? " if close and close[0] != kind else ""
        raise DeviceError(
            f"{_spelled(text)}: not a device; {guess}give cpu, cuda, cuda:N or mps "
            f"(this machine has {', '.join(available_devices())})."
        ) from None


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` if this machine has it.

    Raises:
        DeviceError: not a device name (with the closest kind), a kind this machine lacks (CUDA without a GPU
            or driver, MPS off Apple silicon), or ``cuda:N`` beyond the GPUs present; the message lists the
            devices this machine has.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    text = str(device)
    chosen = device if isinstance(device, torch.device) else _parsed(text)
    have = available_devices()
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support (a CPU-only build)"
            raise DeviceError(
                f"{_spelled(text)}: CUDA is not available on this machine (no usable NVIDIA GPU or driver; "
                f"PyTorch {torch.__version__} has {build}). Use {_use(['cpu'])}, or leave the device out to "
                f"take a GPU only when there is one."
            )
        count = torch.cuda.device_count()
        if chosen.index is not None and chosen.index >= count:
            raise DeviceError(
                f"{_spelled(text)}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                f"(cuda:0..cuda:{count - 1}). Use {_use([f'cuda:{count - 1}' if count > 1 else 'cuda'])}."
            )
    elif chosen.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(
                f"{_spelled(text)}: MPS (Apple-silicon GPUs) is not available on this machine; it has "
                f"{', '.join(have)}. Use {_use([d for d in have if d != 'mps'][-1:])}."
            )
    elif chosen.type not in ("cpu", "meta"):
        backend = getattr(torch, chosen.type, None)
        if not (backend is not None and hasattr(backend, "is_available") and backend.is_available()):
            raise DeviceError(
                f"{_spelled(text)}: {chosen.type} is not available on this machine; it has {', '.join(have)}."
            )
    return chosen
