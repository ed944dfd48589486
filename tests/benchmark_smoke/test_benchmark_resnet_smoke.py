"""benchmarks/resnet.py's summary on hand-made rows (the benchmark itself needs the
Fashion-MNIST files and minutes of CPU; it is run by hand, see docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from benchmarks import resnet as R


def _row(task, seconds, variant=None, **extra):
    return {"task": task, "variant": variant, "seed": 0, "seconds": seconds,
            "cpu_seconds": seconds, **extra}  # fmt: skip


def test_summary_divides_by_the_epoch_measured_like_the_tasks():
    rows = [
        _row("epoch", 10.0),
        _row("class", 5.0, applied=True, complete=True, forget_score=0.0, peak_extra_bytes=2**30),
        _row("samples", 30.0, applied=False, complete=False, peak_extra_bytes=2**29),
        {"task": "backdoor", "variant": None, "seed": 0, "timed_out": True, "seconds": 900.0},
        _row("self_all", 40.0, peak_extra_bytes=3 * 2**30),
        _row("samples", 12.0, variant="max_iter 10", applied=False),
    ]
    s = R.summarise(rows, ["test"])["summary"]
    assert s["epoch_seconds"] == 10.0
    assert s["task_seconds_over_epoch"]["class"] == pytest.approx(0.5)
    # a task stopped at the limit counts with its time so far: a lower bound
    assert s["max_task_seconds_over_epoch"] == pytest.approx(90.0)
    assert s["timed_out"] == ["backdoor"]
    assert s["max_extra_memory_gb"] == pytest.approx(3.0)
    assert s["self_influence_all_layers_seconds_over_epoch"] == pytest.approx(4.0)
    assert [(lv["variant"], lv["seconds_over_epoch"]) for lv in s["levers"]] == [
        ("max_iter 10", 1.2)
    ]


def test_every_lever_is_valid_settings():
    import lightning_influence as li

    for variant in R.VARIANTS.values():
        args = dict(variant)
        spec = args.pop("spec", {})
        cb = li.UnlearnCallback(forget_ids=[0, 1], progress_bar=False, **args)
        for key in spec:  # attributes of the sample-removal task the lever sets
            assert hasattr(cb.spec, key), key
