"""Smoke test of the sampler benchmark's core on a micro config (1 budget, 2 seeds).

Uses a briefly trained SmallCNN (not the cached benchmark model) so it runs from a fresh
clone in a few seconds; checks the rows, the aggregated cells and the summary keys.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import samplers as bench  # noqa: E402
from lightning_influence.demos.datasets import digits_splits  # noqa: E402
from lightning_influence.demos.models import train_classifier  # noqa: E402


def test_sampler_benchmark_core_micro(tmp_path):
    torch.set_num_threads(1)
    splits = digits_splits(seed=0)
    model = train_classifier(splits[0], splits[1], epochs=2, seed=0)
    rows = bench.measure_task(
        "digits",
        3,
        model,
        splits,
        None,
        budgets=[32],
        seeds=[0, 1],
        log=lambda *_: None,
        reference_rows=128,  # the benchmark solves on all 1,050 retained rows: 80 s
    )
    assert len(rows) == 3 * 1 * 2
    assert {r["sampler"] for r in rows} == set(bench.SAMPLERS)
    for r in rows:
        assert -1.0 <= r["cosine_to_reference"] <= 1.0 + 1e-9
        assert 0.0 <= r["test_f1"] <= 1.0
        assert r["hessian_bytes"] > 0 and r["seconds_total"] > 0
        assert r["unique_picks"] == 32
        r.pop("_task_info")
    cells, summary = bench.aggregate(rows)
    assert len(cells) == 3
    for key in (
        "std_ratio_logit",
        "std_ratio_feature",
        "f1_gain_at_equal_budget",
        "time_ratio_at_equal_f1",
        "memory_ratio_at_equal_f1",
    ):
        assert key in summary
        v = summary[key]
        assert v is None or (isinstance(v, float) and math.isfinite(v))
    json.dumps({"summary": summary, "cells": cells, "rows": rows})  # JSON-safe
    bench.plot(cells, tmp_path / "samplers.png")
    assert (tmp_path / "samplers.png").stat().st_size > 0
    assert "cosine to ref" in bench.table(cells)
