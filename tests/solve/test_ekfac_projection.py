"""EK-FAC on randomly projected factors (``projection=k``), against dense float64 references:
the corrected eigenvalues are the projected per-sample gradients' Fisher diagonal in the
Kronecker basis, the quadratic and the inverse operator are Pᵀ (F̃ + λI)⁻¹ P, and a
projection at least as wide as a layer changes nothing."""

from __future__ import annotations

import pytest
import torch
from engine_fixtures import data_for, ref_grads, tiny_cnn
from torch import nn

import lightning_influence as li
from lightning_influence.solve import vectors as V
from lightning_influence.solve.curvature import default_loss, trainable_params
from lightning_influence.solve.ekfac import fisher_rows, fit_ekfac, layer_dims, projections
from lightning_influence.solve.gradients import per_sample_gradients


def _model():
    model = tiny_cnn()
    model.conv.stride, model.conv.padding = (2, 2), (1, 1)  # a: 1·3·3 + 1 = 10 wide, g: 3
    model.fc = nn.Linear(3, 5).double()  # a: 3 + 1 = 4 wide, g: 5
    return model


def _dense_gradients(model, layer, batch):
    """[n, out, in(+1)] per-sample gradients of one layer, by torch.func, one row at a time."""
    names = layer.params
    params = trainable_params(model)
    out = []
    for i in range(len(batch)):
        gi = ref_grads(model, batch.x[i : i + 1], batch.y[i : i + 1], names)[0]
        gd = V.unflatten(gi, {k: params[k] for k in names})
        w = gd[layer.weight].reshape(gd[layer.weight].shape[0], -1)
        if layer.bias:
            w = torch.cat([w, gd[layer.bias][:, None]], dim=1)
        out.append(w)
    return torch.stack(out)


def _project(block, g):
    p = block.projection
    g = g if p.p_s is None else p.p_s @ g
    return g if p.p_a is None else g @ p.p_a.T


@pytest.mark.parametrize("size", [2, 3])
def test_projected_ekfac_matches_the_dense_fisher_of_the_projected_gradients(size):
    model = _model()
    x, y = data_for(model, 11, seed=7)
    batch = li.as_batches((x, y))[0]
    rows = fisher_rows(model, [batch], "empirical")
    op = fit_ekfac(model, None, rows, projection=size, seed=4)
    lam = 0.05
    inverse = op.inverse(lam)
    expected_quadratic = torch.zeros(len(batch), dtype=torch.float64)
    for block in op.blocks.values():
        n_in, n_out = layer_dims(block.layer)
        assert block.q_a.shape[0] == min(n_in, size) and block.q_s.shape[0] == min(n_out, size)
        G = _project(block, _dense_gradients(model, block.layer, batch))  # [n, k_out, k_in]
        flat = G.reshape(len(batch), -1)
        fisher = flat.T @ flat / len(batch)
        U = torch.kron(block.q_s, block.q_a)
        assert torch.allclose(
            block.eigenvalues.reshape(-1), torch.diagonal(U.T @ fisher @ U), atol=1e-12
        )
        rotated = flat @ U
        expected_quadratic += (rotated**2 / (block.eigenvalues.reshape(-1) + lam)).sum(1)
    got = inverse.quadratic_of_rows(model, default_loss, batch)
    assert torch.allclose(got, expected_quadratic, rtol=1e-10)
    grads = per_sample_gradients(model, default_loss, batch, op.params)
    assert torch.allclose(inverse.quadratic(grads), expected_quadratic, rtol=1e-10)


def test_projected_inverse_is_the_symmetric_operator_pt_inverse_p():
    """uᵀ (K v) = vᵀ (K u), and K v = Pᵀ U diag(1/(Λ+λ)) Uᵀ P v on every covered layer."""
    model = _model()
    x, y = data_for(model, 9, seed=8)
    rows = fisher_rows(model, li.as_batches((x, y)), "sampled", seed=2)
    inverse = fit_ekfac(model, None, rows, projection=2, seed=1).inverse(0.1)
    params = {k: p.detach() for k, p in trainable_params(model).items()}
    gen = torch.Generator().manual_seed(0)
    u, v = ({k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}
            for _ in range(2))  # fmt: skip
    ku, kv = inverse.matvec(u), inverse.matvec(v)
    assert abs(V.dot(u, kv) - V.dot(v, ku)) < 1e-10 * abs(V.dot(u, kv))
    for block in inverse.base.blocks.values():
        names = block.layer.params
        m = torch.cat(
            [v[block.layer.weight].reshape(v[block.layer.weight].shape[0], -1)]
            + ([v[block.layer.bias][:, None]] if block.layer.bias else []),
            dim=1,
        )
        r = block.q_s.T @ _project(block, m[None])[0] @ block.q_a
        back = block.q_s @ (r / (block.eigenvalues + 0.1)) @ block.q_a.T
        p = block.projection
        back = back if p.p_s is None else p.p_s.T @ back
        back = back if p.p_a is None else back @ p.p_a
        got = torch.cat(
            [kv[block.layer.weight].reshape(back.shape[0], -1)]
            + ([kv[block.layer.bias][:, None]] if block.layer.bias else []),
            dim=1,
        )
        assert torch.allclose(got, back, atol=1e-12), names


def test_a_projection_as_wide_as_every_layer_changes_nothing():
    model = _model()
    x, y = data_for(model, 10, seed=9)
    rows = fisher_rows(model, li.as_batches((x, y)), "sampled", seed=3)
    whole, wide = fit_ekfac(model, None, rows), fit_ekfac(model, None, rows, projection=10)
    assert all(p.p_a is None and p.p_s is None for p in projections(
        {n: b.layer for n, b in whole.blocks.items()}, 10).values())  # fmt: skip
    for name, block in whole.blocks.items():
        assert torch.equal(wide.blocks[name].eigenvalues, block.eigenvalues)
    batch = li.as_batches((x, y))[0]
    assert torch.equal(
        wide.inverse(1e-3).quadratic_of_rows(model, default_loss, batch),
        whole.inverse(1e-3).quadratic_of_rows(model, default_loss, batch),
    )


def test_projection_reaches_the_scores_and_bad_values_name_the_fix():
    model = _model()
    x, y = data_for(model, 12, seed=10)
    plain = li.self_influence(model, (x, y), layers="all")
    projected = li.self_influence(model, (x, y), layers="all", projection=2)
    assert projected.shape == plain.shape and not torch.allclose(projected, plain)
    again = li.self_influence(
        model, (x, y), score_args=li.ScoreArguments(layers="all", projection=2)
    )
    assert torch.equal(projected, again)  # seeded: the same matrices every call
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="projection"):
            li.ScoreArguments(projection=bad)
    with pytest.raises(ValueError, match="curvature='ekfac'"):
        li.ScoreArguments(curvature="gauss_newton", projection=4)


def test_projected_self_influence_ranks_as_the_unprojected_one_on_digits(digits, trained_digits):
    """SmallCNN on digits, every layer, k = 16 (conv2's and fc1's inputs are 145 and 513
    wide with the bias): Spearman 0.9989-0.9996 and top-5 % overlap 0.966-0.983 on seeds 0-4 (k = 8:
    >= 0.9973 and >= 0.931), at about half the CPU time."""
    train, _, _ = digits
    model = trained_digits(4)
    full = li.self_influence(model, train.tensors, layers="all")
    projected = li.self_influence(model, train.tensors, layers="all", projection=16)

    def rank(v):
        return v.argsort().argsort().double()

    assert float(torch.corrcoef(torch.stack([rank(full), rank(projected)]))[0, 1]) >= 0.99
    k = len(full) // 20
    top = torch.topk(projected, k).indices
    assert float(torch.isin(top, torch.topk(full, k).indices).float().mean()) >= 0.85


def test_a_very_wide_layer_is_announced_with_the_fix_before_the_fit(monkeypatch, caplog):
    """EK-FAC told not to project (projection=None) on a layer wider than WIDE_FACTOR says
    so, naming projection=64; with a projection, or narrow layers, it says nothing."""
    import logging

    import lightning_influence.attribution.scores as S

    model = _model()
    x, y = data_for(model, 8, seed=11)
    monkeypatch.setattr(S, "WIDE_FACTOR", 4)  # the conv's 10-wide inputs, the fc's 5 outputs
    monkeypatch.setattr(S, "_ANNOUNCED", set())
    with caplog.at_level(logging.INFO):
        li.self_influence(model, (x, y), layers="all", projection=None)
    said = [r.getMessage() for r in caplog.records if "projection=64" in r.getMessage()]
    assert len(said) == 1 and "'conv', 10" in said[0]
    caplog.clear()
    with caplog.at_level(logging.INFO):  # once per model
        li.self_influence(model, (x, y), layers="all", projection=None)
    assert not [r for r in caplog.records if "projection=64" in r.getMessage()]
    with caplog.at_level(logging.INFO):
        li.self_influence(model, (x, y), layers="all", projection=3)
    monkeypatch.setattr(S, "WIDE_FACTOR", 2048)
    with caplog.at_level(logging.INFO):
        li.self_influence(model, (x, y), layers="all", projection=None)
    assert not [r for r in caplog.records if "projection=64" in r.getMessage()]


def test_auto_projection_sketches_only_when_a_layer_is_wide(monkeypatch, caplog):
    """The default projection='auto' is exactly projection=AUTO_PROJECTION once a selected
    layer's factor is wider than WIDE_FACTOR (and says so once), and exactly the unprojected
    EK-FAC otherwise; the last layer alone is judged by its own width."""
    import logging

    import lightning_influence.attribution.scores as S

    assert li.ScoreArguments().projection == "auto"
    model = _model()
    x, y = data_for(model, 12, seed=13)
    plain = li.self_influence(model, (x, y), layers="all", projection=None)
    assert torch.equal(li.self_influence(model, (x, y), layers="all"), plain)  # narrow: none
    monkeypatch.setattr(S, "WIDE_FACTOR", 9)  # the conv's inputs are 10 wide, the fc's 4 and 5
    monkeypatch.setattr(S, "AUTO_PROJECTION", 2)
    monkeypatch.setattr(S, "_ANNOUNCED", set())
    with caplog.at_level(logging.INFO):
        auto = li.self_influence(model, (x, y), layers="all")
    assert torch.equal(auto, li.self_influence(model, (x, y), layers="all", projection=2))
    assert not torch.allclose(auto, plain)
    said = [r.getMessage() for r in caplog.records if "projection='auto'" in r.getMessage()]
    assert len(said) == 1 and "'conv', 10" in said[0] and "2 dimensions" in said[0]
    last = li.self_influence(model, (x, y))  # the fc layer alone: 5 wide, not projected
    assert torch.equal(last, li.self_influence(model, (x, y), projection=None))
    with pytest.raises(ValueError, match="projection"):
        li.ScoreArguments(projection="sometimes")
    li.ScoreArguments(curvature="gauss_newton")  # 'auto' is no request: exact curvatures take it


def test_projected_self_influence_is_the_diagonal_of_the_projected_scores():
    """Both go through the same projected inverse (the query side is projected too)."""
    model = _model()
    x, y = data_for(model, 14, seed=12)
    train = (x, y)
    for layers in (None, "all"):
        si = li.self_influence(model, train, layers=layers, projection=2, damping=0.1)
        full = li.influence_scores(model, train, train, layers=layers, projection=2, damping=0.1)
        assert torch.allclose(si, full.diagonal(), rtol=1e-10, atol=1e-12), layers
        assert (si > 0).all()
