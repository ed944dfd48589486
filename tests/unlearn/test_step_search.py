"""step_search on a scalar toy: the score is a known function of the radius, so every
branch (reach the target and bisect, collapse and bisect below the floor, polish when
forgetting is already complete) can be checked exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_influence.unlearn.step import Score, StepOutcome, radius_grid, step_search


def _toy(score_of_radius):
    """A one-parameter model and a score_fn reading the parameter's distance from 1."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    delta = {"weight": torch.ones(1, 1)}

    def score(m):
        return score_of_radius(float(m.weight) - 1.0)

    return model, delta, score


def test_reaches_the_target_then_bisects_to_a_smaller_radius():
    model, delta, score = _toy(lambda r: (max(0.0, 1.0 - r / 0.3), 0.9))
    res = step_search(model, delta, score, steps=8, min_radius=1e-3, max_radius=5.0, refine=4)
    assert res.applied and res.best.forget_acc == 0.0
    grid = radius_grid(8, 1e-3, 5.0)
    first = next(r for r in grid if r >= 0.3)
    assert 0.3 <= res.radius < first  # bisection found a smaller radius that still forgets
    assert res.outcome is StepOutcome.COMPLETE and res.outcome == "complete"


def test_collapse_bisects_for_the_largest_radius_inside_the_budget():
    # forgetting improves with the radius, retained accuracy collapses above 0.05
    model, delta, score = _toy(lambda r: (max(0.5, 1.0 - r), 0.9 if r <= 0.05 else 0.1))
    res = step_search(
        model, delta, score, steps=8, min_radius=1e-3, max_radius=5.0, refine=4, max_retain_drop=0.1
    )
    grid = radius_grid(8, 1e-3, 5.0)
    below = max(r for r in grid if r <= 0.05)
    assert res.applied and below < res.radius <= 0.05  # beyond the last grid point inside
    assert res.outcome is StepOutcome.FLOOR


def test_polish_when_forgetting_is_already_complete():
    # forget score 0 everywhere; retained accuracy peaks at radius ~0.1 and then falls
    model, delta, score = _toy(
        lambda r: (0.0, 0.8 + 0.1 * math.exp(-((math.log(r + 1e-9) - math.log(0.1)) ** 2)))
    )
    res = step_search(model, delta, score, steps=8, min_radius=1e-3, max_radius=5.0, refine=0)
    assert res.applied and "improves retained accuracy" in res.reason
    assert res.outcome is StepOutcome.ALREADY_COMPLETE
    assert 0.02 < res.radius < 0.5
    assert len(res.trials) < 8  # stopped after two trials without improvement


def _rise_then_fall(r: float) -> tuple[float, float]:
    """A correction: forgetting improves with the radius; retained accuracy rises from 0.80
    to 0.95 at radius 0.1, then falls back to 0.80 at radius 1 (collateral damage)."""
    forget = max(0.0, 1.0 - r)
    retain = 0.8 + 0.15 * min(r / 0.1, 1.0) - (0.15 * min((r - 0.1) / 0.9, 1.0) if r > 0.1 else 0)
    return forget, retain


def test_floor_is_measured_from_the_best_retained_accuracy_seen():
    # From the value before (0.80) a 0.1 budget allows every radius; from the peak seen
    # (0.95) it allows retained accuracy down to 0.85 only, i.e. radii up to ~0.7.
    model, delta, score = _toy(_rise_then_fall)
    kw = {"steps": 12, "min_radius": 1e-2, "max_radius": 1.0, "refine": 4}
    res = step_search(model, delta, score, max_retain_drop=0.1, **kw)
    peak = max(t.retain_acc for t in res.trials)
    assert peak > 0.9 and res.applied and res.best.retain_acc >= peak - 0.1, res.best
    # radius 1 forgets completely at retained 0.80 (within 0.1 of the value before) and has
    # the best F1 of all trials, but lies below the floor measured from the peak
    full = max(res.trials, key=lambda t: t.f1)
    assert full.radius == pytest.approx(1.0) and full.f1 > res.best.f1 and res.radius < 0.75


def test_a_scorers_own_floor_acts_as_the_retained_floor():
    """Past radius 0.05 the scorer flags its own floor broken (label change: the old labels'
    classes) while retained accuracy rises: the walk stops there as at the floor, the largest
    unbroken step is kept, the flagged trials keep their true retained accuracy, and they do
    not raise the floor of later trials."""

    def score(r):
        return Score(max(0.0, 1.0 - r), 0.9 + 0.05 * (r > 0.05), guard_broken=r > 0.05)

    model, delta, _ = _toy(lambda r: (0.0, 0.0))
    res = step_search(model, delta, lambda m: score(float(m.weight) - 1.0), steps=8,
                      min_radius=1e-3, max_radius=5.0, refine=4, max_retain_drop=0.02)  # fmt: skip
    broken = [t for t in res.trials if t.guard_broken]
    assert broken and all(t.retain_acc == pytest.approx(0.95) for t in broken)
    assert res.applied and not res.best.guard_broken and res.radius <= 0.05
    assert res.outcome is StepOutcome.FLOOR and "scorer's own floor" in res.reason
    assert float(model.weight) - 1.0 == pytest.approx(res.step_norm)


def test_floor_is_measured_from_an_earlier_rounds_reference():
    # starts at 0.90, peaks at 0.95 (radius 0.1), falls to 0.80 at radius 1
    def score(r):
        fall = 0.15 * min((r - 0.1) / 0.9, 1.0) if r > 0.1 else 0.0
        return max(0.0, 1.0 - r), 0.9 + 0.05 * min(r / 0.1, 1.0) - fall

    kw = {"steps": 12, "min_radius": 1e-2, "max_radius": 1.0, "refine": 4, "max_retain_drop": 0.1}
    alone = step_search(*_toy(score), **kw)
    # an earlier round reached 0.99: nothing below 0.89 is kept, so the step is smaller
    after_round = step_search(*_toy(score), retain_reference=0.99, **kw)
    assert alone.applied and after_round.applied
    assert after_round.best.retain_acc >= 0.89 - 1e-9 > alone.best.retain_acc
    assert after_round.radius < alone.radius


def test_f1_tolerance_keeps_the_smallest_step_within_it_of_the_best():
    # F1 improves slowly past radius 0.3 (retained accuracy flat): the last 0.01 of F1 takes
    # a step 3x larger; with a 0.02 tolerance the smaller step is kept.
    model, delta, score = _toy(lambda r: (max(0.0, 0.02 * (1.0 - r)) if r >= 0.3 else 1.0, 0.9))
    kw = {"steps": 8, "min_radius": 1e-2, "max_radius": 1.0, "refine": 0}
    exact = step_search(model, delta, score, **kw)
    model, delta, score = _toy(lambda r: (max(0.0, 0.02 * (1.0 - r)) if r >= 0.3 else 1.0, 0.9))
    tolerant = step_search(model, delta, score, f1_tolerance=0.02, **kw)
    assert exact.applied and tolerant.applied
    assert tolerant.radius < exact.radius and tolerant.best.f1 >= exact.best.f1 - 0.02
    assert tolerant.radius == min(t.radius for t in tolerant.trials if t.forget_acc < 1.0)


def test_f1_tolerance_keeps_nothing_when_no_step_beats_the_unchanged_model_by_more():
    model, delta, score = _toy(lambda r: (0.5 - min(r, 0.01), 0.9))
    before = model.weight.detach().clone()
    res = step_search(model, delta, score, steps=6, max_radius=1.0, f1_tolerance=0.05)
    assert not res.applied and "tolerance 0.05" in res.reason
    assert res.outcome is StepOutcome.NO_IMPROVEMENT
    assert torch.equal(model.weight, before)


def test_f1_tolerance_keeps_the_smallest_step_when_the_best_clears_the_unchanged_model():
    # F1 at retained 1: 0.500 unchanged, 0.515 from radius 0.1, 0.530 at radius 1. The best
    # beats the unchanged model by more than 0.02, so the smallest step within 0.02 of it
    # (radius 0.1, F1 0.515: itself not 0.02 above the unchanged model) is kept.
    def forget(r: float) -> float:
        f1 = 0.5 if r < 0.05 else 0.515 if r < 0.5 else 0.53
        return 1.0 - f1 / (2.0 - f1)  # (1 - forget) = F1 / (2 - F1) at retained 1

    model, delta, score = _toy(lambda r: (forget(r), 1.0))
    res = step_search(model, delta, score, steps=3, min_radius=0.1, max_radius=1.0, refine=0,
                      f1_tolerance=0.02)  # fmt: skip
    assert res.applied and res.radius == pytest.approx(0.1), res
    assert res.best.f1 == pytest.approx(0.515) and res.before.f1 == pytest.approx(0.5)


def test_the_reason_says_where_the_walk_stopped_not_that_the_run_failed():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    delta = {"weight": torch.ones(1, 1)}

    def score(m):
        moved = float(m.weight) - 1.0  # the step's size (relative to ||w|| = 1)
        return max(0.0, 1.0 - moved), 1.0 if moved < 0.5 else 0.0

    result = step_search(model, delta, score, steps=8, min_radius=1e-3, max_radius=5.0)
    assert result.applied and 0 < result.radius < 0.5
    assert "walk stopped at radius" in result.reason and "collapsed" not in result.reason


@pytest.mark.parametrize("keep", ["smallest", "largest"])
def test_keep_largest_walks_on_while_the_f1_holds(keep):
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)

    def score(m):
        moved = float(m.weight) - 1.0
        retain = 1.0 if moved < 3.0 else 0.0  # a floor to stop at
        return max(0.0, 1.0 - moved), retain

    result = step_search(
        model, {"weight": torch.ones(1, 1)}, score, steps=8, max_radius=5.0, keep=keep
    )
    assert result.applied
    edge = min(t.radius for t in result.trials if t.forget_acc <= 0.0)
    assert 1.0 <= edge < 1.2  # the bisected edge of forgetting
    if keep == "smallest":
        assert result.radius == edge
    else:  # on to EXTEND_LIMIT (2) x the edge: below the floor at 3, so kept
        assert result.radius == pytest.approx(2.0 * edge)
        assert float(model.weight) == pytest.approx(1.0 + 2.0 * edge)
    with pytest.raises(ValueError, match="keep must be"):
        step_search(model, {"weight": torch.ones(1, 1)}, score, keep="biggest")


def test_step_keep_setting_is_checked():
    from lightning_influence.unlearn.settings import StepArguments

    assert StepArguments(keep="largest").keep == "largest"
    with pytest.raises(ValueError, match="step.keep"):
        StepArguments(keep="biggest")


def test_the_outcome_names_a_walk_that_never_reached_the_target():
    model, delta, score = _toy(lambda r: (0.5, 0.9 + 0.01 * min(r, 1.0)))
    res = step_search(model, delta, score, steps=4, min_radius=1e-3, max_radius=1.0)
    assert res.outcome is StepOutcome.MAX_RADIUS and "stayed above" in res.reason


def test_the_function_defaults_are_the_callbacks_step_settings():
    """li.step_search called directly searches the grid UnlearnCallback's step.* settings
    describe (they differed: 12 radii up to 0.5 and 3 bisections against 8 up to 5.0 and 4)."""
    import inspect

    from lightning_influence.unlearn.settings import StepArguments

    params = inspect.signature(step_search).parameters
    defaults = StepArguments()
    for name in ("steps", "min_radius", "max_radius", "refine"):
        assert params[name].default == getattr(defaults, name), name
