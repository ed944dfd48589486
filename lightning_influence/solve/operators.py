"""Linear operators on parameter dicts, and the algebra that composes them.

In the style of curvlinops: an operator implements a mat-vec on a parameter dict
(``dict[str, Tensor]`` keyed by parameter name, see :mod:`lightning_influence.solve.vectors`), so
the model is never flattened. Operators compose with ``@``, ``+``, ``-`` and scalar ``*``,
and have an adjoint ``A.T``::

    P = MaskOperator(selection)          # keeps the selected coordinates, zeroes the rest
    A = H @ P                            # GIF's least-squares operator H_{:,S}
    A.T @ r                              # = P H r (H and P are symmetric)
    B = P @ (H + 0.1 * IdentityOperator()) @ P   # symmetric: a palindrome of symmetric factors

A "batched" parameter dict carries a leading dimension ``k`` on every tensor: ``matmat``
applies the operator to each of the ``k`` vectors (the algebra operators do so in one go),
and :meth:`ParamOperator.to_matrix` uses it to materialise an operator on tiny models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from lightning_influence.solve import vectors as V
from lightning_influence.solve.vectors import Masks, ParamDict

__all__ = [
    "AdjointOperator",
    "DenseMatrixOperator",
    "IdentityOperator",
    "MaskOperator",
    "ParamOperator",
    "ProductOperator",
    "ScaledOperator",
    "SumOperator",
]


class ParamOperator:
    """A linear operator mapping parameter dicts to parameter dicts.

    Subclasses implement :meth:`matvec`; a non-symmetric one also implements :meth:`rmatvec`
    (its adjoint's mat-vec) or overrides :meth:`adjoint`. Everything else (``@``, ``+``,
    ``-``, scalar ``*``, ``.T``, :meth:`matmat`, :meth:`to_matrix`) comes from this class.

    Attributes:
        symmetric: whether the operator equals its adjoint (then ``A.T`` is ``A`` itself).
    """

    symmetric: bool = False

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        """Apply the operator to one parameter dict.

        Args:
            v: a parameter dict.

        Returns:
            ``A v``, keyed like ``v``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement matvec.")

    def rmatvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        """Apply the adjoint, ``Aᵀ v`` (the mat-vec itself for a symmetric operator).

        Args:
            v: a parameter dict.

        Returns:
            ``Aᵀ v``, keyed like ``v``.
        """
        if self.symmetric:
            return self.matvec(v)
        raise NotImplementedError(
            f"{type(self).__name__} is not symmetric: implement rmatvec or adjoint()."
        )

    def matmat(self, vs: Mapping[str, Tensor]) -> ParamDict:
        """Apply the operator to a batch of parameter dicts (one mat-vec per vector here).

        Args:
            vs: a batched parameter dict: every tensor has a leading dimension ``k``.

        Returns:
            The ``k`` products ``A vᵢ``, stacked along the same leading dimension.
        """
        columns = [self.matvec({n: t[i] for n, t in vs.items()}) for i in range(_batch_size(vs))]
        return {n: torch.stack([c[n] for c in columns]) for n in columns[0]}

    def adjoint(self) -> ParamOperator:
        """The adjoint operator ``Aᵀ``.

        Returns:
            ``self`` when the operator is symmetric, else an :class:`AdjointOperator`.
        """
        return self if self.symmetric else AdjointOperator(self)

    @property
    def T(self) -> ParamOperator:
        """The adjoint operator, ``A.T`` (see :meth:`adjoint`)."""
        return self.adjoint()

    def to_matrix(self, like: Mapping[str, Tensor], columns: Tensor | None = None) -> Tensor:
        """The explicit matrix of the operator over the flat coordinates of ``like``.

        Only for tiny models: it costs one :meth:`matmat` over ``len(columns)`` unit vectors.

        Args:
            like: a parameter dict fixing the layout (names, shapes, dtype, device).
            columns: flat indices of the columns to materialise (``None``: all).

        Returns:
            A ``[n, len(columns)]`` tensor (``n``: the number of coordinates of ``like``).
        """
        units = V.unit_vectors(like, columns)
        return V.flatten(self.matmat(units), leading=1).T

    def __matmul__(self, other: object) -> ParamOperator | ParamDict:
        if isinstance(other, ParamOperator):
            return ProductOperator([self, other])
        if isinstance(other, Mapping):
            return self.matvec(other)
        return NotImplemented

    def __add__(self, other: object) -> ParamOperator:
        if not isinstance(other, ParamOperator):
            return NotImplemented
        return SumOperator([self, other])

    def __sub__(self, other: object) -> ParamOperator:
        if not isinstance(other, ParamOperator):
            return NotImplemented
        return SumOperator([self, ScaledOperator(other, -1.0)])

    def __mul__(self, scalar: object) -> ParamOperator:
        if not _is_scalar(scalar):
            return NotImplemented
        return ScaledOperator(self, float(scalar))  # type: ignore[arg-type]

    __rmul__ = __mul__

    def __neg__(self) -> ParamOperator:
        return ScaledOperator(self, -1.0)


class IdentityOperator(ParamOperator):
    """The identity ``I``: returns its input (used for damping, ``H + λ I``)."""

    symmetric = True

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        """Return ``v`` (a new dict holding the same tensors).

        Args:
            v: a parameter dict.
        """
        return dict(v)

    matmat = matvec


class MaskOperator(ParamOperator):
    """The coordinate projection ``P`` onto a selection: keeps selected entries, zeroes the rest.

    Args:
        masks: ``{parameter name: bool mask}`` as :func:`~lightning_influence.select_parameters`
            returns; a parameter without a mask is wholly unselected. ``None`` selects every
            coordinate (``P = I``).
    """

    symmetric = True

    def __init__(self, masks: Masks | None) -> None:
        self.masks = masks

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        """Return ``P v``: ``v`` with every unselected entry set to zero.

        Args:
            v: a parameter dict (or a batched one: the masks broadcast over a leading dim).
        """
        return V.mask(v, self.masks)

    matmat = matvec


class DenseMatrixOperator(ParamOperator):
    """An explicit matrix acting on the flat coordinates of a parameter dict (tiny models).

    Args:
        matrix: ``[n, n]`` tensor in the flat parameter order of ``like``.
        like: a parameter dict fixing the layout; results take its dtypes and device.
        symmetric: whether ``matrix`` is symmetric (then ``A.T`` is ``A`` itself).
    """

    def __init__(self, matrix: Tensor, like: Mapping[str, Tensor], symmetric: bool = False):
        n = sum(t.numel() for t in like.values())
        if matrix.shape != (n, n):
            raise ValueError(
                f"The matrix has shape {tuple(matrix.shape)}; the layout has {n} coordinates."
            )
        self.matrix, self.like, self.symmetric = matrix, dict(like), symmetric

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        """Return ``M v`` as a parameter dict laid out like ``like``.

        Args:
            v: a parameter dict with the layout of ``like``.
        """
        flat = V.flatten(v).to(self.matrix.dtype)
        return V.unflatten(self.matrix @ flat, self.like)

    def matmat(self, vs: Mapping[str, Tensor]) -> ParamDict:
        """Return ``M vᵢ`` for every vector of a batched parameter dict, in one product.

        Args:
            vs: a batched parameter dict (leading dimension ``k``).
        """
        flat = V.flatten(vs, leading=1).to(self.matrix.dtype)
        return V.unflatten(flat @ self.matrix.T, self.like)

    def adjoint(self) -> ParamOperator:
        """The transposed matrix as an operator (``self`` when symmetric)."""
        if self.symmetric:
            return self
        return DenseMatrixOperator(self.matrix.T, self.like)


class AdjointOperator(ParamOperator):
    """``Aᵀ`` of an operator that implements :meth:`ParamOperator.rmatvec`.

    Args:
        base: the operator ``A``.
    """

    def __init__(self, base: ParamOperator) -> None:
        self.base = base
        self.symmetric = base.symmetric

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        """Return ``Aᵀ v`` (the base operator's ``rmatvec``).

        Args:
            v: a parameter dict.
        """
        return self.base.rmatvec(v)

    def rmatvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        """Return ``A v`` (the adjoint of the adjoint).

        Args:
            v: a parameter dict.
        """
        return self.base.matvec(v)

    def adjoint(self) -> ParamOperator:
        """The base operator ``A``."""
        return self.base


class SumOperator(ParamOperator):
    """``A₁ + A₂ + …``; symmetric when every term is.

    Args:
        terms: the operators to add (nested sums are flattened).
    """

    def __init__(self, terms: Sequence[ParamOperator]) -> None:
        self.terms: list[ParamOperator] = []
        for term in terms:
            self.terms.extend(term.terms if isinstance(term, SumOperator) else [term])
        self.symmetric = all(t.symmetric for t in self.terms)

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        """Return ``Σ Aᵢ v``.

        Args:
            v: a parameter dict.
        """
        return _sum(t.matvec(v) for t in self.terms)

    def matmat(self, vs: Mapping[str, Tensor]) -> ParamDict:
        """Return ``Σ Aᵢ vs`` for a batched parameter dict.

        Args:
            vs: a batched parameter dict (leading dimension ``k``).
        """
        return _sum(t.matmat(vs) for t in self.terms)

    def adjoint(self) -> ParamOperator:
        """``Σ Aᵢᵀ`` (``self`` when symmetric)."""
        return self if self.symmetric else SumOperator([t.adjoint() for t in self.terms])


class ScaledOperator(ParamOperator):
    """``c A`` for a real scalar ``c``.

    Args:
        base: the operator ``A``.
        scalar: the real factor ``c``.
    """

    def __init__(self, base: ParamOperator, scalar: float) -> None:
        if isinstance(base, ScaledOperator):
            base, scalar = base.base, base.scalar * scalar
        self.base, self.scalar = base, float(scalar)
        self.symmetric = base.symmetric

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        """Return ``c A v``.

        Args:
            v: a parameter dict.
        """
        return V.scale(self.base.matvec(v), self.scalar)

    def matmat(self, vs: Mapping[str, Tensor]) -> ParamDict:
        """Return ``c A vs`` for a batched parameter dict.

        Args:
            vs: a batched parameter dict (leading dimension ``k``).
        """
        return V.scale(self.base.matmat(vs), self.scalar)

    def adjoint(self) -> ParamOperator:
        """``c Aᵀ`` (``self`` when symmetric)."""
        return self if self.symmetric else ScaledOperator(self.base.adjoint(), self.scalar)


class ProductOperator(ParamOperator):
    """``A₁ A₂ … A_m`` (``A_m`` applied first).

    The product is flagged symmetric when its factors are symmetric and read the same
    backwards (the same objects), e.g. ``P H P``: then ``(P H P)ᵀ = Pᵀ Hᵀ Pᵀ = P H P``.

    Args:
        factors: the operators, leftmost first (nested products are flattened).
    """

    def __init__(self, factors: Sequence[ParamOperator]) -> None:
        self.factors: list[ParamOperator] = []
        for factor in factors:
            self.factors.extend(factor.factors if isinstance(factor, ProductOperator) else [factor])
        palindrome = all(a is b for a, b in zip(self.factors, reversed(self.factors), strict=True))
        self.symmetric = palindrome and all(f.symmetric for f in self.factors)

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        """Return ``A₁ (A₂ (… (A_m v)))``.

        Args:
            v: a parameter dict.
        """
        out = dict(v)
        for factor in reversed(self.factors):
            out = factor.matvec(out)
        return out

    def matmat(self, vs: Mapping[str, Tensor]) -> ParamDict:
        """Apply the factors right to left to a batched parameter dict.

        Args:
            vs: a batched parameter dict (leading dimension ``k``).
        """
        out = dict(vs)
        for factor in reversed(self.factors):
            out = factor.matmat(out)
        return out

    def adjoint(self) -> ParamOperator:
        """``A_mᵀ … A₁ᵀ`` (``self`` when symmetric)."""
        if self.symmetric:
            return self
        return ProductOperator([f.adjoint() for f in reversed(self.factors)])


def _sum(dicts: Iterable[ParamDict]) -> ParamDict:
    total: ParamDict | None = None
    for d in dicts:
        total = d if total is None else V.add(total, d)
    assert total is not None
    return total


def _is_scalar(value: object) -> bool:
    if isinstance(value, Tensor):
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _batch_size(vs: Mapping[str, Tensor]) -> int:
    return int(next(iter(vs.values())).shape[0])
