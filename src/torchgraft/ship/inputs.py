"""What ``torchgraft predict`` and :func:`torchgraft.predict_images` / :func:`~torchgraft.predict_texts` take
as inputs, resolved in one place: files, folders (every image, or every ``.txt``, inside, sorted), CSV /
JSON-lines files (the paths or texts of their input column: ``path``/``image``/``text``..., or ``x_col``), and
for text models, anything else is a text. A single string is one input, never a sequence of characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torchgraft.data.images import IMAGE_SUFFIXES
from torchgraft.data.tables import X_NAMES, Table, TableError, read_table
from torchgraft.spelling import option

__all__ = ["TABLE_SUFFIXES", "Inputs", "as_items", "expand_images", "expand_texts", "shorten_text"]

TABLE_SUFFIXES = (".csv", ".jsonl", ".ndjson")
_WRITTEN = (".mask.png", ".overlay.png")  # what predict writes for a segmentation model: never read back as input

Inputs = str | Path | Sequence[str | Path]


def as_items(inputs: Inputs) -> list[str]:
    """``inputs`` as a list of strings: one string or path is one item (not its characters).

    Raises:
        TypeError: ``inputs`` is neither a string, a path nor a sequence of them.
    """
    if isinstance(inputs, str | Path):
        return [str(inputs)]
    if not isinstance(inputs, Sequence) or not all(isinstance(item, str | Path) for item in inputs):
        raise TypeError(f"inputs: give a path, a text, or a list of them; got {type(inputs).__name__}.")
    return [str(item) for item in inputs]


def _on_disk(item: str) -> tuple[bool, bool]:
    """``(is a folder, is a file)`` for ``item``; a text too long or too odd for a path is neither."""
    if len(item) > 1024 or "\n" in item or "\0" in item:
        return False, False
    try:
        path = Path(item)
        return path.is_dir(), path.is_file()
    except (OSError, ValueError):  # a name too long for the file system
        return False, False


def _named_txt(item: str) -> bool:
    """A one-line item that names a ``.txt`` file (missing files are errors, not texts)."""
    return "\n" not in item and len(item) <= 1024 and item.lower().endswith(".txt") and " " not in item.strip()


def shorten_text(text: str, width: int = 60) -> str:
    """``text`` on one line, cut to ``width`` characters with ``...``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _input_column(table: Table, x_col: str | None) -> int:
    """The input column of a table of inputs (no target column needed): ``x_col``, else the column named like
    path/image/text, else the first."""
    lowered = [h.lower() for h in table.header] if table.header else []
    if x_col:
        if x_col.lower() not in lowered:
            columns = ", ".join(table.header or []) or "none: the file has no header row"
            given = option(f"x_col={x_col!r}", f"--x-col {x_col}")
            raise TableError(f"{table.path}: no column {x_col!r} ({given}); the columns are {columns}.")
        return lowered.index(x_col.lower())
    return next((lowered.index(n) for n in X_NAMES if n in lowered), 0)


def _table_inputs(path: Path, x_col: str | None) -> list[tuple[str, str]]:
    """``(file:LINE, cell)`` of a table's input column (empty cells left out)."""
    table = read_table(path)
    x = _input_column(table, x_col)
    return [(f"{path}:{line}", cells[x]) for line, cells in table.rows if len(cells) > x and cells[x].strip()]


def expand_images(inputs: Inputs, *, x_col: str | None = None) -> list[Path]:
    """Files as given; folders replaced by the image files inside them (sorted); a CSV / JSON-lines file by
    the paths in its input column (relative to its folder).

    Raises:
        FileNotFoundError: an input that is no file or folder, or no image at all.
        TableError: ``x_col`` is not a column of a table.

    Example:
        >>> expand_images(["photos/", "more.csv", "one.jpg"])
        [PosixPath('photos/a.jpg'), PosixPath('photos/b.jpg'), PosixPath('x/1.jpg'), PosixPath('one.jpg')]
    """
    items = as_items(inputs)
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        folder, file = _on_disk(item)
        if folder:
            found = (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += sorted(p for p in found if not p.name.lower().endswith(_WRITTEN))
        elif file and path.suffix.lower() in TABLE_SUFFIXES:
            paths += [path.parent / cell.strip() for _, cell in _table_inputs(path, x_col)]
        elif file:
            paths.append(path)
        else:
            raise FileNotFoundError(f"{item}: no such image file or folder.")
    if not paths:
        raise FileNotFoundError(f"no image files in {', '.join(items)}.")
    return paths


def expand_texts(inputs: Inputs, *, x_col: str | None = None) -> tuple[list[str], list[str]]:
    """``(sources, texts)``: a ``.txt`` file is read (a folder: every ``.txt`` inside), a CSV / JSON-lines
    file gives the texts of its input column (sources ``file:LINE``), anything else is a text itself (its
    source: the text, shortened).

    Example:
        >>> expand_texts(["Shares rose.", "notes/"])[1][:1]
        ['Shares rose.']
    """
    items = as_items(inputs)
    sources: list[str | None] = []
    texts: list[str] = []
    for item in items:
        path = Path(item)
        folder, file = _on_disk(item)
        txt = path.suffix == ".txt" and (file or _named_txt(item))
        files = sorted(path.rglob("*.txt")) if folder else [path] if txt else []
        if folder and not files:
            raise FileNotFoundError(f"{item}: a folder with no .txt files.")
        if files and all(f.is_file() for f in files):
            for file in files:
                sources.append(str(file))
                texts.append(file.read_text(encoding="utf-8", errors="replace"))
        elif file and path.suffix.lower() in TABLE_SUFFIXES:
            for source, text in _table_inputs(path, x_col):
                sources.append(source)
                texts.append(text)
        elif files:
            raise FileNotFoundError(f"{item}: no such text file.")
        else:
            sources.append(None)
            texts.append(item)
    return [s if s is not None else shorten_text(t) for s, t in zip(sources, texts, strict=True)], texts
