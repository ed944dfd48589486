"""UnlearnCallback under Lightning's DDP strategy: 2 CPU processes (gloo), identical weights."""

import os
import subprocess
import sys
from pathlib import Path

import torch


def test_ddp_ranks_end_identical(tmp_path):
    script = Path(__file__).parent / "_ddp_unlearn_script.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["applied"] == r1["applied"] and r0["radius"] == r1["radius"]
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
