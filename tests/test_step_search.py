"""step_search on a scalar toy: the score is a known function of the radius, so every
branch (reach the target and bisect, collapse and bisect below the floor, polish when
forgetting is already complete) can be checked exactly."""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_influence.step import radius_grid, step_search


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


def test_collapse_bisects_for_the_largest_radius_inside_the_budget():
    # forgetting improves with the radius, retained accuracy collapses above 0.05
    model, delta, score = _toy(lambda r: (max(0.5, 1.0 - r), 0.9 if r <= 0.05 else 0.1))
    res = step_search(
        model, delta, score, steps=8, min_radius=1e-3, max_radius=5.0, refine=4, max_retain_drop=0.1
    )
    grid = radius_grid(8, 1e-3, 5.0)
    below = max(r for r in grid if r <= 0.05)
    assert res.applied and below < res.radius <= 0.05  # beyond the last grid point inside


def test_polish_when_forgetting_is_already_complete():
    # forget score 0 everywhere; retained accuracy peaks at radius ~0.1 and then falls
    model, delta, score = _toy(
        lambda r: (0.0, 0.8 + 0.1 * math.exp(-((math.log(r + 1e-9) - math.log(0.1)) ** 2)))
    )
    res = step_search(model, delta, score, steps=8, min_radius=1e-3, max_radius=5.0, refine=0)
    assert res.applied and "improves retained accuracy" in res.reason
    assert 0.02 < res.radius < 0.5
    assert len(res.trials) < 8  # stopped after two trials without improvement
