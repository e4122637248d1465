"""Files that are not checkpoints, or damaged ones: one error naming the file, what it is not, and the fix.

A text file named ``x.pth`` used to fail with a bare ``KeyError: 101`` from inside the unpickler.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from torchgraft import load_weights
from torchgraft.weights import CheckpointReadError, read_checkpoint

_NOT_WEIGHTS = "Pass a file written by torch.save or safetensors; if this one should be, download or copy it again."
_AGAIN = "Download or copy it again."


def _saved(**options: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(nn.Linear(3, 2).state_dict(), buffer, **options)
    return buffer.getvalue()


def _safetensors(folder: Path) -> bytes:
    save_file(dict(nn.Linear(3, 2).state_dict()), str(folder / "source.safetensors"))
    return (folder / "source.safetensors").read_bytes()


def _zip_of_images() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("images/cat.png", b"not really")
    return buffer.getvalue()


# file name -> (its bytes, given a scratch folder; what the error says after "cannot read checkpoint PATH (N bytes): ")
UNREADABLE: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "x.pth": (
        lambda _: b"hello\n",
        "it is a text file (starting 'hello'), not a PyTorch checkpoint (a zip archive or pickle written by "
        f"torch.save). {_NOT_WEIGHTS}",
    ),
    "notes.bin": (
        lambda _: b"model weights: see README\nline two\n",
        "it is a text file (starting 'model weights: see README'), not a PyTorch checkpoint",
    ),
    "empty.pth": (lambda _: b"", f"the file is empty. {_AGAIN}"),
    "truncated.pth": (
        lambda _: _saved()[:600],
        "a damaged or truncated PyTorch checkpoint (a zip archive: PytorchStreamReader failed reading zip "
        f"archive: failed finding central directory). {_AGAIN}",
    ),
    "truncated_legacy.pt": (
        lambda _: _saved(_use_new_zipfile_serialization=False)[:-5],
        "a damaged or truncated PyTorch checkpoint (a pickle: ",
    ),
    "random.safetensors": (
        lambda _: bytes(range(7, 207)) + os.urandom(100),  # no JSON header after the first 8 bytes
        f"it is binary data (starting 07 08 09 0a 0b 0c 0d 0e), not a safetensors file. {_NOT_WEIGHTS}",
    ),
    "random.ckpt": (lambda _: b"\x00\x01\x02\x03" * 50, "it is binary data (starting 00 01 02 03 00 01 02 03)"),
    "truncated.safetensors": (
        lambda folder: _safetensors(folder)[:-10],
        "a damaged safetensors file (Error while deserializing header: incomplete metadata",
    ),
    "saved_by_torch.safetensors": (
        lambda _: _saved(),
        "it is a PyTorch checkpoint (a zip archive written by torch.save), not a safetensors file. "
        "Rename it to saved_by_torch.pth.",
    ),
    "safetensors.pth": (
        lambda folder: _safetensors(folder),
        "it is a safetensors file, not a PyTorch checkpoint. Rename it to safetensors.safetensors.",
    ),
    "images.pth": (
        lambda _: _zip_of_images(),
        f"it is a zip archive holding images/cat.png, not a PyTorch checkpoint (no data.pkl inside). {_NOT_WEIGHTS}",
    ),
}


def write_unreadable(name: str, folder: Path) -> tuple[Path, str]:
    """Write the file ``name`` of :data:`UNREADABLE` into ``folder``: its path and the error expected."""
    content, what = UNREADABLE[name]
    path = folder / name
    path.write_bytes(content(folder))
    return path, f"cannot read checkpoint {path} ({path.stat().st_size:,} bytes): {what}"


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_a_file_that_is_not_a_readable_checkpoint_is_named_in_one_line(name, tmp_path):
    path, expected = write_unreadable(name, tmp_path)
    for read in (read_checkpoint, lambda p: load_weights(nn.Linear(3, 2), p)):
        with pytest.raises(CheckpointReadError) as error:
            read(path)
        message = str(error.value)
        assert message.startswith(expected) and "\n" not in message, message
        chained = error.value.__cause__ or (None if error.value.__suppress_context__ else error.value.__context__)
        assert chained is None  # no unpickler traceback behind it


def test_checkpoints_in_every_format_torch_save_writes_still_load(tmp_path):
    state = nn.Linear(3, 2).state_dict()
    for name, options in (("zip.pth", {}), ("legacy.pt", {"_use_new_zipfile_serialization": False})):
        torch.save(state, tmp_path / name, **options)
        model = nn.Linear(3, 2)
        assert load_weights(model, tmp_path / name).ok
        assert torch.equal(model.weight, state["weight"])
    (tmp_path / "plain.safetensors").write_bytes(_safetensors(tmp_path))
    assert load_weights(nn.Linear(3, 2), tmp_path / "plain.safetensors").ok
