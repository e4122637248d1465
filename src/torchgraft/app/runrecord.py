"""What a run records about itself beside its model: where the time went (:class:`RunClock`) and what it ran
on (:func:`environment`), both kept in ``model.json`` (``timings``, ``environment``) so that the report page
(:mod:`torchgraft.app.report`) can be rebuilt from the run folder alone.

Example:
    >>> clock = RunClock(startup=process_seconds())  # the command line: the process is the run
    >>> ...  # read the data
    >>> clock.lap("data")
    >>> record_run("runs/pets", timings=clock.timings(), environment=environment(device="cpu", world_size=1))
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["RunClock", "environment", "process_seconds", "record_run", "stage_timings"]


def process_seconds() -> float | None:
    """Seconds since this process started (Linux: ``/proc``), or ``None`` where the system does not say."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time, in ticks since boot
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started)


class RunClock:
    """Wall-clock seconds of a run's parts, in the order they happened: each :meth:`lap` names the time since
    the previous lap (or since the clock was made). ``startup``: what came before the clock, for a run that is
    its process (``torchgraft train``: :func:`process_seconds`, the interpreter, the imports, the command line);
    ``None`` for a run started from Python, whose process was there before it."""

    def __init__(self, *, startup: float | None = None) -> None:
        self.startup = startup
        self.parts: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> float:
        """Add the seconds since the last lap to part ``name`` and return them."""
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self.parts[name] = self.parts.get(name, 0.0) + seconds
        return seconds

    def timings(self, **more: Any) -> dict[str, Any]:
        """The record for ``model.json``: ``startup``, the laps in order, then ``more`` (e.g. ``stages``)."""
        return {"startup": _rounded(self.startup), **{k: _rounded(v) for k, v in self.parts.items()}, **more}


def stage_timings(history: list[dict[str, Any]], stages: list[str]) -> list[dict[str, Any]]:
    """Per stage of the fine-tune, in the plan's order (the stage of a history row is ``stages[row["phase"]]``):
    its name, the epochs run and the seconds they took (the sum of the epochs' ``seconds`` in ``history``; a
    resumed run's earlier epochs included, as they were recorded)."""
    rows = [{"stage": name, "epochs": 0, "seconds": 0.0} for name in stages]
    for row in history:
        phase = int(row.get("phase", 0))
        while phase >= len(rows):  # a history longer than the plan names its stage by number
            rows.append({"stage": f"phase {len(rows)}", "epochs": 0, "seconds": 0.0})
        rows[phase]["epochs"] += 1
        rows[phase]["seconds"] += float(row.get("seconds", 0.0))
    return [{**entry, "seconds": _rounded(entry["seconds"])} for entry in rows]


def environment(*, device: str, world_size: int, device_name: str | None = None) -> dict[str, Any]:
    """What the run ran on: the versions of torchgraft, torch and torchvision (timm and transformers when
    installed), Python and the system, the device (with its name for a GPU), the number of processes and the
    date (UTC)."""
    from torchgraft._version import __version__

    versions = {"torchgraft": __version__}
    for package in ("torch", "torchvision", "timm", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            if package in ("torch", "torchvision"):
                versions[package] = "not installed"
    return {
        **versions,
        "python": platform.python_version(),
        "system": platform.platform(),
        "device": device + (f" ({device_name})" if device_name else ""),
        "world_size": world_size,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def record_run(run_dir: str | Path, *, timings: dict[str, Any], environment: dict[str, Any]) -> Path:
    """Add ``timings`` and ``environment`` to the run's ``model.json`` (rewritten atomically; the other fields
    stay as the export wrote them) and return its path."""
    path = Path(run_dir) / "model.json"
    config = json.loads(path.read_text())
    config.update(timings=timings, environment=environment)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(partial, path)
    return path


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
