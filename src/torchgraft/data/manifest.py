"""The manifest of a data folder or table: every image file's size, modification time, target, split and check
verdict, saved so that the next run on the same data checks only the files that changed.

:func:`checked_files` is what :func:`~torchgraft.data.folders.image_data` calls after the listing: it stats
every file, reuses the verdict of each file whose size and modification time are those recorded (and that
was checked at least as far as asked: ``full`` covers ``header``), checks the new and changed ones
(:func:`~torchgraft.data.images.scan_images`) and writes the manifest again when anything changed; removed
files drop out. A manifest lives in a cache keyed by the resolved data path (:func:`manifest_file`):
``$TORCHGRAFT_CACHE/manifests/`` (default ``~/.cache/torchgraft/manifests/``), one ``.npz`` per data path
(arrays, no pickles: a million entries load in a fraction of a second). It is written atomically; an
unreadable one is ignored with a warning and rebuilt.

:attr:`Manifest.fingerprint` hashes the entries (paths, sizes, modification times, targets, split, bad
files): equal fingerprints mean the same samples from the same file contents, which the feature cache keys on.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchgraft.cachedir import cache_root
from torchgraft.data.images import CHECKS, BadImage, io_processes, scan_images, usable_cores
from torchgraft.data.samples import Sample, Target

__all__ = ["Checked", "Manifest", "cache_root", "checked_files", "manifest_file"]

VERSION = 1
LEVELS = {"none": 0, "header": 1, "full": 2}  # how far a file was checked; a higher level covers the lower
_SEP = "\0"  # cannot occur in a path or a CSV cell


def manifest_file(source: str | Path, directory: str | Path | None = None) -> Path:
    """The manifest of the data at ``source`` (a folder or a table): ``<hash of the resolved path>.npz`` in
    ``directory`` (default ``cache_root()/manifests``)."""
    key = hashlib.sha256(str(Path(source).resolve()).encode()).hexdigest()[:24]
    return Path(directory or cache_root() / "manifests") / f"{key}.npz"


def _text(target: Target) -> str:
    return ";".join(map(str, target)) if isinstance(target, tuple) else str(target)


@dataclass
class Manifest:
    """The entries of one data source, in sample order (training samples, then validation ones).

    Attributes:
        base: the folder every relative path is under (the data folder, or the table's folder), resolved.
        paths: each file's path relative to ``base`` (as given when outside it).
        sizes, mtimes: ``st_size`` and ``st_mtime_ns`` of each file when it was checked.
        levels: how far each file was checked: 0 not at all, 1 its header, 2 fully decoded.
        targets: each sample's target as text (``"3"``, ``"1;4"``, ``"0.5;2.0"``).
        valid: 1 for a validation sample.
        reasons: why each bad file is bad, by entry index.
    """

    base: str
    paths: list[str]
    sizes: np.ndarray
    mtimes: np.ndarray
    levels: np.ndarray
    targets: list[str]
    valid: np.ndarray
    reasons: dict[int, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """A hash of every entry (path, size, modification time, target, split) and of the bad files."""
        digest = hashlib.sha256(self.base.encode() + _SEP.encode() + _SEP.join(self.paths).encode())
        digest.update(_SEP.join(self.targets).encode())
        for array in (self.sizes, self.mtimes, self.valid):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(json.dumps(sorted(self.reasons.items())).encode())
        return digest.hexdigest()

    def same_as(self, other: Manifest | None) -> bool:
        """Whether ``other`` holds exactly these entries and verdicts (then there is nothing to save again)."""
        if other is None or (self.base, self.paths, self.targets, self.reasons) != (
            other.base,
            other.paths,
            other.targets,
            other.reasons,
        ):
            return False
        arrays = ("sizes", "mtimes", "levels", "valid")
        return all(np.array_equal(getattr(self, name), getattr(other, name)) for name in arrays)

    def save(self, path: Path) -> None:
        """Write the manifest to ``path`` atomically (a temporary file beside it, then ``os.replace``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"version": VERSION, "base": self.base, "reasons": {str(k): v for k, v in self.reasons.items()}}
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(
                    file,
                    meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                    paths=np.frombuffer(_SEP.join(self.paths).encode(), np.uint8),
                    targets=np.frombuffer(_SEP.join(self.targets).encode(), np.uint8),
                    sizes=self.sizes,
                    mtimes=self.mtimes,
                    levels=self.levels,
                    valid=self.valid,
                )
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """The manifest saved at ``path``.

        Raises:
            ValueError: the file is not a manifest of this version (or is damaged); OSError: unreadable.
        """
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(saved["meta"].tobytes())
            if meta.get("version") != VERSION:
                raise ValueError(f"manifest version {meta.get('version')}, expected {VERSION}")
            paths, targets = (saved[k].tobytes().decode() for k in ("paths", "targets"))
            arrays = {k: saved[k] for k in ("sizes", "mtimes", "levels", "valid")}
        manifest = cls(meta["base"], _split(paths), **arrays, targets=_split(targets))  # type: ignore[arg-type]
        manifest.reasons = {int(k): v for k, v in meta["reasons"].items()}
        if not len(manifest.paths) == len(manifest.targets) == len(arrays["sizes"]) == len(arrays["levels"]):
            raise ValueError("entries of different lengths")
        return manifest


def _split(text: str) -> list[str]:
    return text.split(_SEP) if text else []


@dataclass
class Checked:
    """What :func:`checked_files` found: the bad files (in sample order), the data's fingerprint, how many
    files were checked now and how many verdicts came from the manifest, and warnings."""

    bad: list[BadImage]
    fingerprint: str
    checked: int
    reused: int = 0
    warnings: list[str] = field(default_factory=list)


FORKED_STATS = 100_000  # from this many files, stat them in forked processes (io_processes())


def _stat_range(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    sizes, mtimes = np.full(len(paths), -1, np.int64), np.full(len(paths), -1, np.int64)
    missing: dict[int, str] = {}
    stat = os.stat
    for i, path in enumerate(paths):
        try:
            found = stat(path)
        except OSError as error:
            missing[i] = f"{type(error).__name__}: {error.strerror}"
            continue
        sizes[i], mtimes[i] = found.st_size, found.st_mtime_ns
    return sizes, mtimes, missing


_FORKED: Sequence[str] = ()  # the paths a forked stat process reads (inherited at the fork, not pickled)


def _keep_paths(paths: Sequence[str]) -> None:
    global _FORKED
    _FORKED = paths


def _stat_chunk(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    return _stat_range(_FORKED[bounds[0] : bounds[1]])


def _stats(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """``st_size`` and ``st_mtime_ns`` of each path (-1 for a file that cannot be stat'ed: why, by index). From
    :data:`FORKED_STATS` files on a Linux machine with several cores, in forked processes
    (:func:`~torchgraft.data.images.io_processes`: 1.0 s instead of 1.9 s for 1M cached files on 2 cores, and
    more requests in flight for files out of the cache); threads make it slower (the interpreter's work per
    file outweighs the kernel's, and it holds the interpreter lock: measured)."""
    if len(paths) < FORKED_STATS or usable_cores() < 2 or sys.platform != "linux":
        return _stat_range(paths)
    processes = io_processes()
    count, pieces = len(paths), 4 * processes
    bounds = [(k * count // pieces, (k + 1) * count // pieces) for k in range(pieces)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_keep_paths, initargs=(paths,)) as pool:
        parts = list(pool.map(_stat_chunk, bounds))
    missing = {start + i: why for (start, _), part in zip(bounds, parts, strict=True) for i, why in part[2].items()}
    return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts]), missing


def _read(file: Path) -> tuple[Manifest | None, list[str]]:
    """The manifest at ``file`` (``None`` when there is none), or ``None`` and a warning when it is unreadable."""
    if not file.is_file():
        return None, []
    try:
        return Manifest.load(file), []
    except Exception as error:  # any damage: rebuild it rather than fail the run
        return None, [f"manifest {file} unreadable ({type(error).__name__}: {error}): rebuilt"]


def _relative(paths: Sequence[str], base: str) -> list[str]:
    prefix = base.rstrip(os.sep) + os.sep
    cut = len(prefix)
    return [path[cut:] if path.startswith(prefix) else path for path in paths]


def _reused(entries: Manifest, old: Manifest | None, want: int) -> tuple[np.ndarray, dict[int, str]]:
    """Which entries keep their recorded verdict (same file, same size and time, checked far enough or
    bad), and the recorded reasons of those that are bad."""
    if old is None or old.base != entries.base:
        return np.zeros(len(entries.paths), bool), {}
    if old.paths == entries.paths:  # the same listing (the usual next run): entry i is entry i, no lookup
        at = np.arange(len(entries.paths), dtype=np.int64)
    else:
        index = {path: i for i, path in enumerate(old.paths)}
        at = np.fromiter((index.get(path, -1) for path in entries.paths), np.int64, len(entries.paths))
    known = at >= 0
    where = np.where(known, at, 0)
    same = known & (old.sizes[where] == entries.sizes) & (old.mtimes[where] == entries.mtimes) & (entries.sizes >= 0)
    was_bad = np.zeros(len(old.paths) or 1, bool)
    was_bad[list(old.reasons)] = True
    keep = same & ((old.levels[where] >= want) | was_bad[where])
    entries.levels[keep] = np.maximum(old.levels[where][keep], want)
    reasons = {int(i): old.reasons[int(at[i])] for i in np.flatnonzero(keep & was_bad[where])}
    return keep, reasons


def checked_files(
    train: Sequence[Sample],
    valid: Sequence[Sample],
    *,
    source: str | Path,
    check: str = "header",
    directory: str | Path | None = None,
    remember: bool = True,
    progress: bool = False,
) -> Checked:
    """Check the image files of ``train`` and ``valid`` as far as ``check`` asks (``"header"``, ``"full"``,
    ``"none"``), reusing the verdicts of the manifest of ``source`` for unchanged files, and save the manifest
    (in ``directory``, default ``cache_root()/manifests``; ``remember=False``: neither read nor written).

    Example:
        >>> found = checked_files(data.train, data.valid, source="pets/")
        >>> found.checked, found.fingerprint[:8]  # a second call on unchanged files checks none
        (0, '5f2a9c1e')
    """
    if check not in CHECKS:
        raise ValueError(f"check={check!r}; choose from {', '.join(CHECKS)}.")
    source = Path(source)
    paths = [path for path, _ in train] + [path for path, _ in valid]
    sizes, mtimes, missing = _stats(paths)
    folder = source if source.is_dir() else source.parent  # the sample paths start with it, as given
    targets = [_text(target) for _, target in train] + [_text(target) for _, target in valid]
    split = np.concatenate([np.zeros(len(train), np.uint8), np.ones(len(valid), np.uint8)])
    relative, levels = _relative(paths, str(folder)), np.zeros(len(paths), np.uint8)
    entries = Manifest(str(folder.resolve()), relative, sizes, mtimes, levels, targets, split)
    file = manifest_file(source, directory)
    old, warnings = _read(file) if remember else (None, [])
    keep, reasons = _reused(entries, old, LEVELS[check])
    again = [int(i) for i in np.flatnonzero(~keep)]
    fresh = [paths[i] for i in again if i not in missing]
    found = {bad.path: bad.reason for bad in scan_images(fresh, check=check, progress=progress)}
    entries.levels[~keep] = LEVELS[check]
    entries.reasons = {**reasons, **missing, **{i: found[paths[i]] for i in again if paths[i] in found}}
    if remember and not entries.same_as(old):  # a second run on unchanged data writes nothing
        try:
            entries.save(file)
        except OSError as error:
            warnings.append(f"manifest not saved to {file} ({error}); set TORCHGRAFT_CACHE to a writable folder")
    bad = [BadImage(paths[i], entries.reasons[i]) for i in sorted(entries.reasons)]
    checked = len(fresh) if check != "none" else 0
    return Checked(bad, entries.fingerprint, checked, int(keep.sum()), warnings)
