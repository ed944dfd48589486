"""Sharded unlearning under DDP equals one process: 2 gloo processes vs a single run.

Each pass (capture, gradients, every HVP, validation scoring) is split over the two ranks
and summed (``lightning_influence.data.distributed``); the weights must match the single-process
run to 1e-5 and the reports must take the same decisions.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_influence.callbacks.unlearn import UnlearnCallback
from lightning_influence.data.batches import IndexedDataset
from lightning_influence.data.distributed import Shards
from lightning_influence.demos.datasets import digits_splits
from lightning_influence.demos.models import ImageClassifier

# timings and memory differ between runs; every other report field must be equal
_TIMED = {"seconds", "stage_seconds", "peak_memory_bytes", "memory_kind"}


def _trained(path: Path) -> None:
    torch.manual_seed(0)
    train, _, _ = digits_splits(0)
    model = ImageClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    loader = DataLoader(train, batch_size=64, shuffle=True)
    for _ in range(4):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    torch.save(model.state_dict(), path)


def _single(weights: Path, settings: dict) -> tuple[dict, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each DDP process: kernels sum in another order on 2 threads
    try:
        return _unlearned(weights, settings)
    finally:
        torch.set_num_threads(threads)


def _unlearned(weights: Path, settings: dict) -> tuple[dict, dict]:
    train, val, _ = digits_splits(0)
    model = ImageClassifier()
    model.load_state_dict(torch.load(weights, weights_only=True))
    cb = UnlearnCallback(progress_bar=False, **settings)
    report = cb.unlearn_model(
        model,
        DataLoader(IndexedDataset(train), batch_size=64, shuffle=True),
        DataLoader(val, batch_size=256),
    )
    return model.state_dict(), report.as_dict()


def _close(a, b, path=""):
    """Report values equal, floats to 1e-5 relative (sums in another order)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if k not in _TIMED:
                _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6, nan_ok=True), path
    else:
        assert a == b, path


@pytest.mark.parametrize(
    "settings",
    [
        {"forget_classes": [3]},
        {"forget_classes": [1, 7], "solve": {"curvature": "gauss_newton"}, "step": {"steps": 6}},
    ],
    ids=["class", "two_classes_gauss_newton"],
)
def test_two_ddp_processes_equal_one(tmp_path, settings):
    weights = tmp_path / "trained.pt"
    _trained(weights)
    state, report = _single(weights, settings)
    script = Path(__file__).parent / "_ddp_equal_script.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(weights), repr(settings)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for k, v in state.items():
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]), k
        assert torch.allclose(ranks[0]["state"][k], v, rtol=0, atol=1e-5), k
    assert report["applied"]
    _close(ranks[0]["report"], report)
    _close(ranks[1]["report"], report)


def test_blocks_cover_every_row_once():
    for n in (0, 1, 5, 128, 129):
        for world in (1, 2, 3):
            parts = [Shards(r, world, lambda t: t, lambda t: t).block(n) for r in range(world)]
            rows = [i for p in parts for i in range(n)[p]]
            assert rows == list(range(n)), (n, world)


def test_one_process_shards_change_nothing():
    one = Shards()
    t = torch.arange(6.0).reshape(3, 2)
    assert not one.split and one.gather(t, 3) is t and torch.equal(one.reduce(t), t)
    with pytest.raises(ValueError, match="all_gather and all_reduce"):
        Shards(0, 2)
