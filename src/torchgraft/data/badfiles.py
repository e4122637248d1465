"""The files that failed to decode during training, recorded by whichever process met them.

A :class:`BadFiles` is an append-only JSON-lines file: every DataLoader worker (a forked or spawned copy of
the dataset) appends one line per bad file with ``O_APPEND`` (one ``write`` of a short line: lines of
different processes never interleave), and the main process reads them all. So the count is right whatever
the number of workers, and nothing needs a queue or shared memory; ranks of a ``torchrun`` job each keep
their own and gather them (:class:`torchgraft.app.unreadable.UnreadableFiles`).

Example:
    >>> log = BadFiles()  # a temporary file, removed with the object that made it
    >>> log.record(BadImage("a.jpg", "OSError: image file is truncated"))
    >>> [b.path for b in log.read()]
    ['a.jpg']
"""

from __future__ import annotations

import json
import os
import tempfile
import weakref
from pathlib import Path
from typing import Any

from torchgraft.data.images import BadImage

__all__ = ["BadFiles"]


def _remove(path: str, owner: int) -> None:
    if os.getpid() == owner:  # a forked worker inherits the finalizer: only the creating process removes the file
        Path(path).unlink(missing_ok=True)


class BadFiles:
    """An append-only log of bad files at ``path`` (default: a new temporary file, deleted when the object that
    created it is collected; copies in worker processes never delete it)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._cleanup: weakref.finalize | None = None
        if path is None:
            handle, path = tempfile.mkstemp(prefix="torchgraft-bad-", suffix=".jsonl")
            os.close(handle)
            self._cleanup = weakref.finalize(self, _remove, path, os.getpid())
        self.path = Path(path)
        self._seen: set[str] = set()  # recorded by this process (each file once per process)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_seen": set(), "_cleanup": None}  # a worker's copy owns nothing

    def record(self, bad: BadImage) -> None:
        """Append ``bad`` (its path and reason) unless this process recorded that file already."""
        if bad.path in self._seen:
            return
        self._seen.add(bad.path)
        line = json.dumps({"path": bad.path, "error": bad.reason}) + "\n"
        handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(handle, line.encode())
        finally:
            os.close(handle)

    def read(self) -> list[BadImage]:
        """Every file recorded by any process, each once, in the order first recorded."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        found: dict[str, BadImage] = {}
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a killed worker
                continue
            found.setdefault(entry["path"], BadImage(entry["path"], entry["error"]))
        return list(found.values())

    def summary(self, count: int = 3) -> str:
        """``"2 files: a.jpg (OSError: ...), b.jpg (...)"``: the count and the first ``count`` files."""
        bad = self.read()
        listed = ", ".join(f"{b.path} ({b.reason})" for b in bad[:count])
        more = f" and {len(bad) - count} more" if len(bad) > count else ""
        return f"{len(bad)} files: {listed}{more}"
