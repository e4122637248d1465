"""bench/gpu_check.sh stays runnable: its syntax, and every step of it tiny on the CPU (gloo for DDP/FSDP2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def test_the_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")], check=True)


@pytest.mark.slow
def test_the_gpu_check_runs_every_step_tiny_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    single = json.loads((tmp_path / "single.json").read_text())
    assert single["learner_images_per_s"] > 0 and single["hand_images_per_s"] > 0
    assert set(single["frozen"]) == {"cached", "uncached"}
    for strategy in ("ddp", "fsdp"):
        report = json.loads((tmp_path / f"{strategy}.json").read_text())
        assert report["strategy"] == strategy and report["world"] == 2 and report["backend"] == "gloo"
        assert report["every_rank_on_cuda_local_rank"] and report["finite_weights"]
        assert [r["phase"] for r in report["history"]] == [0, 1]
