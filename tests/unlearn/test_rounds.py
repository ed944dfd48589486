"""The right-hand side of re-linearised rounds against the exact corrected-objective gradient.

On a convex float64 model trained to its optimum (∇L_D(θ₀) = 0 to round-off) and with the
"subset" B equal to the whole retained set, the control-variate g_k of
:class:`~lightning_influence.unlearn.rounds.RoundGradient` must equal −∇J(θ_k) exactly, for removal
(J = mean over R) and for label change (J = (Σ_R ℓ + Σ_A ℓ) / n).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_influence.data.batches import Batch
from lightning_influence.solve import vectors as V
from lightning_influence.solve.curvature import default_loss
from lightning_influence.unlearn.forget import ClassRemoval
from lightning_influence.unlearn.rounds import RoundGradient

N, M, D, C = 60, 6, 3, 3


def _trained_linear() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)  # random labels: not separable, optimum exists
    model = nn.Linear(D, C).double()
    opt = torch.optim.LBFGS(
        model.parameters(),
        max_iter=500,
        tolerance_grad=1e-14,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(20):
        opt.step(closure)
    closure()
    grad_norm = sum(float(p.grad.norm() ** 2) for p in model.parameters()) ** 0.5
    assert grad_norm < 1e-8, grad_norm
    return model, x, y


def _exact_negative_gradient(model, x, y, weight_rows: torch.Tensor) -> dict:
    """−∇ of Σ_i weight_rows[i] ℓ_i (x, y rows as given)."""
    model.zero_grad()
    losses = F.cross_entropy(model(x), y, reduction="none")
    (losses * weight_rows).sum().backward()
    return {k: -p.grad.detach().clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("task", ["removal", "label_change", "partial_labels"])
@pytest.mark.parametrize("round_index", [0, 1])
def test_round_gradient_is_the_corrected_objective_gradient(task, round_index):
    """g of round 1 (at the optimum) and of a later round (after a step) is −∇J exactly.

    ``partial_labels``: true labels known for only some forgotten samples (backdoor repair
    with a partial ``backdoor_true_labels``): J = (Σ_R ℓ + Σ_A ℓ) / (n − m + k).
    """
    model, x, y = _trained_linear()
    forget, retained = slice(0, M), slice(M, N)
    k = {"removal": 0, "label_change": M, "partial_labels": M // 2}[task]
    added_x, added_y = x[:k], (y[:k] + 1) % C
    add = [Batch(added_x, added_y)] if k else None
    remove_w, add_w, share = ClassRemoval([0]).gradient_weights(N, M, k)  # same for every task
    rg = RoundGradient(
        model,
        default_loss,
        [Batch(x[forget], y[forget])],
        add,
        [Batch(x[retained], y[retained], weights=torch.ones(N - M, dtype=torch.float64))],
        remove_weight=remove_w,
        add_weight=add_w,
        retain_share=share,
        rounds=2,
    )
    if round_index:
        with torch.no_grad():  # a step away from the trained weights
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    got = rg.at(model, round_index)
    rows_x, rows_y = torch.cat([x[retained], added_x]), torch.cat([y[retained], added_y])
    size = N - M + k
    want = _exact_negative_gradient(
        model, rows_x, rows_y, torch.full((len(rows_y),), 1.0 / size, dtype=torch.float64)
    )
    err = float(V.norm(V.add(got, want, -1.0)) / V.norm(want))
    assert err < 1e-6, err


def test_first_round_gradient_is_the_classic_right_hand_side():
    model, x, y = _trained_linear()
    forget = slice(0, M)
    rg = RoundGradient(
        model,
        default_loss,
        [Batch(x[forget], y[forget])],
        None,
        [Batch(x[M:], y[M:])],
        remove_weight=M / (N - M),
        add_weight=0.0,
        retain_share=1.0,
    )
    want = _exact_negative_gradient(
        model, x[M:], y[M:], torch.full((N - M,), 1.0 / (N - M), dtype=torch.float64)
    )  # at the optimum, −∇L_R(θ₀) = (m / (n − m)) mean_U ∇ℓ(θ₀)
    err = float(V.norm(V.add(rg.at(model, 0), want, -1.0)) / V.norm(want))
    assert err < 1e-7, err
    with pytest.raises(ValueError, match="rounds > 1"):
        rg.at(model, 1)
