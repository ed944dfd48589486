"""Solvers for influence linear problems: one interface, three families.

- ``krylov``: CGLS for least-squares problems (GIF), MINRES for symmetric, possibly
  indefinite ones (FIF, PIF, IF). No scale to tune, monotone residuals, far fewer HVPs.
- ``lissa``: the GIF paper's modified LiSSA, a Neumann iteration on the normal equations
  AᵀA x = Aᵀb, which converges for any symmetric H once the scale c² exceeds λ_max(AᵀA)/2.
  ``variant="classic"`` is Koh & Liang's iteration on A itself (diverges if H is indefinite).
- ``dense``: explicit float64 algebra, the reference (see ``solve_dense``).

Every solver returns ``(x, SolveReport)`` and never hides non-convergence.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_influence import vectors as V
from lightning_influence.estimators import LinearProblem
from lightning_influence.vectors import ParamDict

SOLVERS = ("krylov", "lissa", "dense")
Progress = Callable[[int, float], None]


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at ``max_iter`` before reaching its tolerance."""


@dataclass
class SolveReport:
    """What a solve cost and how far it got."""

    solver: str
    method: str
    iterations: int = 0
    hvps: int = 0
    residual: float = float("nan")
    converged: bool = False
    seconds: float = 0.0
    scale: float | None = None
    restarts: int = 0
    message: str = ""
    history: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "history"}
        return d


def _warn_not_converged(report: SolveReport, tol: float) -> None:
    report.message = (
        f"{report.solver}/{report.method} stopped after {report.iterations} iterations at relative "
        f"residual {report.residual:.3g} > tol={tol:g}: raise max_iter or loosen tol"
    )
    warnings.warn(report.message, ConvergenceWarning, stacklevel=3)


# --------------------------------------------------------------------------- krylov


def cgls(
    problem: LinearProblem, tol: float = 1e-6, max_iter: int = 500, progress: Progress | None = None
) -> tuple[ParamDict, SolveReport]:
    """CGLS: conjugate gradients on (AᵀA + λI) x = Aᵀb without forming AᵀA (stable CGNR).

    Minimises ‖A x − b‖² + λ‖x‖² (λ = ``problem.damping``) over growing Krylov spaces from
    x₀ = 0, so with λ = 0 it reaches the minimum-norm least-squares solution; the residual
    reported is ‖Aᵀr − λx‖ / ‖Aᵀb‖.
    """
    lam = problem.damping
    report = SolveReport("krylov", "cgls")
    x = V.zeros_like(problem.rhs)
    r = V.clone(problem.rhs)
    s = problem.rmatvec(r)
    report.hvps += 1
    p = V.clone(s)
    gamma = V.dot(s, s).item()
    gamma0 = gamma
    if gamma0 == 0.0:
        report.residual, report.converged, report.message = 0.0, True, "Aᵀb = 0: the solution is 0"
        return x, report
    for it in range(1, max_iter + 1):
        q = problem.matvec(p)
        qq = V.dot(q, q).item() + (lam * V.dot(p, p).item() if lam else 0.0)
        report.hvps += 1
        if qq == 0.0 or not math.isfinite(qq):
            report.message = "breakdown: A p = 0"
            break
        alpha = gamma / qq
        x = V.add(x, p, alpha)
        r = V.add(r, q, -alpha)
        s = problem.rmatvec(r)
        if lam:
            s = V.add(s, x, -lam)
        report.hvps += 1
        gamma_new = V.dot(s, s).item()
        report.iterations = it
        report.residual = math.sqrt(gamma_new / gamma0)
        report.history.append(report.residual)
        if progress:
            progress(it, report.residual)
        if report.residual <= tol:
            report.converged = True
            break
        p = V.add(s, p, gamma_new / gamma)
        gamma = gamma_new
    return problem.project(x), report


def minres(
    problem: LinearProblem, tol: float = 1e-6, max_iter: int = 500, progress: Progress | None = None
) -> tuple[ParamDict, SolveReport]:
    """MINRES (Paige & Saunders) for symmetric, possibly indefinite A.

    Minimises ‖b − A x‖ over the Krylov space; the residual reported is ‖b − A x‖/‖b‖. For a
    singular, inconsistent system it stops once ‖A r‖ / (‖A‖ ‖r‖) ≤ tol (a least-squares point).
    """
    if not problem.symmetric:
        raise ValueError(
            "MINRES needs a symmetric operator; use CGLS for GIF's least-squares problem."
        )
    report = SolveReport("krylov", "minres")
    b = problem.rhs
    x = V.zeros_like(b)
    bnorm = V.norm(b).item()
    if bnorm == 0.0:
        report.residual, report.converged, report.message = 0.0, True, "b = 0: the solution is 0"
        return x, report
    eps = torch.finfo(next(iter(b.values())).dtype).eps
    r1 = V.clone(b)
    r2 = r1
    y = r1
    beta1 = bnorm
    oldb, beta, dbar, epsln, phibar = 0.0, beta1, 0.0, 0.0, beta1
    tnorm2, cs, sn = 0.0, -1.0, 0.0
    w = V.zeros_like(b)
    w2 = V.zeros_like(b)
    for it in range(1, max_iter + 1):
        v = V.scale(y, 1.0 / beta)
        y = problem.matvec(v)
        report.hvps += 1
        if it >= 2:
            y = V.add(y, r1, -beta / oldb)
        alfa = V.dot(v, y).item()
        y = V.add(y, r2, -alfa / beta)
        r1, r2 = r2, y
        oldb = beta
        beta = V.norm(r2).item()
        tnorm2 += alfa**2 + oldb**2 + beta**2
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        root = math.hypot(gbar, dbar)
        arnorm = phibar * root
        gamma = max(math.hypot(gbar, beta), eps)
        cs, sn = gbar / gamma, beta / gamma
        phi = cs * phibar
        phibar = sn * phibar
        w1, w2 = w2, w
        w = V.scale(V.add(V.add(v, w1, -oldeps), w2, -delta), 1.0 / gamma)
        x = V.add(x, w, phi)
        if not math.isfinite(phibar):
            report.message = "non-finite residual: the operator returned NaN/inf"
            break
        report.iterations = it
        report.residual = phibar / bnorm
        report.history.append(report.residual)
        if progress:
            progress(it, report.residual)
        anorm = math.sqrt(tnorm2)
        if report.residual <= tol:
            report.converged = True
            break
        if phibar > 0 and arnorm / (anorm * phibar) <= tol:
            report.converged = True
            report.message = "least-squares solution: A is singular and b outside its range"
            break
        if beta <= eps * anorm:
            report.converged = True
            report.message = "Krylov space exhausted"
            break
    return problem.project(x), report


def solve_krylov(
    problem: LinearProblem,
    tol: float = 1e-6,
    max_iter: int = 500,
    method: str = "auto",
    progress: Progress | None = None,
) -> tuple[ParamDict, SolveReport]:
    """CGLS for non-symmetric (GIF) problems, MINRES for symmetric ones; ``method`` overrides."""
    if method == "auto":
        method = "minres" if problem.symmetric else "cgls"
    if method not in ("cgls", "minres"):
        raise ValueError(f"Unknown krylov method {method!r}: choose 'auto', 'cgls' or 'minres'.")
    start = time.perf_counter()
    fn = cgls if method == "cgls" else minres
    x, report = fn(problem, tol=tol, max_iter=max_iter, progress=progress)
    report.seconds = time.perf_counter() - start
    if not report.converged:
        _warn_not_converged(report, tol)
    return x, report


# --------------------------------------------------------------------------- lissa


def _power_iteration(
    apply: Callable[[ParamDict], ParamDict], like: ParamDict, iters: int, seed: int
) -> tuple[float, int]:
    """Estimate the largest eigenvalue of a symmetric PSD operator; returns (λ, mat-vecs used)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = {
        k: torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device) for k, t in like.items()
    }
    lam = 0.0
    for _ in range(iters):
        nv = V.norm(v).item()
        if nv == 0.0 or not math.isfinite(nv):
            break
        v = V.scale(v, 1.0 / nv)
        av = apply(v)
        lam = V.dot(v, av).item()
        v = av
    return abs(lam), iters


def lissa(
    problem: LinearProblem,
    tol: float = 1e-6,
    max_iter: int = 10_000,
    variant: str = "modified",
    scale: float | None = None,
    scale_step: float | None = None,
    scale_growth: float = 2.0,
    max_restarts: int = 10,
    power_iters: int = 20,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[ParamDict, SolveReport]:
    """Neumann-series solve x_{k+1} = x_k + (c − N x_k)/s² with divergence restarts.

    ``modified`` (the GIF paper's): N = AᵀA, c = Aᵀb; converges for any H once s² > λ_max(N)/2.
    ``classic`` (Koh & Liang): N = A, c = b (A symmetric); diverges when H is indefinite.
    ``scale`` is s (None: from power iteration on N). On divergence (a residual rising above
    1.5× its best, or NaN) the iteration restarts with s + ``scale_step`` (the paper's
    schedule) or s × ``scale_growth``. The residual reported is ‖c − N x‖ / ‖c‖.
    """
    if variant not in ("modified", "classic"):
        raise ValueError(f"Unknown LiSSA variant {variant!r}: choose 'modified' or 'classic'.")
    if variant == "classic" and not problem.symmetric:
        raise ValueError(
            "Classic LiSSA needs a symmetric system (fif/pif/if); GIF needs variant='modified'."
        )
    start = time.perf_counter()
    report = SolveReport("lissa", variant)
    hvps_per = 2 if variant == "modified" else 1

    def apply_n(v: ParamDict) -> ParamDict:
        if variant == "modified":
            n = problem.rmatvec(problem.matvec(v))
            return V.add(n, v, problem.damping) if problem.damping else n
        return problem.matvec(v)

    if variant == "modified":
        c = problem.rmatvec(problem.rhs)
        report.hvps += 1
    else:
        c = dict(problem.rhs)
    cnorm = V.norm(c).item()
    x = V.zeros_like(c)
    if cnorm == 0.0:
        report.residual, report.converged, report.message = 0.0, True, "right-hand side is 0"
        report.seconds = time.perf_counter() - start
        return problem.project(x), report
    if scale is None:
        lam, used = _power_iteration(apply_n, c, power_iters, seed)
        report.hvps += used * hvps_per
        # s² = λ_est keeps the spectrum of N/s² inside (−1, 1] even if power iteration
        # underestimates λ_max by up to 2×; the optimum would be (λ_max+λ_min)/2.
        scale = math.sqrt(max(lam, 1e-30)) * 1.05
    total_iters = 0
    while True:
        x = V.zeros_like(c)
        best = float("inf")
        diverged = False
        inv_s2 = 1.0 / scale**2
        while total_iters < max_iter:
            nx = apply_n(x)
            report.hvps += hvps_per
            resid = V.add(c, nx, -1.0)
            rel = V.norm(resid).item() / cnorm
            total_iters += 1
            report.iterations = total_iters
            report.residual = rel
            report.history.append(rel)
            if progress:
                progress(total_iters, rel)
            if not math.isfinite(rel) or rel > 1.5 * best:
                diverged = True
                break
            best = min(best, rel)
            if rel <= tol:
                report.converged = True
                break
            x = V.add(x, resid, inv_s2)
        if not diverged or report.restarts >= max_restarts or total_iters >= max_iter:
            break
        report.restarts += 1
        scale = scale + scale_step if scale_step else scale * scale_growth
    report.scale = scale
    report.seconds = time.perf_counter() - start
    if diverged:
        report.converged = False
        report.message = (
            f"LiSSA ({variant}) diverged after {report.restarts} restarts (scale {scale:.3g}); "
            + (
                "the Hessian is likely indefinite: use variant='modified' or solver='krylov'"
                if variant == "classic"
                else "raise max_restarts or scale"
            )
        )
        warnings.warn(report.message, ConvergenceWarning, stacklevel=2)
    elif not report.converged:
        _warn_not_converged(report, tol)
    return problem.project(x), report


# --------------------------------------------------------------------------- dense


def solve_dense(
    estimator: str, H: Tensor, g: Tensor, selected: Tensor, damping: float = 0.0
) -> tuple[Tensor, SolveReport]:
    """Closed forms of method.md §2 on the explicit float64 Hessian (flat vectors).

    Least squares via ``gelsd`` gives the minimum-norm solution when the system is singular,
    the same point the Krylov solvers reach from x₀ = 0.
    """
    start = time.perf_counter()
    report = SolveReport("dense", "lstsq")
    x = torch.zeros_like(g)
    if damping and estimator != "gif":
        H = H + damping * torch.eye(H.shape[0], dtype=H.dtype)
    idx = selected.nonzero().squeeze(1)

    def lstsq(A: Tensor, b: Tensor) -> Tensor:
        return torch.linalg.lstsq(A, b.unsqueeze(1), driver="gelsd").solution.squeeze(1)

    if estimator == "gif":
        A = H[:, idx]
        if damping:
            N = A.T @ A + damping * torch.eye(len(idx), dtype=H.dtype)
            x[idx] = lstsq(N, A.T @ g)
            num, den = N @ x[idx] - A.T @ g, A.T @ g
        else:
            x[idx] = lstsq(A, g)
            num, den = A.T @ (A @ x[idx] - g), A.T @ g
    elif estimator == "fif":
        A = H[idx][:, idx]
        x[idx] = lstsq(A, g[idx])
        num, den = A @ x[idx] - g[idx], g[idx]
    elif estimator in ("if", "pif"):
        full = lstsq(H, g)
        num, den = H @ full - g, g
        x = full if estimator == "if" else torch.where(selected, full, torch.zeros_like(full))
    else:
        raise ValueError(f"Unknown estimator {estimator!r}.")
    dn = den.norm().item()
    report.residual = num.norm().item() / dn if dn > 0 else 0.0
    report.converged = True
    report.seconds = time.perf_counter() - start
    return x, report


def as_masks(
    selection: Mapping[str, Tensor] | None, like: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Full boolean masks for every parameter (``None`` = everything selected)."""
    return {
        k: (
            torch.ones_like(t, dtype=torch.bool)
            if selection is None
            else selection.get(k, torch.zeros_like(t, dtype=torch.bool)).to(t.device)
        )
        for k, t in like.items()
    }
