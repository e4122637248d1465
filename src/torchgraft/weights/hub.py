"""Downloads that fail fast: a file already in a library's cache is used without asking the network, and a
host that cannot be reached is found with one connection attempt, so an offline machine gets one line in a
second instead of a minute of the Hugging Face Hub's "Retrying in 8s" (it retries every request five times).
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["HF_ENDPOINT", "hub_cached_file", "torch_hub_cached_file", "unreachable"]

HF_ENDPOINT = "https://huggingface.co"
_PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")
_HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _offline() -> bool:
    return any(
        os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@functools.lru_cache(maxsize=16)
def _connect(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"{host} cannot be reached ({error.strerror or type(error).__name__})"


def unreachable(url: str = HF_ENDPOINT, *, hub: bool = True, timeout: float = 3.0) -> str | None:
    """Why ``url``'s host cannot be downloaded from now, or ``None`` when it can be tried: ``HF_HUB_OFFLINE``
    set (for the Hugging Face Hub, ``hub=True``), or one TCP connection that fails (no DNS, no route, refused,
    ``timeout`` seconds). Behind a proxy (``HTTPS_PROXY`` ...) nothing is probed: the download itself tries.

    Example:
        >>> unreachable()  # on a machine without internet
        'huggingface.co cannot be reached (Name or service not known)'
    """
    if hub and _offline():
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in _PROXIES):
        return None
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    return _connect(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout)


def hub_cached_file(repo_id: str, filenames: tuple[str, ...] = _HUB_FILES) -> Path | None:
    """The first of ``filenames`` of Hugging Face Hub repository ``repo_id`` already in the local hub cache
    (``HF_HOME``), without a request; ``None`` when none is."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in filenames:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def torch_hub_cached_file(url: str) -> Path | None:
    """The file ``url`` downloads to in torch's hub cache (``torch.hub.get_dir()/checkpoints``), if there."""
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(url).path).name
    return path if path.is_file() else None
