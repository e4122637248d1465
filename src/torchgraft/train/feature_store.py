"""The feature cache on disk: one folder per store, raw row-major arrays and a small JSON header.

A store folder holds ``features.bin`` (one row per sample, fp16 or bf16 — or fp32 when asked), ``targets.bin``
(the targets in their own dtype, exact) and ``header.json`` (``format``, ``key``, ``rows``, each array's
per-row ``shape`` and ``dtype``, ``complete``). It is written under a temporary name beside its final one and
renamed when complete, so a reader sees a whole store or none; one that is partial (a writer killed
mid-way), truncated or unreadable is ignored (:func:`open_store` returns ``None``) and rebuilt.

Rows are read with positional reads (``os.pread``) into fresh tensors, not through ``mmap``: the file's pages
then live in the kernel's page cache, shared and reclaimable, and the process's resident memory stays flat
whatever the number of rows (the pages of a mapping count in its RSS once touched). The layout is that of a
``numpy.memmap`` of shape ``(rows, *shape)``, so the files can be mapped by other tools.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import socket
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

__all__ = [
    "FeatureStore",
    "FeatureStoreError",
    "StoreWriter",
    "StoredRows",
    "collate_rows",
    "commit_store",
    "new_store_folder",
    "open_store",
]

FORMAT = 1
HEADER = "header.json"
DTYPES = {"float16", "bfloat16", "float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}


class FeatureStoreError(OSError):
    """A store's file is shorter than its header says (truncated after it was opened); the message names it."""


@dataclass(frozen=True)
class Part:
    """The layout of one array of a store: each row's ``shape`` and the ``dtype`` on disk."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def row_bytes(self) -> int:
        """Bytes per row."""
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()

    def to_json(self) -> dict[str, Any]:
        """``{"shape": [...], "dtype": "float16"}``."""
        return {"shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Part:
        """The layout written by :meth:`to_json`; ``ValueError`` for an unknown dtype."""
        if value["dtype"] not in DTYPES:
            raise ValueError(f"unknown dtype {value['dtype']!r}")
        return cls(tuple(int(n) for n in value["shape"]), getattr(torch, value["dtype"]))


def _read_rows(fd: int, part: Part, indices: Sequence[int], where: Path) -> torch.Tensor:
    """Rows ``indices`` of the array in ``fd``, in that order: one read per run of consecutive rows."""
    wanted = np.asarray(indices, dtype=np.int64)
    breaks = (np.flatnonzero(np.diff(wanted) != 1) + 1).tolist()
    size = part.row_bytes
    buffer = bytearray(len(wanted) * size)
    view = memoryview(buffer)
    for start, end in zip([0, *breaks], [*breaks, len(wanted)], strict=True):
        chunk = os.pread(fd, (end - start) * size, int(wanted[start]) * size)
        if len(chunk) != (end - start) * size:
            raise FeatureStoreError(f"feature store {where}: rows {wanted[start]}..{wanted[end - 1]} are cut short.")
        view[start * size : end * size] = chunk
    return torch.frombuffer(buffer, dtype=part.dtype).view(len(wanted), *part.shape)


def _as_float32(values: torch.Tensor) -> torch.Tensor:
    """``values`` as float32 (fp16 through numpy: torch's CPU conversion measured 5x slower on small values)."""
    if values.dtype == torch.float16:
        return torch.from_numpy(values.numpy().astype(np.float32))
    return values.float()


class StoredRows(Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """The rows of one batched read: a sequence of ``(features, target)`` pairs (what ``default_collate``
    stacks) that :func:`collate_rows` hands over already stacked."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.features[index], self.targets[index]


def collate_rows(rows: Any) -> Any:
    """``DataLoader`` collation for a :class:`FeatureStore`: a batched read's tensors as they are (no rows
    split and stacked again), anything else by ``default_collate``."""
    return [rows.features, rows.targets] if isinstance(rows, StoredRows) else default_collate(rows)


class FeatureStore(Dataset):
    """``(features as float32, target)`` rows of a complete store folder, read from disk on access.

    ``remove=True`` deletes the folder when the store is closed or collected (a store of one run). Batched
    reads (``__getitems__``, used by ``DataLoader``) read each run of consecutive rows at once.

    Example:
        >>> store = open_store(path, key=key)
        >>> features, target = store[0]
    """

    def __init__(self, folder: Path, header: dict[str, Any], *, remove: bool = False) -> None:
        self.folder, self.key, self.rows, self._header = folder, str(header["key"]), int(header["rows"]), header
        self.features, self.targets = Part.from_json(header["features"]), Part.from_json(header["targets"])
        self._fds = [os.open(folder / name, os.O_RDONLY) for name in ("features.bin", "targets.bin")]
        self._closer = weakref.finalize(self, _close, self._fds, folder if remove else None)

    def __getstate__(self) -> dict[str, Any]:  # a copy in a spawned loader worker opens the files again
        return {"folder": self.folder, "header": self._header}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], state["header"])  # type: ignore[misc]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the features are stored in (they are read as float32)."""
        return self.features.dtype

    def __len__(self) -> int:
        return self.rows

    def read(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features as float32, targets)`` of rows ``indices``, stacked: ``(len(indices), *shape)`` each."""
        features = _as_float32(_read_rows(self._fds[0], self.features, indices, self.folder))
        return features, _read_rows(self._fds[1], self.targets, indices, self.folder)

    def __getitems__(self, indices: list[int]) -> StoredRows:
        return StoredRows(*self.read(indices))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.rows <= index < self.rows:
            raise IndexError(f"feature store {self.folder}: row {index} out of range ({self.rows} rows).")
        return self.__getitems__([index % self.rows])[0]

    def close(self) -> None:
        """Close the files (and delete a one-run store's folder)."""
        self._closer()


def _close(fds: list[int], remove: Path | None) -> None:
    for fd in fds:
        os.close(fd)
    if remove is not None:
        shutil.rmtree(remove, ignore_errors=True)


def _header(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / HEADER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def open_store(folder: Path, *, key: str, remove: bool = False) -> FeatureStore | None:
    """The complete store in ``folder`` written for ``key``, or ``None``: no folder, or a store that is partial,
    of another key or format, or whose files do not have the sizes its header gives (it is to be rebuilt)."""
    header = _header(folder)
    if not header or header.get("format") != FORMAT or header.get("key") != key or header.get("complete") is not True:
        return None
    try:
        rows = int(header["rows"])
        parts = [Part.from_json(header[name]) for name in ("features", "targets")]
        sizes = [(folder / name).stat().st_size for name in ("features.bin", "targets.bin")]
    except (KeyError, TypeError, ValueError, OSError):
        return None
    if sizes != [rows * part.row_bytes for part in parts]:
        return None
    return FeatureStore(folder, header, remove=remove)


def _alive(name: str) -> bool:
    """Whether the writer of a temporary folder named ``.KEY.HOST.PID.NONCE.tmp`` may still be running."""
    parts = name.split(".")  # "", KEY, HOST (may hold dots), PID, NONCE, "tmp"
    if len(parts) < 6 or ".".join(parts[2:-3]) != socket.gethostname() or not parts[-3].isdigit():
        return True  # another machine's (or not ours): leave it
    try:
        os.kill(int(parts[-3]), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def new_store_folder(root: Path, key: str) -> Path:
    """A new empty temporary folder beside ``root / key`` to write a store into (removing the temporary
    folders that writers on this machine left when they were killed)."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".*.tmp"):
        if not _alive(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    folder = root / f".{key}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    folder.mkdir()
    return folder


class StoreWriter:
    """Writes rows of a store into a temporary folder at their dataset positions (``os.pwrite``), so several
    processes can fill disjoint rows of the same files. Features are converted to ``dtype`` on the way;
    :attr:`overflowed` records a finite feature that does not fit it (fp16 above 65504)."""

    def __init__(self, folder: Path, *, dtype: torch.dtype) -> None:
        self.folder, self.dtype, self.overflowed = folder, dtype, False
        self.parts: tuple[Part, Part] | None = None
        flags = os.O_RDWR | os.O_CREAT
        self._fds = [os.open(folder / name, flags, 0o644) for name in ("features.bin", "targets.bin")]

    def write(self, indices: list[int], features: torch.Tensor, targets: torch.Tensor) -> None:
        """Rows ``indices`` (dataset positions) of ``features`` and ``targets`` (both ``(len(indices), ...)``)."""
        features = features.detach()
        stored = features.to(self.dtype)
        self.overflowed = self.overflowed or _overflows(features, stored)
        stored, targets = stored.cpu(), targets.detach().cpu()
        if self.parts is None:
            self.parts = (Part(tuple(stored.shape[1:]), self.dtype), Part(tuple(targets.shape[1:]), targets.dtype))
        for fd, part, values in zip(self._fds, self.parts, (stored, targets.to(self.parts[1].dtype)), strict=True):
            _write_rows(fd, part, indices, values)

    def close(self) -> None:
        """Flush the files to disk and close them."""
        for fd in self._fds:
            os.fsync(fd)
            os.close(fd)
        self._fds = []


def _overflows(features: torch.Tensor, stored: torch.Tensor) -> bool:
    """Whether a finite feature became infinite in ``stored``'s dtype (one reduction when none is near)."""
    if stored.dtype != torch.float16 or features.numel() == 0:
        return False
    if bool(features.abs().amax() <= torch.finfo(torch.float16).max):  # False for NaN: then look closer
        return False
    return bool((torch.isfinite(features) & ~torch.isfinite(stored)).any())


def _write_rows(fd: int, part: Part, indices: list[int], values: torch.Tensor) -> None:
    raw = values.contiguous().reshape(len(indices), -1).view(torch.uint8).numpy()
    order = sorted(range(len(indices)), key=indices.__getitem__)
    start = 0
    while start < len(order):  # one write per run of consecutive rows
        end = start + 1
        while end < len(order) and indices[order[end]] == indices[order[end - 1]] + 1:
            end += 1
        os.pwrite(fd, raw[order[start:end]].tobytes(), indices[order[start]] * part.row_bytes)
        start = end


def commit_store(folder: Path, final: Path | None, header: dict[str, Any]) -> Path:
    """Mark the store written in the temporary ``folder`` complete (``header`` with ``complete: true``) and
    rename it to ``final``; a complete store of the same key already there (another run finished first) is
    kept and ``folder`` dropped; a partial or broken one is replaced. ``final=None``: the store stays in
    ``folder`` (a store of one run). Returns where the store is."""
    header = {"format": FORMAT, **header, "complete": True}
    with open(folder / HEADER, "w", encoding="utf-8") as handle:
        json.dump(header, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if final is not None and _complete(final, header["key"]):
        shutil.rmtree(folder, ignore_errors=True)
        return final
    if final is not None:
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        os.replace(folder, final)
    where = final or folder
    if not _complete(where, header["key"]):
        raise FeatureStoreError(f"feature store {where}: just written, but unreadable (is the disk full?).")
    return where


def _complete(folder: Path, key: str) -> bool:
    store = open_store(folder, key=key)
    if store is not None:
        store.close()
    return store is not None
