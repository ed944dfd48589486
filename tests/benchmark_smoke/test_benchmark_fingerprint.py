"""benchmarks/fingerprint.py: the comparison a refactor is checked with (the full run trains
models and is run by hand, before and after a change)."""

from __future__ import annotations

import torch

from benchmarks import fingerprint as F


def test_digest_changes_with_any_value_and_not_with_dtype():
    a = [torch.arange(6.0).reshape(2, 3), torch.ones(2)]
    assert F.digest(a) == F.digest([t.double() for t in a])
    b = [a[0].clone(), a[1].clone()]
    b[0][1, 2] += 1e-6  # one float32 ulp of 5 is 4.8e-7
    assert F.digest(a) != F.digest(b)


def test_differences_name_every_changed_leaf():
    old = {"tasks": {"class": {"weights": "abc", "applied": True}}, "scores": {"x": "1"}}
    new = {"tasks": {"class": {"weights": "abd", "applied": True}}, "demo": {"f1": 0.9}}
    assert F.differences(old, old) == []
    assert F.differences(old, new) == [
        "/demo: None -> {'f1': 0.9}",
        "/scores: {'x': '1'} -> None",
        "/tasks/class/weights: 'abc' -> 'abd'",
    ]
