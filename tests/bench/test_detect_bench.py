"""bench/detect.py runs end to end: its --smoke mode (two tiny targets, one per role, 1 epoch) gives a table
with both arms' numeric mAPs and wall times, and a JSON record of every run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def test_reported_targets_refuse_a_grid_of_settings(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "detect.py"), "--smoke", "--ours-lr", "1e-3,3e-4",
         "--scenes", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert done.returncode != 0 and "2 torchgraft settings on reported targets" in done.stderr


@pytest.mark.slow  # four whole processes (two arms x two targets): about 75 s on 2 CPU cores
def test_the_detection_bench_smoke_run_reports_both_arms(tmp_path):
    results = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "detect.py"), "--smoke", "--scenes", str(tmp_path / "scenes"),
         "--results", str(results)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    header = next(line for line in done.stdout.splitlines() if line.startswith("| target |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    rows = {}
    for line in done.stdout.splitlines():
        if line.startswith("| smoke-"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = dict(zip(columns, cells, strict=True))
    assert {row["role"] for row in rows.values()} == {"choosing", "reported"}
    for row in rows.values():
        for arm in ("ours", "tutorial"):
            mean_ap = row[next(c for c in columns if c.startswith(f"{arm} mAP") and "50" not in c)]
            assert 0.0 <= float(mean_ap.split()[0]) <= 1.0
            assert 0.0 <= float(row[f"{arm} mAP50"]) <= 1.0
            assert float(row[f"{arm} wall s"]) > 0
        assert row["wall ours/tutorial"].endswith("x")
    recorded = json.loads(results.read_text())
    assert [r["role"] for r in recorded] == ["choosing", "reported"]
    assert all(isinstance(r[arm]["map"], int | float) for r in recorded for arm in ("ours", "tutorial"))
