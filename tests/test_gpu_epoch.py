"""``benchmarks/gpu_epoch.py --smoke`` runs end to end on the CPU, in the two calls a lent GPU makes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_paper_sweeps import image_tree

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_epoch_smoke_writes_every_figure(tmp_path: Path) -> None:
    # Prepare: a generated 32x32 image folder (24 training images: 3 batches of 8)
    data = image_tree(tmp_path / "tree", 32)
    out = tmp_path / "gpu_epoch.json"
    env = {**os.environ, "FL_CEM_DATA": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    command = [sys.executable, "benchmarks/gpu_epoch.py", "--smoke", "--data", str(data), "--rounds", "1", "--out", str(out)]

    # Execute: the centralized stage alone, then the federated stage alone, into the same JSON
    first = subprocess.run([*command, "--epochs", "2", "--clients"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    second = subprocess.run([*command, "--epochs", "0", "--clients", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    # Assert: both stages measured, the estimate's formula printed, the environment recorded
    for done in (first, second):
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["centralized"]["epoch_wall_s"]) == 2 and result["centralized"]["paper_schedule_s"] > 0
    assert "first + 239 x median(later)" in first.stdout and "first + 239" not in second.stdout
    assert result["federated_2"]["client_gpus"] == 0.0 and len(result["federated_2"]["epoch_s"]) == 1
    assert {"cuda", "torch_cuda", "flwr", "ray"} <= set(result["environment"])
