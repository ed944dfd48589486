"""Influence estimators as linear problems over the Hessian operator (method.md §2).

Each estimator becomes a ``LinearProblem``: an operator ``A`` (mat-vec and its adjoint) and
a right-hand side ``b``; every solver then minimises ``‖A x − b‖``.

| estimator | A            | b     | solution                                  |
|-----------|--------------|-------|-------------------------------------------|
| ``gif``   | H P (n × |S|)| g     | argmin ‖H_{:,S} x − g‖ (least squares)     |
| ``fif``   | P H P        | P g   | H_SS⁻¹ g_S                                 |
| ``pif``   | H            | g     | [H⁻¹ g]_S (mask applied after the solve)   |
| ``if``    | H            | g     | H⁻¹ g over all parameters                  |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from lightning_influence.curvature import HessianOperator
from lightning_influence.vectors import ParamDict, mask

ESTIMATORS = ("gif", "fif", "pif", "if")


@dataclass
class LinearProblem:
    """min_x ‖A x − b‖ with x supported on ``domain`` (None: every parameter)."""

    matvec: Callable[[Mapping[str, Tensor]], ParamDict]
    rmatvec: Callable[[Mapping[str, Tensor]], ParamDict]
    rhs: ParamDict
    symmetric: bool
    domain: Mapping[str, Tensor] | None
    hvps_per_matvec: int = 1
    damping: float = 0.0  # Tikhonov term λ‖x‖² of least-squares (GIF) problems

    def project(self, x: Mapping[str, Tensor]) -> ParamDict:
        return mask(x, self.domain)


def build_problem(
    estimator: str,
    op: HessianOperator,
    g: ParamDict,
    selection: Mapping[str, Tensor] | None,
    damping: float = 0.0,
) -> tuple[LinearProblem, Mapping[str, Tensor] | None]:
    """The linear problem for ``estimator`` and the mask to apply to its solution.

    ``damping`` λ ≥ 0 regularises ill-conditioned systems: for ``gif`` it is Tikhonov,
    min ‖H_{:,S} x − g‖² + λ‖x‖² (normal equations (H²)_SS + λI); for the symmetric
    estimators it is Koh & Liang's H + λI.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}.")
    if estimator != "gif" and damping > 0:
        base = op.matvec

        def damped(v: Mapping[str, Tensor]) -> ParamDict:
            return {k: t + damping * v[k] for k, t in base(v).items()}

        op = _Damped(damped)
    if estimator == "gif":
        problem = LinearProblem(
            matvec=lambda x: op.matvec(mask(x, selection)),
            rmatvec=lambda r: mask(op.matvec(r), selection),
            rhs=dict(g),
            symmetric=False,
            domain=selection,
            damping=damping,
        )
        return problem, selection
    if estimator == "fif":

        def sym(x: Mapping[str, Tensor]) -> ParamDict:
            return mask(op.matvec(mask(x, selection)), selection)

        return LinearProblem(sym, sym, mask(g, selection), True, selection), selection
    if estimator in ("pif", "if"):
        problem = LinearProblem(op.matvec, op.matvec, dict(g), True, None)
        return problem, (selection if estimator == "pif" else None)
    raise ValueError(f"Unknown estimator {estimator!r}: choose one of {ESTIMATORS}.")


@dataclass
class _Damped:
    """A stand-in operator whose mat-vec is H v + λ v (HVP counting stays on H)."""

    matvec: Callable[[Mapping[str, Tensor]], ParamDict]
