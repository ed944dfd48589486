"""Operator algebra on parameter dicts against the same algebra on dense matrices."""

from __future__ import annotations

import pytest
import torch

from lightning_influence.solve import vectors as V
from lightning_influence.solve.operators import (
    AdjointOperator,
    DenseMatrixOperator,
    IdentityOperator,
    MaskOperator,
    ParamOperator,
    ProductOperator,
    SumOperator,
)

LAYOUT = {"w": torch.zeros(2, 3, dtype=torch.float64), "b": torch.zeros(4, dtype=torch.float64)}
N = 10


def random_matrix(seed: int, symmetric: bool = False) -> torch.Tensor:
    m = torch.randn(N, N, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return m + m.T if symmetric else m


def random_vector(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return V.unflatten(torch.randn(N, dtype=torch.float64, generator=gen), LAYOUT)


@pytest.fixture
def ops():
    """Two non-symmetric operators, one symmetric, a mask, and their dense matrices."""
    MA, MB, MS = random_matrix(0), random_matrix(1), random_matrix(2, symmetric=True)
    masks = {"w": torch.tensor([[True, False, True], [False, False, True]])}
    P = MaskOperator(masks)
    MP = torch.diag(V.flatten(V.as_masks(masks, LAYOUT)).double())
    A, B = DenseMatrixOperator(MA, LAYOUT), DenseMatrixOperator(MB, LAYOUT)
    S = DenseMatrixOperator(MS, LAYOUT, symmetric=True)
    return (A, B, S, P), (MA, MB, MS, MP)


def close(op_result: dict, dense_result: torch.Tensor) -> bool:
    return torch.allclose(V.flatten(op_result), dense_result, rtol=1e-12, atol=1e-12)


def test_algebra_matches_dense_matrices(ops):
    (A, B, S, P), (MA, MB, MS, MP) = ops
    v = random_vector(3)
    fv = V.flatten(v)
    eye = torch.eye(N, dtype=torch.float64)
    cases = [
        (A + B, MA + MB),
        (A - B, MA - MB),
        (2.5 * A, 2.5 * MA),
        (A * -0.5, -0.5 * MA),
        (-A, -MA),
        (A @ B, MA @ MB),
        (A @ (B + 3 * IdentityOperator()), MA @ (MB + 3 * eye)),
        (S @ P, MS @ MP),
        (P @ (S + 0.1 * IdentityOperator()) @ P, MP @ (MS + 0.1 * eye) @ MP),
        ((A @ B).T, (MA @ MB).T),
        ((A + 2 * B).T, (MA + 2 * MB).T),
        ((S @ P).T, MP @ MS),
        (A.T.T, MA),
    ]
    for op, M in cases:
        assert close(op @ v, M @ fv)
        assert close(op.matvec(v), M @ fv)
        assert torch.allclose(op.to_matrix(LAYOUT), M, rtol=1e-12, atol=1e-12)


def test_mask_and_identity(ops):
    (_, _, _, P), (_, _, _, MP) = ops
    v = random_vector(4)
    assert close(P @ v, MP @ V.flatten(v))
    assert torch.equal((P @ v)["b"], torch.zeros(4, dtype=torch.float64))  # no mask: unselected
    assert close(MaskOperator(None) @ v, V.flatten(v))
    assert close(IdentityOperator() @ v, V.flatten(v))
    assert P.symmetric and P.T is P


def test_symmetric_flags(ops):
    (A, B, S, P), _ = ops
    assert S.symmetric and (S + 2 * S).symmetric and (S - S).symmetric
    assert not (A + S).symmetric and not (S @ P).symmetric and not (A @ A).symmetric
    assert (P @ S @ P).symmetric and (S @ S).symmetric and (P @ (S + S) @ P).symmetric
    assert S.T is S and (P @ S @ P).T.symmetric


def test_matmat_equals_stacked_matvecs(ops):
    (A, B, S, P), (MA, MB, _, MP) = ops
    vs = [random_vector(s) for s in range(3)]
    batch = {k: torch.stack([v[k] for v in vs]) for k in LAYOUT}
    for op, M in [(A @ P + B, MA @ MP + MB), (P @ A.T, MP @ MA.T)]:
        out = V.flatten(op.matmat(batch), leading=1)
        assert torch.allclose(out, torch.stack([M @ V.flatten(v) for v in vs]), atol=1e-12)


def test_adjoint_of_an_operator_defined_by_matvec_and_rmatvec():
    M = random_matrix(5)

    class Explicit(ParamOperator):
        def matvec(self, v):
            return V.unflatten(M @ V.flatten(v), LAYOUT)

        def rmatvec(self, v):
            return V.unflatten(M.T @ V.flatten(v), LAYOUT)

    op = Explicit()
    assert isinstance(op.T, AdjointOperator) and op.T.T is op
    v = random_vector(6)
    assert close(op.T @ v, M.T @ V.flatten(v))
    assert torch.allclose(op.T.to_matrix(LAYOUT), M.T, atol=1e-12)  # the default matmat
    assert torch.allclose((op.T @ op).to_matrix(LAYOUT), M.T @ M, atol=1e-12)


def test_nesting_is_flattened_and_bad_operands_rejected(ops):
    (A, B, S, _), _ = ops
    assert len(ProductOperator([A @ B, S]).factors) == 3
    assert len(SumOperator([A + B, S]).terms) == 3
    with pytest.raises(TypeError):
        A + 1.0  # noqa: B018
    with pytest.raises(TypeError):
        A @ 2.0  # noqa: B018
    with pytest.raises(NotImplementedError):
        ParamOperator().T @ random_vector(0)  # noqa: B018
    with pytest.raises(ValueError, match="coordinates"):
        DenseMatrixOperator(torch.eye(3), LAYOUT)


@pytest.mark.parametrize("solver", ["krylov", "dense", "lissa"])
def test_a_solver_is_an_inverse_operator(solver):
    """InverseOperator(A, solver) @ b equals the dense float64 solution, for each solver:
    (A + λI)⁻¹ b for a symmetric positive-definite A, and the ridge solution of a
    least-squares system (AᵀA + λI)⁻¹ Aᵀ b for a non-symmetric one."""
    from lightning_influence.solve.solvers import LEAST_SQUARES, SYMMETRIC, InverseOperator

    M = random_matrix(3)
    spd = M @ M.T / N + torch.eye(N, dtype=torch.float64)
    b = random_vector(4)
    options = {"krylov": {"tol": 1e-12, "max_iter": 200}, "dense": {},
               "lissa": {"tol": 1e-10, "max_iter": 20000}}[solver]  # fmt: skip
    inv = InverseOperator(DenseMatrixOperator(spd, LAYOUT, symmetric=True), solver, SYMMETRIC,
                          **options)  # fmt: skip
    x = V.flatten(inv @ b)
    assert torch.allclose(x, torch.linalg.solve(spd, V.flatten(b)), atol=1e-7)
    assert inv.symmetric and inv.last_report is not None and inv.last_report.converged
    lam = 0.3
    ridge = InverseOperator(DenseMatrixOperator(M, LAYOUT), solver, LEAST_SQUARES, lam, **options)
    want = torch.linalg.solve(M.T @ M + lam * torch.eye(N, dtype=torch.float64), M.T @ V.flatten(b))
    assert torch.allclose(V.flatten(ridge @ b), want, atol=1e-7)
    assert not ridge.symmetric
