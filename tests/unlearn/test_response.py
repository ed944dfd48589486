"""Response descent: Adam on the proximal response objective, the best validation point kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_influence.data.batches import Batch
from lightning_influence.unlearn.response import ResponseData, response_anchors, response_descent
from lightning_influence.unlearn.settings import ResponseArguments
from lightning_influence.unlearn.step import Score


def _problem(seed: int = 0):
    """Two Gaussian blobs; the 'added' rows relabel blob 0's far half to class 1."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(64, 2, generator=gen) - 2, torch.randn(64, 2, generator=gen) + 2])
    y = torch.cat([torch.zeros(64), torch.ones(64)]).long()
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
        model.bias.zero_()
    add_x = torch.randn(16, 2, generator=gen) * 0.3 + torch.tensor([-3.0, 1.0])
    data = ResponseData(
        retained=[Batch(x, y)],
        add=[Batch(add_x, torch.ones(16, dtype=torch.long))],
        remove=[Batch(add_x, torch.zeros(16, dtype=torch.long))],
        remove_weight=1.0,
    )
    return model, data, add_x, x, y


def _score(add_x, x, y):
    def score(model):
        with torch.no_grad():
            forget = float((model(add_x).argmax(-1) == 0).float().mean())
            retain = float((model(x).argmax(-1) == y).float().mean())
        return forget, retain

    return score


@pytest.mark.parametrize("seed", range(5))
def test_descent_fits_the_correction_and_keeps_the_best_point(seed):
    model, data, add_x, x, y = _problem(seed)
    score = _score(add_x, x, y)
    anchors = response_anchors(model, data.retained)
    res = response_descent(
        model, data, anchors, score, nn.functional.cross_entropy,
        steps=200, lr=0.05, every=10, max_retain_drop=0.05,
    )  # fmt: skip
    assert res.applied and res.before.forget_acc == 1.0
    forget, retain = score(model)
    assert (forget, retain) == (res.best.forget_acc, res.best.retain_acc)  # the kept point
    assert res.best.f1 == max(t.f1 for t in res.trials if t.retain_acc >= 0.95)
    assert forget <= 0.2 and retain >= 0.95
    # the reason and the trial name the optimiser steps taken; the round index stays 0
    assert res.best.radius_steps % 10 == 0 and res.best.radius_steps > 0
    assert f"kept step {res.best.radius_steps} of 200" in res.reason and res.best.round == 0
    assert res.outcome == "response_kept"


def test_nothing_kept_restores_the_weights_bit_for_bit():
    model, data, add_x, x, y = _problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def hopeless(m):  # every point loses retained accuracy
        return 1.0, 1.0 if torch.equal(m.weight, before["weight"]) else 0.0

    res = response_descent(
        model, data, response_anchors(model, data.retained), hopeless,
        nn.functional.cross_entropy, steps=20, lr=0.05, every=5, max_retain_drop=0.01,
        patience=1,
    )  # fmt: skip
    assert not res.applied and "stopped after 5 steps, where retained accuracy fell" in res.reason
    assert res.outcome == "no_improvement"  # the floor ended it before any point improved
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_masks_keep_unselected_entries_fixed_and_errors_restore():
    model, data, add_x, x, y = _problem()
    masks = {"bias": torch.tensor([True, False])}
    res = response_descent(
        model, data, response_anchors(model, data.retained), _score(add_x, x, y),
        nn.functional.cross_entropy, steps=50, lr=0.05, every=10, max_retain_drop=0.5,
        masks=masks,
    )  # fmt: skip
    assert res.applied and model.bias[1] == 0.0 and model.bias[0] != 0.0
    assert torch.equal(model.weight, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def failing(m):
        if not torch.equal(m.bias, before["bias"]):
            raise RuntimeError("boom")
        return 1.0, 1.0

    with pytest.raises(RuntimeError, match="boom"):
        response_descent(
            model, data, response_anchors(model, data.retained), failing,
            nn.functional.cross_entropy, steps=10, lr=0.05, every=1, max_retain_drop=0.5,
        )  # fmt: skip
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": -1}, "response.steps"),
        ({"steps": 1.5}, "response.steps"),
        ({"every": 0}, "response.every"),
        ({"lr": 0.0}, "response.lr"),
        ({"lr": "0.1"}, "response.lr"),
        ({"remove_weight": -1.0}, "response.remove_weight"),
        ({"selected_only": "false"}, "response.selected_only"),
    ],
)
def test_response_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResponseArguments(**kwargs)


def test_a_dip_below_the_floor_is_never_kept_but_the_descent_goes_on():
    """Retained accuracy below the floor for the first 3 scored points, then above it with
    forgetting done: by default the descent goes on and keeps a later point; with patience
    2 it stops in the dip and keeps nothing."""
    model, data, add_x, x, y = _problem()
    calls = []

    def dip(m):
        calls.append(1)
        n = len(calls) - 1  # 0: the start
        if n == 0:
            return 1.0, 1.0
        return (1.0, 0.5) if n <= 3 else (0.0, 1.0)

    args = (data, response_anchors(model, data.retained), dip, nn.functional.cross_entropy)
    res = response_descent(model, *args, steps=30, lr=0.05, every=5, max_retain_drop=0.01)
    assert res.applied and res.best.radius_steps == 20 and res.best.retain_acc == 1.0
    assert all(t.retain_acc == 0.5 for t in res.trials[:3])  # scored, never kept
    calls.clear()
    model2, data2, *_ = _problem()
    args = (data2, response_anchors(model2, data2.retained), dip, nn.functional.cross_entropy)
    stopped = response_descent(model2, *args, steps=30, lr=0.05, every=5, max_retain_drop=0.01,
                               patience=2)  # fmt: skip
    assert not stopped.applied and "2 scored point(s) in a row" in stopped.reason


def test_a_point_that_breaks_the_scorers_own_floor_is_never_kept():
    """The later points forget completely and raise retained accuracy but break the
    scorer's own floor (a :class:`Score` with guard_broken): the descent keeps the best
    unbroken point, records the broken one with its true retained accuracy and ends there
    (the removal term would only push further past the scorer's floor)."""
    model, data, *_ = _problem()
    calls = []

    def guarded(m):
        calls.append(1)
        n = len(calls) - 1  # 0: the start
        if n == 0:
            return Score(1.0, 0.9)
        return Score(0.5, 0.9) if n <= 2 else Score(0.0, 0.95, guard_broken=True)

    args = (data, response_anchors(model, data.retained), guarded, nn.functional.cross_entropy)
    res = response_descent(model, *args, steps=30, lr=0.05, every=5, max_retain_drop=0.01)
    assert res.applied and res.best.radius_steps == 5 and not res.best.guard_broken
    assert len(res.trials) == 3, "the descent ends at the first broken point"
    assert res.trials[2].guard_broken and res.trials[2].retain_acc == 0.95


def test_an_overshoot_before_any_kept_point_restarts_smaller_and_keeps_a_point():
    """The scorer's floor breaks wherever the weights moved farther than 0.05 from the
    start; below that a longer move forgets more. At lr 0.05 the first scored point (5
    steps) is already past it: without backtracking nothing is kept and the weights come
    back bit for bit; with backtracking the descent starts again from the start at lr/4,
    then lr/16, and keeps a point inside the floor. A break after a kept point still ends
    the descent (no restart)."""
    model, data, *_ = _problem()
    start = [p.detach().clone() for p in model.parameters()]

    def moved(m):
        return (
            sum(float((p - s).pow(2).sum()) for p, s in zip(m.parameters(), start, strict=True))
            ** 0.5
        )

    def floor(m):
        d = moved(m)
        return Score(max(0.0, 1.0 - 10 * d), 1.0, guard_broken=d > 0.05)

    args = (data, response_anchors(model, data.retained), floor, nn.functional.cross_entropy)
    kw = {"steps": 40, "lr": 0.05, "every": 5, "max_retain_drop": 0.01}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = response_descent(model, *args, **kw)
    assert not plain.applied and len(plain.trials) == 1 and plain.trials[0].guard_broken
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    res = response_descent(model, *args, **kw, backtracks=2)
    assert res.applied and not res.best.guard_broken and moved(model) <= 0.05
    assert res.trials[0].guard_broken, "the first start overshot"
    assert "started again 2 time(s)" in res.reason and "learning rate 0.00313" in res.reason
    assert max(t.radius_steps for t in res.trials) <= 40, "the steps are counted across starts"
    assert res.trials[-1].guard_broken, "the break after the kept point ended the descent"
    model, data, *_ = _problem()
    args = (data, response_anchors(model, data.retained), floor, nn.functional.cross_entropy)
    more = response_descent(
        model, *args, **kw, backtracks=3
    )  # one left: no restart after a kept point
    assert [t.radius_steps for t in more.trials] == [t.radius_steps for t in res.trials]
    assert "started again 2 time(s)" in more.reason
    with pytest.raises(ValueError, match="response.backtracks"):
        ResponseArguments(backtracks=-1)


def test_stop_at_ends_the_descent_at_the_first_point_that_completes_forgetting():
    """Scores: forgetting completes at the 2nd scored point (retained 0.9), later points
    keep it complete at a higher retained accuracy. By default the best F1 (the last) is
    kept; with stop_at=0 the descent ends at the 2nd point and keeps it."""
    script = [(1.0, 1.0), (0.5, 0.9), (0.0, 0.9), (0.0, 0.95), (0.0, 0.97)]

    def scorer():
        calls = []

        def score(m):
            calls.append(1)
            return script[min(len(calls) - 1, len(script) - 1)]

        return score

    model, data, *_ = _problem()
    args = (data, response_anchors(model, data.retained), scorer(), nn.functional.cross_entropy)
    full = response_descent(model, *args, steps=20, lr=0.05, every=5, max_retain_drop=0.2)
    assert full.best.radius_steps == 20 and len(full.trials) == 4
    model, data, *_ = _problem()
    args = (data, response_anchors(model, data.retained), scorer(), nn.functional.cross_entropy)
    stopped = response_descent(model, *args, steps=20, lr=0.05, every=5, max_retain_drop=0.2,
                               stop_at=0.0)  # fmt: skip
    assert stopped.applied and stopped.best.radius_steps == 10 and len(stopped.trials) == 2
    assert "forgetting complete at step 10" in stopped.reason


def test_repaired_at_ends_the_descent_once_forgetting_is_complete_and_retained_is_back():
    """Scores: forgetting completes at the 2nd scored point with retained accuracy 0.9,
    below the reference 0.95 (the start's); at the 4th it is back at 0.95; later points
    climb on. repaired_at=0 ends the descent at the 4th point (nothing left to forget or
    repair), where stop_at=0 would end it at the 2nd and no stop runs all 8 points."""
    script = [(1.0, 0.95), (0.5, 0.9), (0.0, 0.9), (0.0, 0.93), (0.0, 0.95), (0.0, 0.97)]
    calls = []

    def score(m):
        calls.append(1)
        return script[min(len(calls) - 1, len(script) - 1)]

    model, data, *_ = _problem()
    args = (data, response_anchors(model, data.retained), score, nn.functional.cross_entropy)
    res = response_descent(model, *args, steps=40, lr=0.05, every=5, max_retain_drop=0.2,
                           repaired_at=0.0)  # fmt: skip
    assert res.applied and res.best.radius_steps == 20 and len(res.trials) == 4
    assert "retained accuracy back at its reference at step 20" in res.reason
    with pytest.raises(ValueError, match="response.stop_when_repaired"):
        ResponseArguments(stop_when_repaired="yes")
