"""benchmarks/calibration.py measures a digits seed end to end (2 epochs instead of 40)."""

from __future__ import annotations

from benchmarks import calibration as C
from benchmarks import memorised as M


def test_a_digits_seed_is_measured_and_summarised(monkeypatch):
    monkeypatch.setattr(M, "EPOCHS", 2)
    rows = C.digits_rows([0])
    (row,) = rows
    assert row["setup"] == "digits memorised" and row["forgotten"] == len(M.make_task(0).forget_ids)
    for key in ("base_acc", "retrain_acc", "raw", "calibrated", "unseen"):
        assert 0.0 <= row[key] <= 1.0, key
    # memorised rows count 0 in the unseen estimate, so it is at most the calibrated mean
    assert row["unseen"] <= row["calibrated"] + 1e-12
    cell = C.summarise(rows)["digits memorised"]
    assert cell["seeds"] == 1
    assert abs(cell["raw_minus_retrain_acc"]["mean"] - (row["raw"] - row["retrain_acc"])) < 1e-12
