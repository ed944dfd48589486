"""Bad input to the engine: a clear error naming the fix, and the weights untouched."""

from __future__ import annotations

import pytest
import torch
from engine_fixtures import data_for, tiny_mlp
from torch import nn

import lightning_influence as li


@pytest.fixture
def setup():
    model = tiny_mlp()
    x, y = data_for(model, 20, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    yield model, (x[:10], y[:10]), (x[10:], y[10:])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "weights modified"


def test_empty_selection(setup):
    model, h, f = setup
    masks = {k: torch.zeros_like(p, dtype=torch.bool) for k, p in model.named_parameters()}
    with pytest.raises(ValueError, match="selection is empty"):
        li.influence(model, None, h, f, selection=masks)


def test_unknown_parameter_name(setup):
    model, h, f = setup
    with pytest.raises(ValueError, match="does not train.*li.select_parameters"):
        li.influence(model, None, h, f, selection={"fc9.weight": torch.ones(3, dtype=torch.bool)})


def test_wrong_mask_shape(setup):
    model, h, f = setup
    with pytest.raises(ValueError, match="shape"):
        li.influence(model, None, h, f, selection={"0.weight": torch.ones(2, 2, dtype=torch.bool)})


def test_no_selectable_layer(setup):
    model, _, f = setup
    with pytest.raises(ValueError, match="no selectable layer"):
        li.select_parameters(nn.Sequential(nn.Flatten(), nn.ReLU()), f)


def test_nan_loss(setup):
    model, h, f = setup
    bad = (f[0].clone(), f[1])
    bad[0][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="forget_data"):
        li.influence(model, None, h, bad)
    with pytest.raises(FloatingPointError, match="hessian_data"):
        li.influence(model, None, bad, f)


def test_empty_data(setup):
    model, h, f = setup
    with pytest.raises(ValueError, match="forget_data is empty"):
        li.influence(model, None, h, (f[0][:0], f[1][:0]))
    with pytest.raises(ValueError, match="hessian_data is empty"):
        li.influence(model, None, [], f)
    with pytest.raises(ValueError, match="hessian_data is None"):
        li.influence(model, None, None, f)


def test_dense_refuses_large_models(setup):
    model, h, f = setup
    with pytest.raises(ValueError, match="solver='krylov'"):
        li.influence(model, None, h, f, solver="dense", max_params=10)


def test_unknown_names(setup):
    model, h, f = setup
    with pytest.raises(ValueError, match="estimator"):
        li.influence(model, None, h, f, estimator="newton")
    with pytest.raises(ValueError, match="solver"):
        li.influence(model, None, h, f, solver="qr")
    with pytest.raises(ValueError, match="selection method"):
        li.select_parameters(model, f, method="largest")
    with pytest.raises(ValueError, match="ratio"):
        li.select_parameters(model, f, ratio=0.0)


def test_negative_weights(setup):
    model, h, f = setup
    with pytest.raises(ValueError, match="non-negative"):
        li.influence(model, None, li.Batch(h[0], h[1], weights=-torch.ones(10)), f)
    with pytest.raises(ValueError, match="non-negative"):
        li.influence(model, None, {"x": h[0], "y": h[1], "sample_weight": -torch.ones(10)}, f)


def test_float_third_element_is_not_read_as_weights(setup):
    model, h, f = setup
    with pytest.raises(ValueError, match=r"sample ids.*Batch\(x, y, weights=w\)"):
        li.influence(model, None, (h[0], h[1], torch.ones(10, dtype=torch.float64)), f)
    with pytest.raises(ValueError, match=r"forget_data\[1\].*Batch\(x, y, weights=w\)"):
        li.influence(model, None, h, [f, (f[0], f[1], torch.rand(10))])


def test_mismatched_sample_counts(setup):
    model, h, f = setup
    with pytest.raises(ValueError, match="hessian_data.*same number of samples"):
        li.influence(model, None, (h[0], h[1][:5]), f)
    with pytest.raises(ValueError, match="weights have 3 entries"):
        li.influence(model, None, li.Batch(h[0], h[1], weights=torch.ones(3)), f)
