"""The report page of a run, ``RUN_DIR/report.html``: one self-contained HTML file (the pictures embedded as
``data:`` URIs; no script, no stylesheet, font or image fetched from anywhere) with the run's summary, its
plan and stages as run, the curves, per-class metrics, the task's pictures, where the time went and what it
ran on. Built from the run folder's files alone — ``model.json`` (with its ``timings`` and ``environment``),
``plan.txt``, ``history.csv``, ``per_class.csv``, every PNG of the folder and of ``pictures/`` — so
``torchgraft report RUN_DIR`` rebuilds the same page, and a folder missing pieces (no plots without
matplotlib, an older run) gives a page of what exists that says what is missing.

Standard library only: text from the files goes through :func:`html.escape`, no template engine.

Example:
    >>> write_report("runs/pets")
    PosixPath('runs/pets/report.html')
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["REPORT_FILE", "SECTIONS", "NotARunFolder", "build_report", "write_report"]

REPORT_FILE = "report.html"
# (id, heading) of every section of the page, in order; each is on every page, saying so when its source is missing
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("plan", "Plan"),
    ("stages", "Stages as run"),
    ("curves", "Curves"),
    ("per-class", "Per-class metrics"),
    ("pictures", "Task pictures"),
    ("timings", "Timings"),
    ("environment", "Environment"),
    ("files", "Files"),
)
_MARKERS = ("model.json", "history.csv", "history.json", "plan.txt")  # a folder holding none of them is no run
_CURVES = ("loss", "lr")  # top-level PNGs whose name starts so are curves; every other PNG is a task picture
_PNG = b"\x89PNG\r\n\x1a\n"
_PARTS = {  # model.json's timings, in words
    "startup": "start-up (the interpreter, imports, the command line)",
    "data": "data: listed, checked, read",
    "network": "network: built, grafted, loaders",
    "plan": "plan: layer groups and stages",
    "fine_tune": "fine-tune",
    "validation_report": "validation report (the exported epoch restored)",
    "export": "export: model, history",
    "plots": "plots and task pictures",
}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ccc; padding: .2em .6em; }
th { background: #eef; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
figure { display: inline-block; margin: .5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; } figcaption { font-size: .9em; color: #555; }
.missing { color: #a33; } nav a { margin-right: 1em; }
"""


class NotARunFolder(ValueError):
    """A folder that holds no run (none of ``model.json``, ``history.csv``, ``history.json``, ``plan.txt``)."""


@dataclass
class _Run:
    """What the run folder holds, read once; ``missing`` collects what it lacks, in words."""

    folder: Path
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, folder: Path) -> _Run:
        run = cls(folder)
        run.config = run._json("model.json", "the exported model's record (the run ended before its export)")
        if (folder / "history.csv").is_file():
            with (folder / "history.csv").open(newline="") as handle:
                run.history = list(csv.DictReader(handle))
        else:
            rows = run._json("history.json", "the epochs' history (the run ended before its first epoch)")
            run.history = rows if isinstance(rows, list) else []
        return run

    def _json(self, name: str, what: str) -> Any:
        path = self.folder / name
        if not path.is_file():
            self.missing.append(f"{name}: {what}")
            return {}
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            self.missing.append(f"{name} could not be read ({error})")
            return {}

    def note(self, text: str) -> str:
        """``text`` as a paragraph saying what is missing, and recorded for the summary."""
        self.missing.append(text)
        return f'<p class="missing">{html.escape(text)}</p>'


def _cell(value: Any) -> str:
    """A table cell: numbers right-aligned with 4 significant digits (integers whole), the rest escaped."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    else:
        try:
            number = float(value) if "." in str(value) or "e" in str(value).lower() else int(value)
        except (TypeError, ValueError):
            return f"<td>{html.escape(str(value))}</td>"
    shown = f"{number:,}" if isinstance(number, int) else f"{number:.4g}"
    return f'<td class="n">{html.escape(shown)}</td>'


def _table(header: list[str] | None, rows: list[list[Any]]) -> str:
    """A table of ``rows`` under ``header`` (``None``: name-value rows, no header)."""
    head = "" if header is None else "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>\n"
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>\n" for row in rows)
    return f"<table>\n{head}{body}</table>"


def _figure(path: Path, name: str) -> str:
    """``path`` embedded as a ``data:`` URI, captioned from its file name; a file that is no PNG is named."""
    data = path.read_bytes()
    caption = html.escape(path.stem.replace("_", " ").replace("-", " "))
    if not data.startswith(_PNG):
        return f'<p class="missing">{html.escape(name)} is not a PNG file: left out.</p>'
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img src="{uri}" alt="{caption}">'
        f"<figcaption>{caption} <code>{html.escape(name)}</code></figcaption></figure>"
    )


def _pngs(folder: Path) -> tuple[list[Path], list[Path]]:
    """The run folder's curves (top-level ``loss*.png``, ``lr*.png``) and task pictures (the other top-level
    PNGs, then ``pictures/*.png``), each sorted by name."""
    top = sorted(folder.glob("*.png"))
    curves = [p for p in top if p.stem.startswith(_CURVES)]
    pictures = [p for p in top if p not in curves] + sorted((folder / "pictures").glob("*.png"))
    return curves, pictures


def _summary(run: _Run) -> str:
    config, final = run.config, run.config.get("final") or {}
    classes = [str(c) for c in config.get("classes") or []]
    rows: list[list[Any]] = [
        ["task", (config.get("task") or {}).get("name", "not recorded")],
        ["architecture", config.get("architecture", "not recorded")],
        ["weights", config.get("weights", "not recorded")],
        ["classes", f"{len(classes)}: {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}"],
        ["epochs run", len(run.history)],
    ]
    exported = final.get("exported")
    if isinstance(exported, dict):
        why = f" ({exported['monitor']}, {exported.get('mode')})" if exported.get("monitor") else ""
        where = f"row {exported.get('row')}: {exported.get('stage')} epoch {exported.get('epoch')}"
        rows.append(["exported", f"the {exported.get('choice')} epoch{why}, {where}"])
    rows += [[k, v] for k, v in final.items() if isinstance(v, float) and k != "seconds"]
    if final.get("unreadable_files"):
        rows.append(["unreadable files replaced", len(final["unreadable_files"])])
    return _table(None, rows)


def _plan(run: _Run) -> str:
    path = run.folder / "plan.txt"
    if not path.is_file():
        return run.note("no plan.txt: the run was made before the plan was written, or stopped before training.")
    return f"<pre>{html.escape(path.read_text(errors='replace'))}</pre>"


def _stages(run: _Run) -> str:
    parts = []
    stages = (run.config.get("timings") or {}).get("stages")
    if stages:
        parts.append(_table(["stage", "epochs", "seconds"], [[s["stage"], s["epochs"], s["seconds"]] for s in stages]))
    if not run.history:
        return "".join(parts) + run.note("no history.csv or history.json: no epoch of this run was recorded.")
    header = list(dict.fromkeys(k for row in run.history for k in row))
    rows = [[row.get(k, "") for k in header] for row in run.history]
    if stages and "stage" not in header and "phase" in header:  # name each row's stage, as the plan does
        names, at = [s["stage"] for s in stages], header.index("phase")
        header, rows = ["stage", *header], [[_stage_name(row[at], names), *row] for row in rows]
    parts.append(_table(header, rows))
    return "\n".join(parts)


def _stage_name(phase: Any, names: list[str]) -> str:
    try:
        return names[int(phase)]
    except (ValueError, IndexError):
        return f"phase {phase}"


def _images(run: _Run, paths: list[Path], missing: str) -> str:
    if not paths:
        return run.note(missing)
    return "\n".join(_figure(p, p.relative_to(run.folder).as_posix()) for p in paths)


def _per_class(run: _Run) -> str:
    path = run.folder / "per_class.csv"
    if not path.is_file():
        return run.note("no per_class.csv: a run made before per-class metrics were written, or a task without classes")
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return run.note("per_class.csv is empty.")
    return _table(rows[0], rows[1:])


def _timings(run: _Run) -> str:
    timings = run.config.get("timings")
    if not isinstance(timings, dict):
        return run.note("model.json has no timings: a run made before torchgraft recorded them.")
    seconds = {k: v for k, v in timings.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    total = sum(seconds.values())
    rows: list[list[Any]] = []
    for key, value in timings.items():
        if key in seconds:
            rows.append([_PARTS.get(key, key.replace("_", " ")), value, f"{value / total:.1%}" if total else ""])
        elif value is None:  # start-up: a run started from Python, in a process that was there before it
            rows.append([_PARTS.get(key, key), "not part of the run (started from Python)", ""])
        if key == "fine_tune":
            stages = timings.get("stages") or []
            rows += [[f"stage {s['stage']} ({_epochs(s['epochs'])})", s["seconds"], ""] for s in stages]
            between = value - sum(s["seconds"] for s in stages)
            if stages and between >= 0:  # a resumed run's earlier epochs were timed by another process
                rows.append(["outside the epochs (stage set-up, checkpoints written, feature cache)", between, ""])
    rows.append(["total", total, "100%"])
    return _table(["part", "seconds", "share"], rows)


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def _environment(run: _Run) -> str:
    env = run.config.get("environment")
    if not isinstance(env, dict):
        version = run.config.get("torchgraft_version")
        known = f" (model.json names torchgraft {version})" if version else ""
        return run.note(f"model.json has no environment: a run made before torchgraft recorded it{known}.")
    words = {"world_size": "processes (world size)"}
    return _table(None, [[words.get(k, k), str(v)] for k, v in env.items()])


def _files(run: _Run, *, listed: int = 12) -> str:
    """The run folder's files with their sizes; a folder of more than ``listed`` files (the demo's data/) is
    one row with its count."""
    rows: list[list[Any]] = []
    for path in sorted(run.folder.iterdir()):
        if path.is_file() and not path.name.startswith(REPORT_FILE):
            rows.append([path.name, path.stat().st_size])
        elif path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file())
            if len(inside) > listed:
                rows.append([f"{path.name}/ ({len(inside):,} files)", sum(p.stat().st_size for p in inside)])
            else:
                rows += [[p.relative_to(run.folder).as_posix(), p.stat().st_size] for p in inside]
    return _table(["file", "bytes"], rows)


def build_report(run_dir: str | Path) -> str:
    """The report page of the run in ``run_dir``, as HTML text (see the module's description).

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        NotARunFolder: it holds no run.
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise FileNotFoundError(f"{folder}: {what}; pass a RUN_DIR that torchgraft train or demo wrote (their --out).")
    if not any((folder / name).is_file() for name in _MARKERS):
        raise NotARunFolder(
            f"{folder} is not a run folder (it holds none of {', '.join(_MARKERS)}); pass a RUN_DIR that "
            f"torchgraft train or demo wrote (their --out)."
        )
    run = _Run.read(folder)
    curves, pictures = _pngs(folder)
    bodies = {
        "plan": _plan(run),
        "stages": _stages(run),
        "curves": _images(
            run,
            curves,
            "no curves (loss.png, lr.png): they are drawn with matplotlib, which the "
            "run did not have (pip install matplotlib), or the run stopped before them.",
        ),
        "per-class": _per_class(run),
        "pictures": _images(
            run,
            pictures,
            "no task pictures (pictures/*.png): drawn with matplotlib after training, by tasks that draw them.",
        ),
        "timings": _timings(run),
        "environment": _environment(run),
        "files": _files(run),
    }
    bodies["summary"] = _summary(run)  # last: it lists what the other sections found missing
    if run.missing:
        listed = "".join(f"<li>{html.escape(m)}</li>" for m in run.missing)
        bodies["summary"] += f'\n<p class="missing">Missing from this run folder:</p>\n<ul>{listed}</ul>'
    title = html.escape(f"torchgraft run: {folder.resolve().name}")
    nav = "".join(f'<a href="#{key}">{html.escape(heading)}</a>' for key, heading in SECTIONS)
    sections = "\n".join(
        f'<section id="{key}">\n<h2>{html.escape(heading)}</h2>\n{bodies[key]}\n</section>' for key, heading in SECTIONS
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n<nav>{nav}</nav>\n{sections}\n</body>\n</html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from the run folder's files and return its path.

    Example:
        >>> write_report("runs/pets")  # then open runs/pets/report.html in a browser
    """
    page = build_report(run_dir)
    path = Path(run_dir) / REPORT_FILE
    partial = path.with_name(REPORT_FILE + ".partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)
    return path
