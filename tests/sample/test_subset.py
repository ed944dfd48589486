"""The Hessian subset has one front end: unlearning and the influence scores draw it alike."""

from __future__ import annotations

import pytest
import torch
from engine_fixtures import data_for, tiny_mlp

import lightning_influence as li
from lightning_influence.attribution import scores
from lightning_influence.data.pool import Rows
from lightning_influence.sample.subset import capture_candidates, draw_subset, hessian_subset
from lightning_influence.unlearn.settings import HessianArguments

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def problem():
    model = tiny_mlp().eval()
    x, y = data_for(model, 60, seed=2)
    return model, x, y


@pytest.mark.parametrize("sampler", ["logit", "feature", "random"])
def test_scores_draw_the_rows_and_weights_unlearning_draws(problem, sampler):
    model, x, y = problem
    hessian = HessianArguments(sampler=sampler, budget=12, pool_size=60)
    pool, source = capture_candidates(model, Rows(x, y, torch.arange(60)), hessian, 16, CPU)
    picked = draw_subset(pool, hessian, seed=3)  # unlearning's capture and sample stages
    args = li.ScoreArguments(sampler=sampler, budget=12, pool_size=60, seed=3, batch_size=16)
    batches = scores.hessian_subset(model, (x, y), args)  # the scores' reader, same front end
    assert source == "pass" and len(picked) == 12
    assert torch.equal(torch.cat([b.ids for b in batches]), picked.ids)
    assert torch.equal(torch.cat([b.weights for b in batches]), picked.weights)


def test_self_influence_takes_the_feature_sampler(problem):
    """The scores' help offered sampler='feature' but their own capture held no features."""
    model, x, y = problem
    args = li.ScoreArguments(sampler="feature", budget=12, seed=1)
    subset = scores.hessian_subset(model, (x, y), args)
    got = li.self_influence(model, (x, y), sampler="feature", budget=12, seed=1)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, li.self_influence(model, (x, y), hessian_data=subset, seed=1))


def test_a_pool_within_the_budget_enters_whole_and_unweighted(problem):
    model, x, y = problem
    rows = Rows(x[:10], y[:10], torch.arange(10))
    hessian = HessianArguments(sampler="logit", budget=12, pool_size=60)
    batches = hessian_subset(model, rows, hessian, seed=0, batch_size=4, device=CPU)
    assert torch.equal(torch.cat([b.ids for b in batches]), torch.arange(10))
    assert all(b.weights is None for b in batches)


def test_the_scores_subset_settings_are_checked_by_name():
    with pytest.raises(ValueError, match="Unknown sampler 'Logit'"):
        li.ScoreArguments(sampler="Logit")
    wide = li.ScoreArguments(budget=9000)  # above the pool: the whole pool, as before
    assert wide.hessian.budget == wide.pool_size
