"""The Fashion-MNIST sampler study's summary (equal-F1 budgets, measured-memory ratio) and
its memory measurement, on synthetic rows and a tiny solve (no Fashion-MNIST needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import samplers_fashion as bench  # noqa: E402
from benchmarks.unlearning import PeakRSS  # noqa: E402


def _row(sampler, budget, seed, f1, cos, seconds, peak):
    return {
        "forget_class": 6,
        "sampler": sampler,
        "budget": budget,
        "seed": seed,
        "test_f1": f1,
        "cosine_to_reference": cos,
        "seconds_total": seconds,
        "solve_peak_bytes": peak,
        "solve_seconds": 0.1,
    }


def test_summary_compares_the_smallest_budget_reaching_the_target():
    rows = []
    for seed, noise in enumerate((-0.01, 0.01)):
        # random reaches the target (best 0.97 - 0.002) only at budget 128, logit at 32
        rows += [
            _row("random", 32, seed, 0.95, 0.5 + 4 * noise, 10.0, 100),
            _row("random", 128, seed, 0.969, 0.8 + 2 * noise, 20.0, 400),
            _row("logit", 32, seed, 0.97, 0.6 + noise, 12.0, 110),
            _row("logit", 128, seed, 0.97, 0.9 + noise, 22.0, 420),
            _row("feature", 32, seed, 0.96, 0.55, 11.0, 100),
            _row("feature", 128, seed, 0.96, 0.85, 21.0, 400),
        ]
    cells, s = bench.summarise(rows)
    assert len(cells) == 6
    (entry,) = s["equal_f1"]
    assert entry["budget_reaching_target"] == {"random": 128, "feature": None, "logit": 32}
    assert s["time_ratio_at_equal_f1"] == pytest.approx(12.0 / 20.0)
    assert s["memory_ratio_at_equal_f1_measured"] == pytest.approx(110 / 400)
    assert s["f1_gain_at_equal_budget"] == pytest.approx(((0.97 - 0.95) + (0.97 - 0.969)) / 2)
    assert s["std_ratio_logit"] == pytest.approx(0.5 * (1 / 4 + 1 / 2))
    assert s["std_ratio_feature"] == 0.0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_measured_peak_grows_with_what_the_block_allocates():
    bench._trim()
    with PeakRSS() as small:
        a = torch.ones(2**20)  # 4 MiB
        del a
    bench._trim()
    with PeakRSS() as big:
        b = torch.ones(2**23)  # 32 MiB
        del b
    assert small.extra_bytes is not None and big.extra_bytes is not None
    assert big.extra_bytes > 24 * 2**20
    assert big.extra_bytes > 4 * small.extra_bytes
