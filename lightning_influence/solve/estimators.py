"""Influence estimators as linear systems built with operator algebra (the one switch).

Each estimator becomes a :class:`LinearSystem`: an operator ``A`` over the Hessian H, a
right-hand side ``b``, the system's kind and the mask applied to the solution. With
P = :class:`~lightning_influence.solve.operators.MaskOperator` of the selection S and λ the damping:

| estimator | A                 | b     | kind          | solution                                  |
|-----------|-------------------|-------|---------------|-------------------------------------------|
| ``gif``   | H P               | g     | least squares | argmin ‖H_{:,S} x − g‖² + λ‖x‖²            |
| ``fif``   | P (H + λI) P      | P g   | symmetric     | (H + λI)_SS⁻¹ g_S                          |
| ``pif``   | H + λI            | g     | symmetric     | [(H + λI)⁻¹ g]_S (mask after the solve)    |
| ``if``    | H + λI            | g     | symmetric     | (H + λI)⁻¹ g over every parameter          |

GIF (generalized influence function) moves only S but cancels the gradient change on all
parameters as far as S can; its least-squares solution exists for any symmetric H, indefinite
or singular (minimum norm from x₀ = 0). FIF treats the unselected parameters as constants;
PIF projects the full influence onto S; IF is the classic influence function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

from torch import Tensor

from lightning_influence.solve import vectors as V
from lightning_influence.solve.operators import IdentityOperator, MaskOperator, ParamOperator
from lightning_influence.solve.solvers import LEAST_SQUARES, SYMMETRIC, InverseOperator, SolveReport
from lightning_influence.solve.vectors import Masks, ParamDict
from lightning_influence.unlearn.settings import EstimatorName

ESTIMATORS: tuple[str, ...] = get_args(EstimatorName)


@dataclass
class LinearSystem:
    """What one estimator asks the solvers to solve.

    Args:
        operator: the operator ``A``.
        rhs: the right-hand side ``b``.
        kind: ``least_squares`` (min ‖A x − b‖² + λ‖x‖²) or ``symmetric`` (A x = b).
        damping: the Tikhonov λ of a least-squares system (0 for symmetric systems, whose
            damping sits in the operator).
        domain: the coordinates the solution may use (``None``: all).
        output_mask: the selection kept in the solution (``None``: all parameters).
    """

    operator: ParamOperator
    rhs: ParamDict
    kind: str
    damping: float = 0.0
    domain: Masks | None = None
    output_mask: Masks | None = None

    def solve(self, solver: str = "krylov", **options: Any) -> tuple[ParamDict, SolveReport]:
        """Solve the system and keep the output mask.

        Args:
            solver: ``krylov``, ``lissa`` or ``dense``.
            **options: the solver's options (``tol``, ``max_iter``, ``method`` ...).

        Returns:
            The masked solution and the solver's report.
        """
        inverse = self.inverse(solver, **options)
        x = inverse @ self.rhs
        assert isinstance(x, dict) and inverse.last_report is not None
        return V.mask(x, self.output_mask), inverse.last_report

    def inverse(self, solver: str = "krylov", **options: Any) -> InverseOperator:
        """The system's solver as an operator (``inverse @ rhs`` is the unmasked solution)."""
        return InverseOperator(
            self.operator, solver, self.kind, self.damping, self.domain, **options
        )


def build_system(
    estimator: str,
    hessian: ParamOperator,
    gradient: Mapping[str, Tensor],
    selection: Masks | None,
    damping: float = 0.0,
) -> LinearSystem:
    """The linear system of ``estimator`` (see the table in this module's docstring).

    Args:
        estimator: ``gif``, ``fif``, ``pif`` or ``if`` (``if`` ignores ``selection``).
        hessian: the symmetric curvature operator H (HVP-based or dense).
        gradient: the right-hand side g, keyed like H's parameters.
        selection: bool masks of the parameters allowed to move (``None``: all).
        damping: λ ≥ 0; Tikhonov λ‖x‖² for ``gif`` (normal equations (H²)_SS + λI), Koh &
            Liang's H + λI for the others.

    Returns:
        The :class:`LinearSystem` to solve.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}.")
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {estimator!r}: choose one of {ESTIMATORS}.")
    g = dict(gradient)
    if estimator == "if":
        selection = None
    P = MaskOperator(selection)
    if estimator == "gif":
        return LinearSystem(hessian @ P, g, LEAST_SQUARES, damping, selection, selection)
    damped = hessian + damping * IdentityOperator() if damping else hessian
    if estimator == "fif":
        return LinearSystem(P @ damped @ P, P @ g, SYMMETRIC, 0.0, selection, selection)
    return LinearSystem(damped, g, SYMMETRIC, 0.0, None, selection)
