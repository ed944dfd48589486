"""Influence scores and EK-FAC against dense float64 references built in the test.

The references use ``torch.func`` on the flat parameters (``torch.func.hessian`` for H, a
per-sample ``torch.func.grad`` loop for the gradients), independent of the package's code.
"""

from __future__ import annotations

import pytest
import torch
from engine_fixtures import data_for, flat_loss, ref_grads, tiny_cnn, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader, Dataset

import lightning_influence as li
from lightning_influence.solve import vectors as V
from lightning_influence.solve.curvature import trainable_params
from lightning_influence.solve.ekfac import (
    factor_eigh,
    fisher_rows,
    fit_ekfac,
    kronecker_layers,
    layer_inputs,
    layer_output_grads,
)
from lightning_influence.solve.gradients import per_sample_gradients

CE = nn.functional.cross_entropy


def ref_hessian(model, x, y):
    theta = V.flatten(trainable_params(model))
    return torch.func.hessian(lambda t: flat_loss(model, t, x, y))(theta)


def ref_gauss_newton(model, x, y):
    params = trainable_params(model)
    theta = V.flatten(params)

    def logits(t):
        return torch.func.functional_call(model, (V.unflatten(t, params),), (x,))

    J = torch.func.jacrev(logits)(theta)  # [n, C, P]
    p = torch.softmax(logits(theta), dim=1)
    h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", J, h, J) / len(y)


@pytest.fixture(scope="module")
def mlp_problem():
    model = tiny_mlp().eval()
    x, y = data_for(model, 30, seed=1)
    return model, (x[:20], y[:20]), (x[20:], y[20:])


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
@pytest.mark.parametrize("solver", ["dense", "krylov"])
def test_exact_scores_equal_dense_reference(mlp_problem, curvature, solver):
    model, (xt, yt), (xq, yq) = mlp_problem
    H = ref_hessian(model, xt, yt) if curvature == "hessian" else ref_gauss_newton(model, xt, yt)
    lam_min = torch.linalg.eigvalsh(H)[0].item()
    if curvature == "hessian":
        assert lam_min < -1e-3, "the Hessian case must be indefinite"
    damping = max(0.0, -lam_min) + 0.05  # H + λI positive definite
    ref = ref_grads(model, xq, yq) @ torch.linalg.solve(
        H + damping * torch.eye(len(H), dtype=H.dtype), ref_grads(model, xt, yt).T
    )
    got = li.influence_scores(
        model,
        (xt, yt),
        (xq, yq),
        hessian_data=(xt, yt),
        curvature=curvature,
        damping=damping,
        solver=solver,
        tol=1e-13,
    )
    assert got.shape == (10, 20) and got.dtype == torch.float64
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-6


def test_self_influence_is_the_diagonal_of_the_scores(mlp_problem):
    model, train, _ = mlp_problem
    for curvature in ("ekfac", "exact"):
        si = li.self_influence(model, train, curvature=curvature, damping=0.1)
        full = li.influence_scores(model, train, train, curvature=curvature, damping=0.1)
        assert torch.allclose(si, full.diagonal(), rtol=1e-10, atol=1e-12)
        assert (si > 0).all()  # a damped PSD curvature


def test_layers_select_the_blocks_as_freezing_the_others_does(mlp_problem):
    """layers='last' (the default, or its name) scores as if every other layer were frozen;
    naming all covered layers is layers='all'; a layer that is not covered raises."""
    import copy

    model, train, query = mlp_problem
    opts = dict(hessian_data=train, damping=0.1)
    frozen = copy.deepcopy(model)
    frozen[0].requires_grad_(False)
    for curvature in ("ekfac", "kfac"):
        ref = li.self_influence(frozen, train, curvature=curvature, **opts)
        last = li.self_influence(model, train, curvature=curvature, layers="last", **opts)
        assert torch.allclose(last, ref, rtol=1e-10, atol=1e-12)
        default = li.self_influence(model, train, curvature=curvature, **opts)
        assert torch.equal(default, last)
        named = li.influence_scores(model, train, query, curvature=curvature, layers=["2"], **opts)
        ref_q = li.influence_scores(frozen, train, query, curvature=curvature, **opts)
        assert torch.allclose(named, ref_q, rtol=1e-10, atol=1e-12)
        both = li.self_influence(model, train, curvature=curvature, layers=["0", "2"], **opts)
        full = li.self_influence(model, train, curvature=curvature, layers="all", **opts)
        assert torch.allclose(both, full, rtol=1e-10, atol=1e-12)
        assert (full > last).all()  # the first layer's block adds a positive term
    with pytest.raises(ValueError, match="not a covered layer"):
        li.self_influence(model, train, layers=["1"], **opts)
    with pytest.raises(ValueError, match="layers"):
        li.self_influence(model, train, curvature="exact", layers="last", **opts)
    exact_all = li.self_influence(model, train, curvature="exact", layers="all", **opts)
    assert torch.equal(exact_all, li.self_influence(model, train, curvature="exact", **opts))


def test_ekfac_is_exact_for_one_sample_of_one_linear_layer():
    """One sample, one Linear layer, the empirical Fisher: F = vec(G)vec(G)ᵀ = A ⊗ S."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double().eval()
    x, y = torch.randn(1, 5, dtype=torch.float64), torch.tensor([2])
    xq, yq = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    g = ref_grads(model, x, y)
    F = g.T @ g
    lam = 0.3
    ref = ref_grads(model, xq, yq) @ torch.linalg.solve(
        F + lam * torch.eye(len(F), dtype=F.dtype), g.T
    )
    for curvature in ("ekfac", "kfac"):
        got = li.influence_scores(
            model, (x, y), (xq, yq), curvature=curvature, fisher="empirical", damping=lam
        )
        assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12), curvature


def _layer_fisher(model, layer, batches):
    """The dense weighted Fisher of one layer's block in the [out, in(+1)] row-major layout."""
    rows, weights = [], []
    for b in batches:
        for i in range(len(b)):
            names = layer.params
            gi = ref_grads(model, b.x[i : i + 1], b.y[i : i + 1], names)[0]
            gd = V.unflatten(gi, {k: trainable_params(model)[k] for k in names})
            w = gd[layer.weight].reshape(gd[layer.weight].shape[0], -1)
            if layer.bias:
                w = torch.cat([w, gd[layer.bias][:, None]], dim=1)
            rows.append(w.reshape(-1))
            weights.append(1.0 if b.weights is None else float(b.weights[i]))
    G, w = torch.stack(rows), torch.tensor(weights, dtype=torch.float64)
    return (G.T * w) @ G / w.sum()


def test_corrected_eigenvalues_are_the_fisher_diagonal_in_the_kronecker_basis():
    """Λ = diag(Uᵀ F U), U = Q_S ⊗ Q_A: on a conv (stride, padding) and a Linear layer."""
    model = tiny_cnn()
    model.conv.stride, model.conv.padding = (2, 2), (1, 1)  # 6x6 -> 3x3 -> pool -> 1x1
    model.fc = nn.Linear(3, 3).double()
    x, y = data_for(model, 12, seed=4)
    batches = li.as_batches([(x[:7], y[:7]), (x[7:], y[7:])])
    rows = fisher_rows(model, batches, "sampled", seed=1)
    op = fit_ekfac(model, None, rows)
    kfac = fit_ekfac(model, None, rows, correct=False)
    for name, block in op.blocks.items():
        F = _layer_fisher(model, block.layer, rows)
        U = torch.kron(block.q_s, block.q_a)
        assert torch.allclose(
            block.eigenvalues.reshape(-1), torch.diagonal(U.T @ F @ U), atol=1e-12
        )
        # EK-FAC is the best diagonal in that basis: never further from F than K-FAC
        ek = U @ torch.diag(block.eigenvalues.reshape(-1)) @ U.T
        k = U @ torch.diag(kfac.blocks[name].eigenvalues.reshape(-1)) @ U.T
        assert (F - ek).norm() <= (F - k).norm() + 1e-12
    assert set(op.params) == {"conv.weight", "conv.bias", "fc.weight", "fc.bias"}  # BN skipped


def test_expected_fisher_of_softmax_regression_is_the_hessian():
    """For a linear model with cross-entropy the expected Fisher (GGN) equals H."""
    torch.manual_seed(3)
    model = nn.Linear(4, 3).double().eval()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    op = fit_ekfac(model, None, fisher_rows(model, li.as_batches((x, y)), "expected"))
    (block,) = op.blocks.values()
    H = ref_hessian(model, x, y)  # layout: weight (row-major) then bias
    perm = torch.tensor(
        [o * 5 + i for o in range(3) for i in range(4)] + [o * 5 + 4 for o in range(3)]
    )
    H_rowmajor = torch.empty_like(H)
    H_rowmajor[perm[:, None], perm[None, :]] = H
    U = torch.kron(block.q_s, block.q_a)
    assert torch.allclose(
        block.eigenvalues.reshape(-1), torch.diagonal(U.T @ H_rowmajor @ U), atol=1e-12
    )


@pytest.mark.parametrize(
    "conv, shape",
    [
        (nn.Conv2d(2, 3, 3, stride=2, padding=1), (4, 2, 5, 5)),
        (nn.Conv1d(2, 3, 3, stride=2, padding=1), (4, 2, 7)),
        (nn.Conv1d(2, 3, 2, dilation=2, padding="same"), (4, 2, 6)),
        (nn.Conv3d(2, 3, (2, 3, 2), stride=(1, 2, 1), padding=(0, 1, 1)), (4, 2, 3, 5, 4)),
        (nn.Conv3d(2, 2, 3, dilation=(1, 2, 1), padding=1), (4, 2, 4, 6, 4)),
    ],
)
def test_conv_patches_rebuild_the_per_sample_gradient(conv, shape):
    """Σₜ gₜ aₜᵀ from the patches and output gradients is the conv's weight gradient, for
    Conv2d (F.unfold) and the convolutions F.unfold does not cover (one set of layer types
    for the unit selection and EK-FAC: Linear and Conv1d/2d/3d), strides, dilations and
    padding included."""
    torch.manual_seed(2)
    conv = conv.double()
    x, y = torch.randn(*shape, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    width = conv(x)[0].numel()
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(width, 2)).double().eval()
    layer = kronecker_layers(model)["0"]
    out = conv(x)
    loss = CE(model[3](model[2](model[1](out))), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, out)
    a, go = layer_inputs(layer, x), layer_output_grads(layer, g)
    G = torch.einsum("nto,nti->noi", go, a)
    ref = per_sample_gradients(model, CE, li.Batch(x, y))
    assert torch.allclose(
        G[..., :-1], ref["0.weight"].reshape(4, conv.out_channels, -1), atol=1e-12
    )
    assert torch.allclose(G[..., -1], ref["0.bias"], atol=1e-12)


def test_ekfac_correlates_with_exact_gauss_newton():
    """Measured on this trained tiny MLP (damping 1e-2): Pearson 0.84 over the 20 x 100
    query-train scores, Spearman 0.99 over the 100 self-influences."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, dtype=torch.float64, generator=gen)
    y = (x[:, :4].argmax(1) + (torch.rand(120, generator=gen) < 0.1).long()) % 4
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(150):
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    model.eval()
    train, query = (x[:100], y[:100]), (x[100:], y[100:])
    opts = dict(hessian_data=train, damping=1e-2, fisher="expected")
    exact = li.influence_scores(model, train, query, curvature="gauss_newton", **opts)
    ekfac = li.influence_scores(model, train, query, curvature="ekfac", layers="all", **opts)
    pearson = torch.corrcoef(torch.stack([exact.flatten(), ekfac.flatten()]))[0, 1]
    se = li.self_influence(model, train, curvature="gauss_newton", **opts)
    sk = li.self_influence(model, train, curvature="ekfac", layers="all", **opts)
    ranks = torch.stack([se.argsort().argsort(), sk.argsort().argsort()]).double()
    spearman = torch.corrcoef(ranks)[0, 1]
    assert pearson > 0.8 and spearman > 0.95, (pearson, spearman)


class DictData(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


def test_input_forms_give_the_same_scores(mlp_problem):
    model, (xt, yt), query = mlp_problem
    opts = dict(hessian_data=(xt, yt), damping=0.1)
    ref = li.influence_scores(model, (xt, yt), query, **opts)
    batches = [(xt[:7], yt[:7]), li.Batch(xt[7:], yt[7:])]
    assert torch.allclose(li.influence_scores(model, batches, query, **opts), ref)
    loader = DataLoader(DictData(xt, yt), batch_size=6, shuffle=True)
    got, ids = li.influence_scores(model, loader, [query], return_ids=True, **opts)
    assert torch.equal(ids, torch.arange(20)) and torch.allclose(got, ref)
    indexed = DataLoader(li.IndexedDataset(DictData(xt, yt)), batch_size=8, shuffle=True)
    si, ids = li.self_influence(model, indexed, return_ids=True, **opts)
    assert torch.allclose(si[ids.argsort()], li.self_influence(model, (xt, yt), **opts))
    many = li.influence_scores(model, (xt, yt), query, batch_size=3, **opts)  # chunks of 3
    assert torch.allclose(many, ref)


def test_default_subset_and_progress_bar_run(mlp_problem):
    model, train, query = mlp_problem
    s = li.influence_scores(model, train, query, budget=8, pool_size=16, progress_bar=True)
    assert s.shape == (10, 20) and torch.isfinite(s).all()


def test_bad_input_raises_naming_the_fix(mlp_problem):
    model, train, query = mlp_problem
    with pytest.raises(ValueError, match="curvature"):
        li.influence_scores(model, train, query, curvature="fisher")
    with pytest.raises(ValueError, match="damping"):
        li.self_influence(model, train, damping=-1.0)
    with pytest.raises(TypeError, match="Unknown influence-score options"):
        li.self_influence(model, train, dampening=1.0)
    with pytest.raises(ValueError, match="query_data is None"):
        li.influence_scores(model, train, None)
    with pytest.raises(ValueError, match="empty"):
        li.influence_scores(model, train, [])
    with pytest.raises(ValueError, match="fisher='empirical'"):
        li.self_influence(model, train, loss_fn=lambda o, t: CE(o, t), fisher="sampled")
    with pytest.raises(ValueError, match="once"):
        twice = li.Batch(*train, ids=torch.arange(20))
        li.self_influence(model, [twice, twice], hessian_data=train)
    bn_only = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4)).double().eval()
    with pytest.raises(ValueError, match="gauss_newton"):
        li.self_influence(bn_only, (train[0], train[1] % 4))


def test_cross_entropy_in_any_spelling_is_the_default_loss(mlp_problem):
    """F.cross_entropy and a plain nn.CrossEntropyLoss() get the default loss's sampled
    Fisher (the same scores, bit for bit); a loss that differs (label smoothing) or an opaque
    callable is custom: the empirical Fisher, and 'sampled' is refused."""
    from lightning_influence.solve.curvature import is_cross_entropy

    model, train, _ = mlp_problem
    ref = li.self_influence(model, train, damping=0.1)
    for same in (CE, nn.CrossEntropyLoss()):
        assert is_cross_entropy(same)
        assert torch.equal(li.self_influence(model, train, loss_fn=same, damping=0.1), ref)
    smoothed = nn.CrossEntropyLoss(label_smoothing=0.1)
    for custom in (smoothed, nn.CrossEntropyLoss(reduction="sum"), lambda o, t: CE(o, t)):
        assert not is_cross_entropy(custom)
    got = li.self_influence(model, train, loss_fn=smoothed, damping=0.1)
    empirical = li.self_influence(model, train, loss_fn=smoothed, damping=0.1, fisher="empirical")
    assert torch.equal(got, empirical) and not torch.allclose(got, ref)
    with pytest.raises(ValueError, match="fisher='empirical'"):
        li.self_influence(model, train, loss_fn=smoothed, fisher="sampled")


def test_score_args_takes_the_settings_object_the_callback_takes():
    from lightning_influence.attribution.scores import ScoreArguments, _settings

    args = ScoreArguments(curvature="kfac", budget=64)
    assert _settings({}, args) == args
    assert _settings({"budget": 32}, args).budget == 32  # a keyword overrides
    assert _settings({}, {"damping": 0.5}).damping == 0.5
    with pytest.raises(TypeError, match="score_args must be a ScoreArguments"):
        _settings({}, "kfac")


def test_self_influence_with_score_args_equals_keywords():
    from lightning_influence.attribution.scores import ScoreArguments

    model = tiny_mlp()
    data = data_for(model, 16, seed=1)
    args = ScoreArguments(curvature="gauss_newton", damping=0.1)
    a = li.self_influence(model, data, score_args=args)
    b = li.self_influence(model, data, curvature="gauss_newton", damping=0.1)
    assert torch.equal(a, b)


def test_a_factor_whose_eigh_fails_is_decomposed_in_float64_then_with_jitter(monkeypatch):
    """LAPACK failed to converge on ResNet-18's 4,608-wide factors: factor_eigh retries in
    float64 (a float32 factor), then with a growing diagonal jitter, in the factor's dtype."""
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 4, generator=gen)
    factor = (m @ m.T).float()  # PSD, rank 4
    real = torch.linalg.eigh
    calls = []

    def flaky(a):  # fails on float32 and on the first float64 attempt
        calls.append(a.dtype)
        if a.dtype == torch.float32 or len(calls) == 2:
            raise torch.linalg.LinAlgError("failed to converge")
        return real(a)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    vals, vecs = factor_eigh(factor)
    assert calls == [torch.float32, torch.float64, torch.float64]  # native, float64, jitter
    assert vals.dtype == vecs.dtype == torch.float32
    rebuilt = (vecs.double() * vals.double()) @ vecs.double().T
    assert torch.allclose(rebuilt, factor.double(), atol=1e-5)
    calls.clear()

    def first_fails(a):
        calls.append(a.dtype)
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("failed to converge")
        return real(a)

    monkeypatch.setattr(torch.linalg, "eigh", first_fails)
    vals, _ = factor_eigh(factor.double())  # float64 already: straight to the jitter
    assert calls == [torch.float64, torch.float64] and vals.dtype == torch.float64
    monkeypatch.setattr(torch.linalg, "eigh", lambda a: (_ for _ in ()).throw(
        torch.linalg.LinAlgError("no")))  # fmt: skip
    with pytest.raises(torch.linalg.LinAlgError, match="NaN or inf"):
        factor_eigh(factor)


def test_rotating_the_factors_equals_rotating_the_formed_per_sample_gradients():
    """Q_Sᵀ Gₙ Q_A from (gₙ Q_S)ᵀ (aₙ Q_A), both ways, equals the rotation of autograd's
    per-sample gradients (a strided, padded conv and a Linear layer, float64); and so does
    the self-influence quadratic computed from the factors."""
    from lightning_influence.solve.curvature import default_loss
    from lightning_influence.solve.ekfac import per_sample_factors

    model = tiny_cnn()
    model.conv.stride, model.conv.padding = (2, 2), (1, 1)
    model.fc = nn.Linear(3, 3).double()
    x, y = data_for(model, 10, seed=5)
    batch = li.as_batches((x, y))[0]
    op = fit_ekfac(model, None, fisher_rows(model, li.as_batches((x, y)), "sampled", seed=2))
    grads = per_sample_gradients(model, default_loss, batch, op.params)
    layers = {name: b.layer for name, b in op.blocks.items()}
    factors = per_sample_factors(model, default_loss, batch, layers)
    for name, block in op.blocks.items():
        formed = block.rotate(grads)
        for factored in (True, False, None):
            got = block.rotate_factors(*factors[name], factored=factored)
            assert torch.allclose(got, formed, atol=1e-12), (name, factored)
    inverse = op.inverse(1e-3)
    assert torch.allclose(
        inverse.quadratic_of_rows(model, default_loss, batch), inverse.quadratic(grads), rtol=1e-10
    )


def test_rotations_are_done_a_few_rows_at_a_time_with_the_same_numbers(monkeypatch):
    """With room for 40 rotated entries per part (fewer than one row of the conv block),
    the quadratic and the corrected eigenvalues are the same as in one part."""
    import lightning_influence.solve.ekfac as E
    from lightning_influence.solve.curvature import default_loss

    model = tiny_cnn()
    x, y = data_for(model, 9, seed=6)
    batch = li.as_batches((x, y))[0]
    rows = fisher_rows(model, li.as_batches((x, y)), "sampled", seed=3)
    whole = fit_ekfac(model, None, rows)
    expected = whole.inverse(1e-3).quadratic_of_rows(model, default_loss, batch)
    monkeypatch.setattr(E, "ROTATED_ENTRIES", 40)
    parts = [len(range(9)[r]) for r, _ in E.rotated_parts(next(iter(whole.blocks.values())),
             *next(iter(E.per_sample_factors(model, default_loss, batch,
                   {n: b.layer for n, b in whole.blocks.items()}).values())))]  # fmt: skip
    assert len(parts) > 1 and sum(parts) == 9
    split = fit_ekfac(model, None, rows)
    for name, block in whole.blocks.items():
        assert torch.allclose(split.blocks[name].eigenvalues, block.eigenvalues, rtol=1e-12)
    got = split.inverse(1e-3).quadratic_of_rows(model, default_loss, batch)
    assert torch.allclose(got, expected, rtol=1e-12)


def test_a_dataset_is_batched_not_taken_as_batches(digits):
    """li.self_influence(model, TensorDataset) once failed ("x and y must have the same
    number of samples": each sample was read as a batch); it now gives the scores of the
    same rows as the tensors or a DataLoader do."""
    from torch.utils.data import DataLoader, Subset

    from lightning_influence.demos.models import ImageClassifier

    train = Subset(digits[0], range(40))
    torch.manual_seed(0)
    model = ImageClassifier(num_classes=10, image_size=8).eval()
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.tensor([int(train[i][1]) for i in range(len(train))])
    expected = li.self_influence(model, (x, y))
    assert torch.allclose(li.self_influence(model, train), expected, rtol=1e-5)
    assert torch.allclose(
        li.self_influence(model, DataLoader(train, batch_size=7)), expected, rtol=1e-5
    )


def test_the_default_layer_is_the_output_layer_that_runs_last_not_the_last_registered():
    """One output-layer rule (selection.output_layer): the last trainable Linear/Conv that runs
    in the forward pass. A head registered before its body is still the output layer; a head
    EK-FAC does not cover (a grouped convolution) is an error naming the fix, not a silent
    fallback to an inner layer."""

    class HeadFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head, self.body = nn.Linear(6, 3), nn.Linear(4, 6)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x)))

    torch.manual_seed(0)
    model = HeadFirst().double().eval()
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.arange(12) % 3
    default = li.self_influence(model, (x, y), damping=0.1)
    assert torch.equal(default, li.self_influence(model, (x, y), layers=["head"], damping=0.1))
    assert not torch.allclose(
        default, li.self_influence(model, (x, y), layers=["body"], damping=0.1)
    )

    class GroupedHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(4, 6), nn.Conv1d(6, 4, 1, groups=2)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x))[..., None])[..., 0]

    with pytest.raises(ValueError, match="'head', which \\(E\\)K-FAC does not cover"):
        li.self_influence(GroupedHead().double().eval(), (x, y), damping=0.1)


class _DictScores(nn.Module):
    """The model behind another output convention: {"scores": logits}."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"scores": self.net(x)}


def test_a_model_task_reads_dict_batches_and_odd_outputs(mlp_problem):
    """ModelTask(batch_parser, logits_fn) lets the scores read batches and outputs that the
    defaults cannot, with the same numbers as the plain model on plain tensors."""
    model, (xt, yt), (xq, yq) = mlp_problem
    task = li.ModelTask(
        batch_parser=lambda b: li.Batch(b["inp"], b["lab"], b["key"]),
        logits_fn=lambda out: out["scores"],
    )
    train = [{"inp": xt[i : i + 7], "lab": yt[i : i + 7], "key": torch.arange(i, min(i + 7, 20))}
             for i in range(0, 20, 7)]  # fmt: skip
    query = [{"inp": xq, "lab": yq, "key": torch.arange(10)}]
    odd = _DictScores(model)
    for opts in ({"curvature": "gauss_newton", "solver": "dense"}, {"budget": 8}):
        want = li.self_influence(model, (xt, yt), **opts)
        assert torch.allclose(li.self_influence(odd, train, model_task=task, **opts), want)
        want = li.influence_scores(model, (xt, yt), (xq, yq), **opts)
        got = li.influence_scores(odd, train, query, model_task=task, **opts)
        assert torch.allclose(got, want)
    with pytest.raises(TypeError, match="logits"):
        li.self_influence(odd, (xt, yt))  # without the task the output is not read
