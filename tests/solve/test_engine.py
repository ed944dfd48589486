"""Operators, estimators and solvers against dense float64 references.

The references are closed forms built independently of the package (``torch.func.hessian``
and pseudo-inverses, see ``engine_fixtures``), on tiny float64 models with indefinite Hessians.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from engine_fixtures import (
    closed_form,
    data_for,
    dense_reference,
    mse_onehot,
    saddle_net,
    scalar_mse,
    tiny_cnn,
    tiny_mlp,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_influence as li
from lightning_influence.data.batches import Batch, IndexedDataset, as_batches
from lightning_influence.solve import vectors as V
from lightning_influence.solve.curvature import (
    DenseHessianOperator,
    HessianOperator,
    trainable_params,
)
from lightning_influence.solve.estimators import build_system
from lightning_influence.solve.operators import ParamOperator
from lightning_influence.solve.solvers import LEAST_SQUARES, SYMMETRIC
from lightning_influence.solve.vectors import as_masks

ESTIMATORS = ["gif", "fif", "pif", "if"]


def rel_err(a: dict, b: torch.Tensor) -> float:
    return ((V.flatten(a) - b).norm() / b.norm()).item()


def flat_selection(model, masks) -> torch.Tensor:
    return V.flatten(as_masks(masks, trainable_params(model)))


@pytest.fixture(scope="module", params=["mlp_ce", "mlp_mse", "cnn_bn"])
def problem(request):
    """(model, loss, hessian batches, forget batch, masks, H, g) — H is indefinite in all three."""
    model = tiny_cnn() if request.param == "cnn_bn" else tiny_mlp()
    loss = mse_onehot if request.param == "mlp_mse" else nn.functional.cross_entropy
    x, y = data_for(model, 40, seed=1)
    hess = [(x[:15], y[:15]), (x[15:30], y[15:30])]
    forget = (x[30:], y[30:])
    masks = li.select_parameters(model, forget, ratio=0.34, loss_fn=loss)
    H, g = dense_reference(model, loss, hess, [forget])
    assert torch.linalg.eigvalsh(H)[0] < -1e-3, "fixture must have an indefinite Hessian"
    return model, loss, hess, forget, masks, H, g


def test_operator_matches_dense_hessian(problem):
    model, loss, hess, _, _, H, _ = problem
    op = HessianOperator(model, loss, as_batches(hess))
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    hv = op.matvec(V.unflatten(v, op.params))
    assert rel_err(hv, H @ v) < 1e-12
    assert op.hvp_count == 1


def test_operators_materialise_to_the_dense_hessian(problem):
    model, loss, hess, _, _, H, _ = problem
    op = HessianOperator(model, loss, hess)
    assert isinstance(op, ParamOperator) and op.symmetric
    scale = H.abs().max()
    assert (op.to_matrix(op.params) - H).abs().max() < 1e-12 * scale
    assert op.hvp_count == op.num_params  # one HVP per column
    dense = DenseHessianOperator(model, loss, hess)
    assert (dense.matrix - H).abs().max() < 1e-12 * scale
    v = V.unflatten(torch.randn(H.shape[0], dtype=torch.float64), dense.params)
    assert rel_err(dense @ v, H @ V.flatten(v)) < 1e-12


def test_weighted_operator_matches_weighted_dense():
    model = tiny_mlp()
    x, y = data_for(model, 20, seed=3)
    w = torch.rand(20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    batches = [
        Batch(x[:8], y[:8], ids=torch.arange(8), weights=w[:8]),
        {"x": x[8:], "y": y[8:], "idx": torch.arange(8, 20), "weights": w[8:]},
    ]
    H, _ = dense_reference(
        model,
        nn.functional.cross_entropy,
        [(x[:8], y[:8]), (x[8:], y[8:])],
        [(x, y)],
        weights=[w[:8], w[8:]],
    )
    op = HessianOperator(model, None, as_batches(batches))
    v = torch.randn(H.shape[0], dtype=torch.float64)
    assert rel_err(op.matvec(V.unflatten(v, op.params)), H @ v) < 1e-12
    dense = DenseHessianOperator(model, None, batches)
    assert (dense.matrix - H).abs().max() < 1e-12 * H.abs().max()


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("solver", ["dense", "krylov"])
def test_estimators_match_closed_form(problem, estimator, solver):
    model, loss, hess, forget, masks, H, g = problem
    ref = closed_form(estimator, H, g, flat_selection(model, None if estimator == "if" else masks))
    opts = {"tol": 1e-12, "max_iter": 2000} if solver == "krylov" else {}
    delta, report = li.influence(
        model, loss, hess, forget, selection=masks, estimator=estimator, solver=solver, **opts
    )
    assert report.converged
    assert rel_err(delta, ref) < (1e-8 if solver == "dense" else 1e-6)
    outside = ~flat_selection(model, None if estimator == "if" else masks)
    assert V.flatten(delta)[outside].abs().max() == 0 if outside.any() else True


def test_gif_with_all_parameters_equals_if_when_h_invertible():
    model = tiny_mlp()
    x, y = data_for(model, 40, seed=1)
    H, _ = dense_reference(model, mse_onehot, [(x[:30], y[:30])], [(x[30:], y[30:])])
    assert torch.linalg.eigvalsh(H).abs().min() > 1e-4  # invertible (and indefinite)
    gif, _ = li.influence(
        model,
        mse_onehot,
        (x[:30], y[:30]),
        (x[30:], y[30:]),
        estimator="gif",
        tol=1e-12,
        max_iter=3000,
    )
    iff, _ = li.influence(
        model, mse_onehot, (x[:30], y[:30]), (x[30:], y[30:]), estimator="if", solver="dense"
    )
    assert rel_err(gif, V.flatten(iff)) < 1e-6


def test_modified_lissa_converges_where_classic_diverges():
    model, (x, y) = saddle_net()
    hess, forget = (x, y), (x[:4], y[:4])
    H, g = dense_reference(model, scalar_mse, [hess], [forget])
    ev = torch.linalg.eigvalsh(H)
    assert ev[0] < -1.0 and ev[-1] > 3.0
    ref = torch.linalg.solve(H, g)
    with pytest.warns(li.ConvergenceWarning):
        _, classic = li.influence(
            model,
            scalar_mse,
            hess,
            forget,
            estimator="if",
            solver="lissa",
            variant="classic",
            tol=1e-6,
            max_iter=1000,
        )
    # Divergence is detected (restarts with a larger scale) and the run ends unconverged:
    # no scale helps, since I − H/s² has an eigenvalue above 1 whenever H has one below 0.
    assert not classic.converged and classic.restarts >= 1 and classic.residual > 1e-2
    tol = 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error", li.ConvergenceWarning)
        delta, mod = li.influence(
            model, scalar_mse, hess, forget, estimator="if", solver="lissa", tol=tol, max_iter=20000
        )
    assert mod.converged and mod.residual <= tol
    # The normal-equation residual, recomputed densely, is what LiSSA reports...
    x_ = V.flatten(delta)
    assert ((H @ (H @ x_) - H @ g).norm() / (H @ g).norm()).item() <= tol * 1.01
    # ...and bounds the error by κ(H²)·tol.
    kappa = (ev.abs().max() / ev.abs().min()).item() ** 2
    assert rel_err(delta, ref) <= kappa * tol
    assert mod.hvps == 2 * mod.iterations + 1 + 20 * 2  # 2 per step, Aᵀb, power iteration


def test_lissa_gif_matches_dense_to_its_tolerance():
    model = tiny_mlp()
    x, y = data_for(model, 40, seed=0)
    hess, forget = (x[:30], y[:30]), (x[30:], y[30:])
    masks = li.select_parameters(model, forget, ratio=0.2, loss_fn=mse_onehot)
    H, g = dense_reference(model, mse_onehot, [hess], [forget])
    sel = flat_selection(model, masks)
    ref = closed_form("gif", H, g, sel)
    A = H[:, sel]
    sv = torch.linalg.svdvals(A)
    kappa = (sv[0] / sv[-1]).item() ** 2
    tol = 1e-6
    delta, report = li.influence(
        model, mse_onehot, hess, forget, selection=masks, solver="lissa", tol=tol, max_iter=20000
    )
    assert report.converged and report.restarts == 0
    assert rel_err(delta, ref) <= kappa * tol


def test_divergence_triggers_restart_with_larger_scale():
    model, (x, y) = saddle_net()
    _, report = li.influence(
        model,
        scalar_mse,
        (x, y),
        (x[:4], y[:4]),
        estimator="if",
        solver="lissa",
        scale=0.5,
        scale_step=0.5,
        tol=1e-3,
        max_iter=20000,
    )
    assert report.restarts >= 1 and report.converged and report.scale > 0.5


def test_max_iter_reached_is_reported_not_silent(problem):
    model, loss, hess, forget, masks, *_ = problem
    with pytest.warns(li.ConvergenceWarning, match="max_iter"):
        _, report = li.influence(
            model, loss, hess, forget, selection=masks, solver="krylov", tol=1e-14, max_iter=2
        )
    assert not report.converged and report.iterations == 2
    with pytest.warns(li.ConvergenceWarning, match="max_iter"):
        _, report = li.influence(
            model, loss, hess, forget, selection=masks, solver="lissa", tol=1e-14, max_iter=5
        )
    assert not report.converged and report.iterations == 5


def test_float32_model_agrees_with_float64_reference():
    model = tiny_mlp()
    x, y = data_for(model, 40, seed=1)
    masks = li.select_parameters(model, (x[30:], y[30:]), ratio=0.5)
    ref, _ = li.influence(
        model, None, (x[:30], y[:30]), (x[30:], y[30:]), selection=masks, solver="dense"
    )
    m32 = tiny_mlp().float()
    d32, report = li.influence(
        m32,
        None,
        (x[:30].float(), y[:30]),
        (x[30:].float(), y[30:]),
        selection=masks,
        tol=1e-5,
        max_iter=500,
    )
    assert all(t.dtype == torch.float32 for t in d32.values())
    assert rel_err(d32, V.flatten(ref).double()) < 1e-2


def test_weights_and_mode_untouched():
    model = tiny_cnn().train()
    x, y = data_for(model, 20, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    li.influence(model, None, (x[:10], y[:10]), (x[10:], y[10:]), tol=1e-4, max_iter=20)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_label_change_uses_difference_of_gradients():
    model = tiny_mlp()
    x, y = data_for(model, 30, seed=4)
    wrong, right = (x[20:], y[20:]), (x[20:], (y[20:] + 1) % 3)
    _, g_wrong = dense_reference(model, nn.functional.cross_entropy, [(x, y)], [wrong])
    H, g_right = dense_reference(model, nn.functional.cross_entropy, [(x, y)], [right])
    ref = closed_form("if", H, g_wrong - g_right, torch.ones_like(g_wrong, dtype=torch.bool))
    delta, _ = li.influence(
        model, None, (x, y), wrong, add_data=right, estimator="if", solver="dense"
    )
    assert rel_err(delta, ref) < 1e-8


# LiSSA with damping only for GIF: on this tiny model H + λI stays indefinite, and LiSSA's
# squared system for the symmetric estimators is covered by the saddle test.
DAMPING_CASES = [(e, s) for e in ESTIMATORS for s in ("dense", "krylov")] + [("gif", "lissa")]


@pytest.mark.parametrize(("estimator", "solver"), DAMPING_CASES)
def test_damping_matches_closed_form(estimator, solver):
    """λ > 0: Tikhonov for GIF, H + λI for the others; every solver agrees with the closed form."""
    model = tiny_mlp()
    x, y = data_for(model, 40, seed=1)
    hess, forget = (x[:30], y[:30]), (x[30:], y[30:])
    masks = li.select_parameters(model, forget, ratio=0.2)
    H, g = dense_reference(model, nn.functional.cross_entropy, [hess], [forget])
    lam = 0.05
    sel = flat_selection(model, None if estimator == "if" else masks)
    idx = sel.nonzero().squeeze(1)
    ref = torch.zeros_like(g)
    Hd = H + lam * torch.eye(len(g), dtype=H.dtype)
    if estimator == "gif":
        A = H[:, idx]
        ref[idx] = torch.linalg.solve(A.T @ A + lam * torch.eye(len(idx), dtype=H.dtype), A.T @ g)
    elif estimator == "fif":
        ref[idx] = torch.linalg.solve(Hd[idx][:, idx], g[idx])
    else:
        full = torch.linalg.solve(Hd, g)
        ref = full if estimator == "if" else torch.where(sel, full, torch.zeros_like(full))
    opts = {
        "dense": {},
        "krylov": {"tol": 1e-12, "max_iter": 3000},
        "lissa": {"tol": 1e-9, "max_iter": 20000},
    }[solver]
    delta, report = li.influence(
        model,
        None,
        hess,
        forget,
        selection=masks,
        estimator=estimator,
        solver=solver,
        damping=lam,
        **opts,
    )
    assert report.converged
    assert rel_err(delta, ref) < (1e-6 if solver == "lissa" else 1e-8)


def test_damping_must_be_non_negative():
    model = tiny_mlp()
    x, y = data_for(model, 10, seed=0)
    with pytest.raises(ValueError, match="damping"):
        li.influence(model, None, (x, y), (x, y), damping=-1.0)


@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_estimator_systems_are_the_documented_algebra(damping):
    """GIF: H P (least squares, Tikhonov λ); FIF: P (H + λI) P; PIF/IF: H + λI."""
    model = tiny_mlp()
    x, y = data_for(model, 30, seed=0)
    H = DenseHessianOperator(model, None, (x, y))
    masks = li.select_parameters(model, (x, y), ratio=0.34)
    g = {k: torch.randn_like(v) for k, v in H.params.items()}
    p = V.flatten(as_masks(masks, H.params)).double()
    P, Hd = torch.diag(p), H.matrix + damping * torch.eye(len(p), dtype=torch.float64)
    expected = {
        "gif": (H.matrix @ P, V.flatten(g), LEAST_SQUARES, damping, masks),
        "fif": (P @ Hd @ P, p * V.flatten(g), SYMMETRIC, 0.0, masks),
        "pif": (Hd, V.flatten(g), SYMMETRIC, 0.0, masks),
        "if": (Hd, V.flatten(g), SYMMETRIC, 0.0, None),
    }
    for estimator, (A, b, kind, lam, out_mask) in expected.items():
        system = build_system(estimator, H, g, masks, damping)
        assert torch.allclose(system.operator.to_matrix(H.params), A, rtol=0, atol=1e-14)
        assert torch.allclose(system.operator.T.to_matrix(H.params), A.T, rtol=0, atol=1e-14)
        assert torch.equal(V.flatten(system.rhs), b)
        assert (system.kind, system.damping, system.output_mask) == (kind, lam, out_mask)
        assert system.operator.symmetric == (kind == SYMMETRIC)


def test_loader_over_indexed_dataset_gives_the_unweighted_result():
    """A third tuple element is sample ids: never per-sample weights."""
    model = tiny_mlp()
    x, y = data_for(model, 40, seed=1)
    forget = (x[30:], y[30:])
    with_ids = DataLoader(IndexedDataset(TensorDataset(x[:30], y[:30])), batch_size=8)
    plain = DataLoader(TensorDataset(x[:30], y[:30]), batch_size=8)
    first = next(iter(with_ids))
    assert len(first) == 3 and first[2].dtype == torch.long
    for solver in ("krylov", "dense"):
        a, _ = li.influence(model, None, with_ids, forget, estimator="if", solver=solver)
        b, _ = li.influence(model, None, plain, forget, estimator="if", solver=solver)
        assert all(torch.equal(a[k], b[k]) for k in b)
    whole, _ = li.influence(model, None, (x[:30], y[:30]), forget, estimator="if", solver="dense")
    assert rel_err(a, V.flatten(whole)) < 1e-10  # the dense solve over the loader
    # What the former rule computed: the Hessian weighted by the sample ids.
    by_ids = [Batch(bx, by, weights=ids.double()) for bx, by, ids in with_ids]
    wrong, _ = li.influence(model, None, by_ids, forget, estimator="if", solver="dense")
    assert rel_err(wrong, V.flatten(whole)) > 1e-3


def test_influence_keeps_frozen_eval_submodules_and_existing_grads():
    """A submodule the user froze in eval stays in eval; accumulated ``.grad`` survive."""
    model = tiny_cnn().train()
    frozen = next(m for m in model.modules() if m is not model and list(m.parameters()))
    frozen.eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    x, y = data_for(model, 20, seed=2)
    li.influence(model, None, (x[:10], y[:10]), (x[10:], y[10:]), tol=1e-4, max_iter=20)
    assert model.training and not frozen.training
    others = [m for m in model.modules() if m is not frozen and m is not model]
    assert all(m.training for m in others if not any(m is f for f in frozen.modules()))
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
