"""Tiny float64 problems with dense references for the engine tests."""

from __future__ import annotations

import torch
from torch import nn

from lightning_influence.solve import vectors as V
from lightning_influence.solve.curvature import trainable_params


def mse_onehot(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A loss without softmax's shift invariance, so H is generically invertible."""
    onehot = nn.functional.one_hot(targets, outputs.shape[1]).to(outputs.dtype)
    return ((outputs - onehot) ** 2).sum(dim=1).mean()


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bn(self.conv(x)))
        h = nn.functional.avg_pool2d(h, 2)
        return self.fc(h.flatten(1))


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = TinyCNN().double()
    with torch.no_grad():  # non-trivial running stats so eval-mode BN matters
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def data_for(model: nn.Module, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (n, 4) if isinstance(model, nn.Sequential) else (n, 1, 6, 6)
    return torch.randn(shape, generator=gen, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=gen
    )


def dense_reference(model, loss_fn, hessian_batches, forget_batches, weights=None):
    """H and g by torch.func directly on the flat parameters (independent of the package)."""
    params = {k: v.double() for k, v in trainable_params(model).items()}
    buffers = dict(model.named_buffers())
    flat = V.flatten(params)

    def mean_loss(theta, batches, w=None):
        p = V.unflatten(theta, params)
        total_n = sum(b[0].shape[0] for b in batches) if w is None else sum(wi.sum() for wi in w)
        out = 0.0
        for i, (x, y) in enumerate(batches):
            logits = torch.func.functional_call(model, ({**p, **buffers},), (x,))
            per = torch.stack([loss_fn(logits[j : j + 1], y[j : j + 1]) for j in range(x.shape[0])])
            out = out + (per.sum() if w is None else (per * w[i]).sum())
        return out / total_n

    H = torch.func.hessian(lambda t: mean_loss(t, hessian_batches, weights))(flat)
    g = torch.func.grad(lambda t: mean_loss(t, forget_batches))(flat)
    return H, g


def closed_form(
    estimator: str, H: torch.Tensor, g: torch.Tensor, sel: torch.Tensor
) -> torch.Tensor:
    """Each estimator's solution with pseudo-inverses (minimum-norm where singular).

    GIF: argmin ‖H_{:,S} x − g‖ = (H_{:,S}ᵀ H_{:,S})⁺ H_{:,S}ᵀ g on S; FIF: H_SS⁺ g_S on S;
    PIF: [H⁺ g]_S; IF: H⁺ g.
    """
    idx = sel.nonzero().squeeze(1)
    x = torch.zeros_like(g)
    if estimator == "gif":
        A = H[:, idx]
        x[idx] = torch.linalg.pinv(A.T @ A, hermitian=True) @ (A.T @ g)
    elif estimator == "fif":
        x[idx] = torch.linalg.pinv(H[idx][:, idx], hermitian=True) @ g[idx]
    else:
        full = torch.linalg.pinv(H, hermitian=True) @ g
        x = full if estimator == "if" else torch.where(sel, full, torch.zeros_like(full))
    return x


def saddle_net() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A 9-parameter tanh net at a point where H is strongly indefinite (λ ≈ −1.37 … 3.43)
    yet well conditioned (κ(H²) ≈ 450), so LiSSA runs converge within seconds."""
    torch.manual_seed(20)
    m = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    gen = torch.Generator().manual_seed(20)
    x = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=gen) * 2 - 1
    return m, (x, y)


def scalar_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs.squeeze(1) - targets.to(outputs.dtype)) ** 2).mean()


# ----------------------------------------------------------------------------- references
# Dense per-sample gradients by torch.func on the flat parameters, independent of the
# package's code (the scores' and EK-FAC's tests compare against them).


def flat_loss(model, theta, x, y, names=None):
    params = trainable_params(model)
    p = V.unflatten(theta, {k: params[k].double() for k in (names or params)})
    buffers = dict(model.named_buffers())
    fixed = {k: v for k, v in model.named_parameters() if k not in p}
    return nn.functional.cross_entropy(
        torch.func.functional_call(model, ({**fixed, **p, **buffers},), (x,)), y
    )


def ref_grads(model, x, y, names=None):
    """[n, P] per-sample gradients, one torch.func.grad call per sample."""
    params = trainable_params(model)
    theta = V.flatten({k: params[k] for k in (names or params)})
    rows = [
        torch.func.grad(lambda t, i=i: flat_loss(model, t, x[i : i + 1], y[i : i + 1], names))(
            theta
        )
        for i in range(len(y))
    ]
    return torch.stack(rows)
