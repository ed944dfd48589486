"""The Gauss–Newton operator against dense float64 references.

- its mat-vec equals the explicit Σ Jᵀ (∇²_z ℓ) J built with jacrev (weighted batches too);
- it is positive semi-definite where the Hessian of the same trained net is indefinite;
- for a model linear in its parameters it equals the Hessian;
- ``li.influence(curvature="gauss_newton")`` with Krylov matches the dense solve.
"""

from __future__ import annotations

import pytest
import torch
from engine_fixtures import data_for, tiny_cnn, tiny_mlp
from torch import nn

import lightning_influence as li
from lightning_influence.data.batches import Batch
from lightning_influence.solve import vectors as V
from lightning_influence.solve.curvature import (
    GaussNewtonOperator,
    dense_gauss_newton,
    dense_hessian,
    trainable_params,
)


def _f64(model: nn.Module) -> nn.Module:
    return model.double().eval()


def _batches(model, n=24, seed=0, weighted=False):
    x, y = data_for(model, n, seed)
    w = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    half = n // 2
    return [
        Batch(x[:half].double(), y[:half], weights=w[:half] if weighted else None),
        Batch(x[half:].double(), y[half:], weights=w[half:] if weighted else None),
    ]


@pytest.mark.parametrize("make", [tiny_mlp, tiny_cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("weighted", [False, True])
def test_matvec_equals_the_dense_gauss_newton_matrix(make, weighted):
    model = _f64(make())
    batches = _batches(model, weighted=weighted)
    params = trainable_params(model)
    dense = dense_gauss_newton(model, None, batches, params)
    op = GaussNewtonOperator(model, None, batches)
    v = {k: torch.randn_like(p) for k, p in params.items()}
    got = V.flatten(op @ v)
    want = dense @ V.flatten(v)
    assert torch.allclose(got, want, atol=1e-10, rtol=1e-8), float((got - want).abs().max())


def test_psd_where_the_hessian_is_indefinite():
    model = _f64(tiny_mlp())
    batches = _batches(model, n=40)
    params = trainable_params(model)
    h = dense_hessian(model, None, batches, params)
    g = dense_gauss_newton(model, None, batches, params)
    assert float(torch.linalg.eigvalsh(h).min()) < -1e-6  # indefinite at these weights
    assert float(torch.linalg.eigvalsh(g).min()) > -1e-10  # PSD


def test_equals_the_hessian_for_a_linear_model():
    model = _f64(nn.Linear(5, 3))
    x = torch.randn(30, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(2))
    batches = [Batch(x, y)]
    params = trainable_params(model)
    g = dense_gauss_newton(model, None, batches, params)
    h = dense_hessian(model, None, batches, params)
    assert torch.allclose(g, h, atol=1e-12)


def test_influence_with_gauss_newton_krylov_matches_dense():
    model = _f64(tiny_cnn())
    x, y = data_for(model, 30, seed=3)
    x = x.double()
    kwargs = dict(estimator="gif", forget_weight=0.5, damping=1e-3, curvature="gauss_newton")
    dense, _ = li.influence(
        model, None, (x[:20], y[:20]), (x[20:], y[20:]), solver="dense", **kwargs
    )
    krylov, rep = li.influence(
        model, None, (x[:20], y[:20]), (x[20:], y[20:]), tol=1e-10, max_iter=2000, **kwargs
    )
    err = float(V.norm(V.add(krylov, dense, -1.0)) / V.norm(dense))
    assert err < 1e-5, (err, rep)


def test_unknown_curvature_is_refused():
    model = tiny_mlp()
    x, y = data_for(model, 10, seed=0)
    with pytest.raises(ValueError, match="curvature"):
        li.influence(model, None, (x, y), (x, y), curvature="fisher")
    with pytest.raises(ValueError, match="solve.curvature"):
        li.UnlearnCallback(forget_classes=[0], solve={"curvature": "fisher"})
