"""The GPU suite's code path (benchmarks.gpu) on the CPU, with a tiny ResNet on digits.

No GPU is needed: the same functions the suite runs on CUDA (training with early stopping,
retraining, the callback default on the device, the report's stage times and peak memory,
the JSON summary) run here on 32x32x3 digits and a 4-channel ResNet with one block a stage.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import common  # noqa: E402
from benchmarks import gpu as bench  # noqa: E402
from lightning_influence.demos.datasets import digits_splits  # noqa: E402


def _digits32(seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Digits resized to 32x32 and repeated to 3 channels (the suite's input shape)."""

    def to32(ds: TensorDataset, n: int) -> TensorDataset:
        x, y = ds.tensors
        x = F.interpolate(x[:n], size=32, mode="nearest").repeat(1, 3, 1, 1)
        return TensorDataset(x, y[:n])

    train, val, test = digits_splits(seed)
    return to32(train, 1200), to32(val, 270), to32(test, 360)


def test_architectures_match_the_papers():
    assert sum(p.numel() for p in bench.ARCHS["resnet18"]().parameters()) == 11_173_962
    vgg = bench.ARCHS["vgg11"]()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg.modules()) == 8
    assert bench.ARCHS["vgg11"]()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_gpu_suite_code_path_on_cpu(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setitem(bench.RECIPE, "max_epochs", 6)
    monkeypatch.setitem(bench.RECIPE, "lr", 5e-3)
    out = bench.run(
        ["tiny_resnet"],
        [3],
        [0],
        data_fn=_digits32,
        dataset="digits32",
        device=torch.device("cpu"),
        cache=None,
        result="gpu_smoke.json",
    )
    written = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert written["summary"] == json.loads(json.dumps(out["summary"]))
    rows = {r["method"]: r for r in written["rows"]}
    assert set(rows) == {"retrain", "gif (default)"}
    assert rows["retrain"]["test_forget_acc"] == 0.0  # the class was never seen
    gif = rows["gif (default)"]
    assert gif["applied"] and gif["memory_kind"] and gif["peak_memory_bytes"] > 0
    assert {"capture", "solve", "search"} <= set(gif["stage_seconds"])
    s = written["summary"]["tiny_resnet"]
    assert s["runs"] == 1
    assert math.isclose(
        s["f1_gap_to_retrain"]["mean"], rows["retrain"]["test_f1"] - gif["test_f1"], abs_tol=1e-12
    )
    assert 0 < s["unlearn_over_retrain_seconds"]["mean"] < math.inf
