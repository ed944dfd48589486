"""benchmarks/memorised.py runs end to end (2 epochs instead of 40) and summarises."""

from __future__ import annotations

import pytest
import torch

from benchmarks import memorised as M


def test_the_task_flips_three_percent_of_the_labels_to_other_classes():
    task = M.make_task(0)
    x, noisy = task.train.tensors
    flipped = torch.nonzero(noisy != task.true_labels).reshape(-1)
    assert sorted(flipped.tolist()) == sorted(task.forget_ids.tolist())
    assert len(flipped) == round(M.FRACTION * len(noisy))


def test_a_seed_runs_and_is_summarised(monkeypatch):
    monkeypatch.setattr(M, "EPOCHS", 2)
    rows = M.run_seed(0, ("nothing", "default", "fine-tune"))
    assert {r["method"] for r in rows} == {"retrain", "retrain'", "nothing", "default", "fine-tune"}
    assert all(0.0 <= r["avg_gap_pp"] <= 100.0 for r in rows)
    s = M.summarise(rows)
    assert s["seeds"] == 1 and s["best_baseline"] == "fine-tune"
    assert s["default_minus_best_baseline_pp"] == pytest.approx(
        s["default_avg_gap_pp"] - s["best_baseline_avg_gap_pp"]
    )
    assert s["avg_gap_pp"]["retrain"]["mean"] == 0.0
