"""Solvers for linear systems over parameter-dict operators: one interface, three families.

A solver takes an operator ``A`` (a :class:`~lightning_influence.solve.operators.ParamOperator`),
a right-hand side ``b`` and the system's kind, and knows nothing about influence estimators:

- ``kind="least_squares"``: min_x ‖A x − b‖² + λ‖x‖² (λ = ``damping``, Tikhonov).
- ``kind="symmetric"``: A x = b for a symmetric, possibly indefinite and singular, A.

Families:

- ``krylov``: CGLS for least squares, MINRES for symmetric systems. No scale to tune,
  monotone residuals, far fewer mat-vecs than LiSSA.
- ``lissa``: the modified LiSSA of the GIF paper, a Neumann iteration on the normal equations
  AᵀA x = Aᵀb, which converges for any symmetric H once the scale s² exceeds λ_max(AᵀA)/2.
  ``variant="classic"`` is Koh & Liang's iteration on A itself (diverges if A is indefinite).
- ``dense``: the operator materialised as a matrix and solved by minimum-norm least squares
  (``gelsd``), the float64 reference for tiny models.

Every solver returns ``(x, SolveReport)`` and never hides non-convergence.
:class:`InverseOperator` makes any of them an operator (as curvlinops' ``inverse.py``):
``A⁻¹ @ b`` is one solve, and its report is kept.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

import torch
from torch import Tensor

from lightning_influence.solve import vectors as V
from lightning_influence.solve.operators import IdentityOperator, ParamOperator
from lightning_influence.solve.vectors import Masks, ParamDict
from lightning_influence.unlearn.settings import SolverName

SOLVERS: tuple[str, ...] = get_args(SolverName)
LEAST_SQUARES = "least_squares"
SYMMETRIC = "symmetric"
KINDS = (LEAST_SQUARES, SYMMETRIC)
Progress = Callable[[int, float], None]


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at ``max_iter`` (or diverged) before reaching its tolerance."""


@dataclass
class SolveReport:
    """What a solve cost and how far it got.

    Args:
        solver: the solver family (``krylov``, ``lissa`` or ``dense``).
        method: the method within it (``cgls``, ``minres``, ``modified``, ``classic``, ``lstsq``).
        iterations: iterations run (LiSSA: over all restarts).
        hvps: mat-vecs with the operator (``li.influence`` reports Hessian-vector products).
        residual: the final relative residual (see each solver for which one).
        converged: whether the tolerance was reached.
        seconds: wall-clock time.
        scale: LiSSA's final scale s.
        restarts: LiSSA's restarts after divergence.
        message: why the solver stopped, when that is worth saying.
        history: the relative residual per iteration.
    """

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
        """The report's fields, without the residual history."""
        return {k: v for k, v in self.__dict__.items() if k != "history"}


def solve(
    solver: str,
    operator: ParamOperator,
    rhs: Mapping[str, Tensor],
    kind: str,
    damping: float = 0.0,
    domain: Masks | None = None,
    **options: Any,
) -> tuple[ParamDict, SolveReport]:
    """Solve one linear system with the named solver.

    Args:
        solver: ``krylov``, ``lissa`` or ``dense``.
        operator: the operator ``A``.
        rhs: the right-hand side ``b``.
        kind: ``least_squares`` (min ‖A x − b‖² + λ‖x‖²) or ``symmetric`` (A x = b).
        damping: the Tikhonov λ ≥ 0 of a least-squares system (a symmetric system carries
            its damping in the operator, as A + λI).
        domain: the coordinates x may use (``None``: all); only the dense solver needs it, to
            materialise just those columns (Krylov and LiSSA iterates lie in the range of Aᵀ,
            which the estimators' systems keep inside the domain).
        **options: the solver's options (``tol``, ``max_iter``, ``method``, ``variant``,
            ``scale``, ``progress`` ...); the dense solver has none and ignores them.

    Returns:
        The solution and its :class:`SolveReport`.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown system kind {kind!r}: choose one of {KINDS}.")
    if damping < 0 or (damping and kind != LEAST_SQUARES):
        raise ValueError(
            f"damping={damping}: the solvers' damping is the Tikhonov λ >= 0 of a least-squares "
            "system; damp a symmetric system in its operator (A + λI)."
        )
    if solver == "krylov":
        return solve_krylov(operator, rhs, kind, damping, **options)
    if solver == "lissa":
        return lissa(operator, rhs, kind, damping, **options)
    if solver == "dense":
        return solve_dense(operator, rhs, kind, damping, domain)
    raise ValueError(f"Unknown solver {solver!r}: choose one of {SOLVERS}.")


class InverseOperator(ParamOperator):
    """A solver as an operator: ``inv @ b`` solves the system of ``operator`` for ``b``.

    The estimators' systems (unlearning) and the exact curvatures' inverses (influence
    scores) are the same object; ``last_report`` holds the most recent solve's report.

    Args:
        operator: the operator ``A``.
        solver: ``krylov``, ``lissa`` or ``dense``.
        kind: ``least_squares`` (then ``inv @ b`` is the Tikhonov-damped least-squares
            solution, not a symmetric inverse) or ``symmetric``.
        damping: the Tikhonov λ of a least-squares system.
        domain: the coordinates the solution may use (``None``: all).
        **options: the solver's options (``tol``, ``max_iter``, ...).
    """

    def __init__(
        self,
        operator: ParamOperator,
        solver: str = "krylov",
        kind: str = SYMMETRIC,
        damping: float = 0.0,
        domain: Masks | None = None,
        **options: Any,
    ) -> None:
        self.operator, self.solver, self.kind = operator, solver, kind
        self.damping, self.domain, self.options = damping, domain, options
        self.symmetric = kind == SYMMETRIC and operator.symmetric
        self.last_report: SolveReport | None = None

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        x, self.last_report = solve(
            self.solver,
            self.operator,
            v,
            self.kind,
            damping=self.damping,
            domain=self.domain,
            **self.options,
        )
        return x


def _record(report: SolveReport, iteration: int, residual: float, progress: Progress | None):
    report.iterations = iteration
    report.residual = residual
    report.history.append(residual)
    if progress:
        progress(iteration, residual)


def _warn_not_converged(report: SolveReport, tol: float) -> None:
    report.message = (
        f"{report.solver}/{report.method} stopped after {report.iterations} iterations at relative "
        f"residual {report.residual:.3g} > tol={tol:g}: raise max_iter or loosen tol"
    )
    warnings.warn(report.message, ConvergenceWarning, stacklevel=4)


# --------------------------------------------------------------------------- krylov


def cgls(
    A: ParamOperator,
    b: Mapping[str, Tensor],
    damping: float = 0.0,
    tol: float = 1e-6,
    max_iter: int = 500,
    progress: Progress | None = None,
) -> tuple[ParamDict, SolveReport]:
    """CGLS: conjugate gradients on (AᵀA + λI) x = Aᵀb without forming AᵀA (stable CGNR).

    Minimises ‖A x − b‖² + λ‖x‖² over growing Krylov spaces from x₀ = 0, so with λ = 0 it
    reaches the minimum-norm least-squares solution; the residual reported is
    ‖Aᵀr − λx‖ / ‖Aᵀb‖ (r = b − A x), the normal-equation residual.

    Args:
        A: the operator (any; its adjoint ``A.T`` is used).
        b: the right-hand side.
        damping: the Tikhonov λ ≥ 0.
        tol: stop once the relative residual is at most this.
        max_iter: the most iterations (2 mat-vecs each).
        progress: called as ``progress(iteration, residual)``.
    """
    lam, At = damping, A.T
    report = SolveReport("krylov", "cgls")
    x, r = V.zeros_like(b), V.clone(b)
    s = At @ r
    report.hvps += 1
    p = V.clone(s)
    gamma0 = gamma = V.dot(s, s).item()
    if gamma0 == 0.0:
        report.residual, report.converged, report.message = 0.0, True, "Aᵀb = 0: the solution is 0"
        return x, report
    for it in range(1, max_iter + 1):
        q = A @ p
        qq = V.dot(q, q).item() + (lam * V.dot(p, p).item() if lam else 0.0)
        report.hvps += 1
        if qq == 0.0 or not math.isfinite(qq):
            report.message = "breakdown: A p = 0"
            break
        alpha = gamma / qq
        x, r = V.add(x, p, alpha), V.add(r, q, -alpha)
        s = At @ r
        if lam:
            s = V.add(s, x, -lam)
        report.hvps += 1
        gamma_new = V.dot(s, s).item()
        _record(report, it, math.sqrt(gamma_new / gamma0), progress)
        if report.residual <= tol:
            report.converged = True
            break
        p = V.add(s, p, gamma_new / gamma)
        gamma = gamma_new
    return x, report


class _MinresState:
    """The vectors and Givens-rotation scalars of a MINRES run (Paige & Saunders)."""

    def __init__(self, b: ParamDict, bnorm: float) -> None:
        self.x, self.w, self.w2 = V.zeros_like(b), V.zeros_like(b), V.zeros_like(b)
        self.r1 = self.r2 = self.y = V.clone(b)  # never updated in place
        self.oldb, self.beta, self.dbar, self.epsln, self.phibar = 0.0, bnorm, 0.0, 0.0, bnorm
        self.tnorm2, self.cs, self.sn, self.arnorm = 0.0, -1.0, 0.0, 0.0
        self.eps = torch.finfo(next(iter(b.values())).dtype).eps

    def step(self, A: ParamOperator, first: bool) -> None:
        """One Lanczos step and the QR update of the tridiagonal system."""
        v = V.scale(self.y, 1.0 / self.beta)
        y = A @ v
        if not first:
            y = V.add(y, self.r1, -self.beta / self.oldb)
        alfa = V.dot(v, y).item()
        y = V.add(y, self.r2, -alfa / self.beta)
        self.r1, self.r2, self.y = self.r2, y, y
        self.oldb, self.beta = self.beta, V.norm(y).item()
        self.tnorm2 += alfa**2 + self.oldb**2 + self.beta**2
        oldeps = self.epsln
        delta = self.cs * self.dbar + self.sn * alfa
        gbar = self.sn * self.dbar - self.cs * alfa
        self.epsln, self.dbar = self.sn * self.beta, -self.cs * self.beta
        self.arnorm = self.phibar * math.hypot(gbar, self.dbar)
        gamma = max(math.hypot(gbar, self.beta), self.eps)
        self.cs, self.sn = gbar / gamma, self.beta / gamma
        phi, self.phibar = self.cs * self.phibar, self.sn * self.phibar
        w1, self.w2 = self.w2, self.w
        self.w = V.scale(V.add(V.add(v, w1, -oldeps), self.w2, -delta), 1.0 / gamma)
        self.x = V.add(self.x, self.w, phi)

    def stop_reason(self, residual: float, tol: float) -> str | None:
        """Why to stop as converged (``""``: the tolerance was met), else ``None``."""
        anorm = math.sqrt(self.tnorm2)
        if residual <= tol:
            return ""
        if self.phibar > 0 and self.arnorm / (anorm * self.phibar) <= tol:
            return "least-squares solution: A is singular and b outside its range"
        if self.beta <= self.eps * anorm:
            return "Krylov space exhausted"
        return None


def minres(
    A: ParamOperator,
    b: Mapping[str, Tensor],
    tol: float = 1e-6,
    max_iter: int = 500,
    progress: Progress | None = None,
) -> tuple[ParamDict, SolveReport]:
    """MINRES (Paige & Saunders) for symmetric, possibly indefinite A.

    Minimises ‖b − A x‖ over the Krylov space; the residual reported is ‖b − A x‖/‖b‖. For a
    singular, inconsistent system it stops once ‖A r‖ / (‖A‖ ‖r‖) ≤ tol (a least-squares point).

    Args:
        A: a symmetric operator (``A.symmetric`` must be true).
        b: the right-hand side.
        tol: stop once the relative residual is at most this.
        max_iter: the most iterations (1 mat-vec each).
        progress: called as ``progress(iteration, residual)``.
    """
    if not A.symmetric:
        raise ValueError("MINRES needs a symmetric operator; use CGLS for a least-squares system.")
    report = SolveReport("krylov", "minres")
    bnorm = V.norm(b).item()
    if bnorm == 0.0:
        report.residual, report.converged, report.message = 0.0, True, "b = 0: the solution is 0"
        return V.zeros_like(b), report
    state = _MinresState(dict(b), bnorm)
    for it in range(1, max_iter + 1):
        state.step(A, first=it == 1)
        report.hvps += 1
        if not math.isfinite(state.phibar):
            report.message = "non-finite residual: the operator returned NaN/inf"
            break
        _record(report, it, state.phibar / bnorm, progress)
        reason = state.stop_reason(report.residual, tol)
        if reason is not None:
            report.converged, report.message = True, reason
            break
    return state.x, report


def solve_krylov(
    A: ParamOperator,
    b: Mapping[str, Tensor],
    kind: str = SYMMETRIC,
    damping: float = 0.0,
    tol: float = 1e-6,
    max_iter: int = 500,
    method: str = "auto",
    progress: Progress | None = None,
) -> tuple[ParamDict, SolveReport]:
    """CGLS for least-squares systems, MINRES for symmetric ones; ``method`` overrides.

    Args:
        A: the operator.
        b: the right-hand side.
        kind: ``least_squares`` or ``symmetric``.
        damping: the Tikhonov λ of a least-squares system (CGLS only).
        tol: the relative residual to reach.
        max_iter: the most iterations.
        method: ``auto``, ``cgls`` (any system, solved in the least-squares sense) or
            ``minres`` (symmetric systems only).
        progress: called as ``progress(iteration, residual)``.

    Returns:
        The solution and its report; a :class:`ConvergenceWarning` when ``tol`` is not met.
    """
    if method == "auto":
        method = "cgls" if kind == LEAST_SQUARES else "minres"
    if method not in ("cgls", "minres"):
        raise ValueError(f"Unknown krylov method {method!r}: choose 'auto', 'cgls' or 'minres'.")
    if method == "minres" and kind == LEAST_SQUARES:
        raise ValueError("MINRES solves symmetric systems; a least-squares system needs CGLS.")
    start = time.perf_counter()
    if method == "cgls":
        x, report = cgls(A, b, damping, tol=tol, max_iter=max_iter, progress=progress)
    else:
        x, report = minres(A, b, tol=tol, max_iter=max_iter, progress=progress)
    report.seconds = time.perf_counter() - start
    if not report.converged:
        _warn_not_converged(report, tol)
    return x, report


# --------------------------------------------------------------------------- lissa


def _power_iteration(
    N: ParamOperator, like: Mapping[str, Tensor], iters: int, seed: int
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
        av = N @ v
        lam = V.dot(v, av).item()
        v = av
    return abs(lam), iters


def _initial_scale(
    N: ParamOperator, c: ParamDict, iters: int, seed: int, report: SolveReport, hvps_per: int
) -> float:
    """s from power iteration: s² = 1.1 λ_est keeps the spectrum of N/s² inside (−1, 1] even
    if power iteration underestimates λ_max by up to 2× (the optimum is (λ_max + λ_min)/2)."""
    lam, used = _power_iteration(N, c, iters, seed)
    report.hvps += used * hvps_per
    return math.sqrt(max(lam, 1e-30)) * 1.05


def _lissa_system(
    A: ParamOperator, b: Mapping[str, Tensor], kind: str, damping: float, variant: str
) -> tuple[ParamOperator, ParamDict]:
    """The (N, c) LiSSA iterates on: (AᵀA + λI, Aᵀb) when modified, (A, b) when classic."""
    if variant not in ("modified", "classic"):
        raise ValueError(f"Unknown LiSSA variant {variant!r}: choose 'modified' or 'classic'.")
    if variant == "classic":
        if kind != SYMMETRIC or not A.symmetric:
            raise ValueError(
                "Classic LiSSA iterates on A itself and needs a symmetric system; use "
                "variant='modified' for a least-squares system."
            )
        return A, dict(b)
    normal = A.T @ A
    if damping:
        normal = normal + damping * IdentityOperator()
    return normal, A.T @ b


def _neumann_run(
    N: ParamOperator,
    c: ParamDict,
    inv_s2: float,
    tol: float,
    max_iter: int,
    report: SolveReport,
    progress: Progress | None,
    hvps_per: int,
) -> tuple[ParamDict, bool]:
    """x ← x + (c − N x)/s² from 0 until tol, max_iter or divergence; returns (x, diverged)."""
    cnorm = V.norm(c).item()
    x, best = V.zeros_like(c), float("inf")
    while report.iterations < max_iter:
        resid = V.add(c, N @ x, -1.0)
        report.hvps += hvps_per
        _record(report, report.iterations + 1, V.norm(resid).item() / cnorm, progress)
        if not math.isfinite(report.residual) or report.residual > 1.5 * best:
            return x, True
        best = min(best, report.residual)
        if report.residual <= tol:
            report.converged = True
            return x, False
        x = V.add(x, resid, inv_s2)
    return x, False


def lissa(
    A: ParamOperator,
    b: Mapping[str, Tensor],
    kind: str = SYMMETRIC,
    damping: float = 0.0,
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

    ``modified`` (the GIF paper's): N = AᵀA + λI, c = Aᵀb; converges for any symmetric or
    least-squares system once s² > λ_max(N)/2. ``classic`` (Koh & Liang): N = A, c = b for a
    symmetric A; diverges when A is indefinite. On divergence (a residual rising above 1.5×
    its best, or NaN) the iteration restarts from 0 with s + ``scale_step`` (the paper's
    schedule) or s × ``scale_growth``. The residual reported is ‖c − N x‖ / ‖c‖.

    Args:
        A: the operator.
        b: the right-hand side.
        kind: ``least_squares`` or ``symmetric``.
        damping: the Tikhonov λ of a least-squares system.
        tol: the relative residual to reach.
        max_iter: the most iterations over all restarts.
        variant: ``modified`` or ``classic``.
        scale: the scale s (``None``: from ``power_iters`` power iterations on N).
        scale_step: add this to s on each restart (``None``: multiply by ``scale_growth``).
        scale_growth: the factor on s on each restart when ``scale_step`` is ``None``.
        max_restarts: the most restarts after divergence.
        power_iters: power iterations for the automatic scale.
        seed: seeds the power iteration's start vector.
        progress: called as ``progress(iteration, residual)``.
    """
    start = time.perf_counter()
    N, c = _lissa_system(A, b, kind, damping, variant)
    report = SolveReport("lissa", variant)
    hvps_per = 2 if variant == "modified" else 1
    report.hvps = 1 if variant == "modified" else 0  # c = Aᵀb
    if V.norm(c).item() == 0.0:
        report.residual, report.converged, report.message = 0.0, True, "right-hand side is 0"
        report.seconds = time.perf_counter() - start
        return V.zeros_like(c), report
    if scale is None:
        scale = _initial_scale(N, c, power_iters, seed, report, hvps_per)
    while True:
        x, diverged = _neumann_run(N, c, scale**-2, tol, max_iter, report, progress, hvps_per)
        if not diverged or report.restarts >= max_restarts or report.iterations >= max_iter:
            break
        report.restarts += 1
        scale = scale + scale_step if scale_step else scale * scale_growth
    report.scale, report.seconds = scale, time.perf_counter() - start
    _report_lissa_outcome(report, diverged, variant, tol)
    return x, report


def _report_lissa_outcome(report: SolveReport, diverged: bool, variant: str, tol: float) -> None:
    if diverged:
        report.converged = False
        report.message = (
            f"LiSSA ({variant}) diverged after {report.restarts} restarts (scale "
            f"{report.scale:.3g}); "
            + (
                "the operator is likely indefinite: use variant='modified' or solver='krylov'"
                if variant == "classic"
                else "raise max_restarts or scale"
            )
        )
        warnings.warn(report.message, ConvergenceWarning, stacklevel=4)
    elif not report.converged:
        _warn_not_converged(report, tol)


# --------------------------------------------------------------------------- dense


def solve_dense(
    A: ParamOperator,
    b: Mapping[str, Tensor],
    kind: str = SYMMETRIC,
    damping: float = 0.0,
    domain: Masks | None = None,
) -> tuple[ParamDict, SolveReport]:
    """Materialise ``A`` on the ``domain`` columns and solve by minimum-norm least squares.

    ``gelsd`` gives the minimum-norm solution when the system is singular, the same point the
    Krylov solvers reach from x₀ = 0. Only for tiny models: it costs one mat-vec per domain
    coordinate (one matrix product for a dense operator). The residual reported is the
    normal-equation one for least squares (as CGLS), ‖A x − b‖/‖b‖ for symmetric systems.

    Args:
        A: the operator.
        b: the right-hand side; fixes the layout, dtype and device of the matrix.
        kind: ``least_squares`` (min ‖A x − b‖² + λ‖x‖²) or ``symmetric`` (A x = b).
        damping: the Tikhonov λ of a least-squares system.
        domain: the coordinates x may use (``None``: all); x is zero elsewhere.
    """
    start = time.perf_counter()
    report = SolveReport("dense", "lstsq")
    columns = V.flatten(V.as_masks(domain, b)).nonzero().squeeze(1)
    M = A.to_matrix(b, columns)
    rhs = V.flatten(b).to(M.dtype)
    if kind == LEAST_SQUARES:
        y, num, den = _dense_least_squares(M, rhs, damping)
    else:
        y = _lstsq(M, rhs)
        num, den = M @ y - rhs, rhs
    x = torch.zeros_like(rhs)
    x[columns] = y
    dn = den.norm().item()
    report.residual = num.norm().item() / dn if dn > 0 else 0.0
    report.converged = True
    report.seconds = time.perf_counter() - start
    return V.unflatten(x, b), report


def _dense_least_squares(M: Tensor, rhs: Tensor, damping: float) -> tuple[Tensor, Tensor, Tensor]:
    """min ‖M y − rhs‖² + λ‖y‖²; returns y and the normal-equation residual's parts."""
    Mt_rhs = M.T @ rhs
    if damping:
        N = M.T @ M + damping * torch.eye(M.shape[1], dtype=M.dtype, device=M.device)
        y = _lstsq(N, Mt_rhs)
        return y, N @ y - Mt_rhs, Mt_rhs
    y = _lstsq(M, rhs)
    return y, M.T @ (M @ y - rhs), Mt_rhs


def _lstsq(M: Tensor, rhs: Tensor) -> Tensor:
    """Minimum-norm least squares by ``gelsd``; rows of M that are exactly zero are dropped
    first (they change no solution: a masked operator's unselected rows)."""
    rows = M.ne(0).any(dim=1)
    M, rhs = M[rows], rhs[rows]
    if M.device.type != "cpu":  # gelsd is CPU-only in torch
        return _lstsq(M.cpu(), rhs.cpu()).to(M.device)
    return torch.linalg.lstsq(M, rhs.unsqueeze(1), driver="gelsd").solution.squeeze(1)
