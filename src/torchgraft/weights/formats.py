"""What a weights file is, read from its first bytes rather than its name.

``torch.save`` writes a zip archive (a pickle, or a tar archive, in older versions) and safetensors files
start with the length of a JSON header. Anything else — a text file named ``x.pth``, an HTML page saved
instead of a download — is named as such before an unpickler fails on it with a bare ``KeyError: 101``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PYTORCH_KINDS", "FileFormat", "file_format", "zip_members"]

PYTORCH_KINDS: tuple[str, ...] = ("zip", "pickle", "tar")  # what torch.load reads
_HEAD = 512  # enough for a tar header (its magic is at byte 257)
_MAX_HEADER = 100_000_000
_NAMES = {
    "zip": "a zip archive",
    "pickle": "a pickle",
    "tar": "a tar archive",
    "safetensors": "a safetensors file",
    "empty": "an empty file",
}


@dataclass(frozen=True)
class FileFormat:
    """The kind of a file and how to name it in a message.

    Attributes:
        kind: ``"zip"``, ``"pickle"``, ``"tar"``, ``"safetensors"``, ``"text"``, ``"binary"`` or ``"empty"``.
        description: e.g. ``"a text file (starting 'hello')"``.
    """

    kind: str
    description: str


def _safetensors_header(head: bytes) -> bool:
    """An 8-byte little-endian header length (safetensors caps it at 100 MB), then the header's opening brace."""
    return len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= _MAX_HEADER


def _text(head: bytes) -> str | None:
    """The first line of ``head`` if it reads as text, else ``None``."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a character cut at the end of the head is still text
        if error.start < len(head) - 3:
            return None
        text = head[: error.start].decode("utf-8")
    if not all(c.isprintable() or c in "\t\n\r\f" for c in text):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first[:40] + ("..." if len(first) > 40 else "")


def file_format(path: Path) -> FileFormat:
    """Sniff ``path``'s first bytes.

    Example:
        >>> file_format(Path("x.pth")).description  # a file holding "hello"
        "a text file (starting 'hello')"
    """
    with path.open("rb") as handle:
        head = handle.read(_HEAD)
    if not head:
        kind = "empty"
    elif head.startswith(b"PK\x03\x04"):
        kind = "zip"
    elif head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # PROTO 2..5
        kind = "pickle"
    elif head[257:262] == b"ustar":
        kind = "tar"
    elif _safetensors_header(head):
        kind = "safetensors"
    elif (line := _text(head)) is not None:
        return FileFormat("text", f"a text file (starting {line!r})")
    else:
        return FileFormat("binary", f"binary data (starting {head[:8].hex(' ')})")
    return FileFormat(kind, _NAMES[kind])


def zip_members(path: Path) -> list[str] | None:
    """The names inside a zip archive, or ``None`` when it cannot be opened (truncated, damaged)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return None
