"""Style is part of the test suite: ruff lint and format checks over the package and the tests."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command):
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is part of the test extra: pip install -e '.[test]'")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "src", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
