"""Vector algebra on parameter dicts.

The solvers treat a ``dict[str, Tensor]`` keyed by parameter name as one vector, so no
giant flat copy of the model is ever made. All functions assume the dicts share keys.
A *batched* parameter dict has a leading dimension ``k`` on every tensor (``k`` vectors);
the element-wise functions accept it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

#: A vector over the model's parameters: one tensor per parameter name.
ParamDict = dict[str, Tensor]
#: A selection: ``{parameter name: bool mask shaped like the parameter}``.
Masks = Mapping[str, Tensor]


def zeros_like(v: Mapping[str, Tensor]) -> ParamDict:
    """A zero vector with the layout of ``v``.

    Args:
        v: a parameter dict.
    """
    return {k: torch.zeros_like(t) for k, t in v.items()}


def clone(v: Mapping[str, Tensor]) -> ParamDict:
    """A copy of ``v`` that shares no memory with it.

    Args:
        v: a parameter dict.
    """
    return {k: t.clone() for k, t in v.items()}


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """The inner product ``⟨a, b⟩`` as a 0-dim tensor (stays on device: no sync per call).

    Args:
        a: a parameter dict.
        b: a parameter dict with the same keys and shapes.
    """
    return sum(
        (torch.sum(a[k] * b[k]) for k in a),
        start=torch.zeros((), dtype=_dtype(a), device=_device(a)),
    )


def norm(a: Mapping[str, Tensor]) -> Tensor:
    """The Euclidean norm ``‖a‖`` as a 0-dim tensor.

    Args:
        a: a parameter dict.
    """
    return torch.sqrt(dot(a, a))


def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float | Tensor = 1.0) -> ParamDict:
    """``a + alpha * b``.

    Args:
        a: a parameter dict.
        b: a parameter dict with the same keys and shapes.
        alpha: the factor on ``b``.
    """
    return {k: a[k] + alpha * b[k] for k in a}


def scale(a: Mapping[str, Tensor], alpha: float | Tensor) -> ParamDict:
    """``alpha * a``.

    Args:
        a: a parameter dict.
        alpha: the factor.
    """
    return {k: alpha * t for k, t in a.items()}


def mask(a: Mapping[str, Tensor], masks: Masks | None) -> ParamDict:
    """Zero every entry outside the selection (``P a``).

    Args:
        a: a parameter dict (or a batched one: the masks broadcast over the leading dim).
        masks: bool masks by parameter name; a parameter without one is wholly unselected.
            ``None`` selects everything.
    """
    if masks is None:
        return dict(a)
    return {k: t * masks[k] if k in masks else torch.zeros_like(t) for k, t in a.items()}


def as_masks(selection: Masks | None, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Full boolean masks for every parameter of ``like``.

    Args:
        selection: bool masks by parameter name (missing names: unselected); ``None``
            selects everything.
        like: a parameter dict fixing the names, shapes and device.
    """
    return {
        k: (
            torch.ones_like(t, dtype=torch.bool)
            if selection is None
            else selection.get(k, torch.zeros_like(t, dtype=torch.bool)).to(t.device)
        )
        for k, t in like.items()
    }


def is_finite(a: Mapping[str, Tensor]) -> bool:
    """Whether every entry of ``a`` is finite (no NaN or inf).

    Args:
        a: a parameter dict.
    """
    return all(bool(torch.isfinite(t).all()) for t in a.values())


def flatten(a: Mapping[str, Tensor], leading: int = 0) -> Tensor:
    """One flat vector (only for dense references on tiny models).

    Args:
        a: a parameter dict, or a batched one.
        leading: how many leading (batch) dimensions to keep: ``1`` turns a batched dict of
            ``k`` vectors into a ``[k, n]`` matrix.
    """
    return torch.cat([t.reshape(*t.shape[:leading], -1) for t in a.values()], dim=leading)


def unflatten(flat: Tensor, like: Mapping[str, Tensor]) -> ParamDict:
    """Split a flat vector back into a parameter dict (the inverse of :func:`flatten`).

    Args:
        flat: ``[n]``, or ``[k, n]`` for a batched dict of ``k`` vectors.
        like: a parameter dict fixing the names, shapes and dtypes.
    """
    out, i = {}, 0
    batch = flat.shape[:-1]
    for k, t in like.items():
        out[k] = flat[..., i : i + t.numel()].reshape(*batch, *t.shape).to(t.dtype)
        i += t.numel()
    return out


def unit_vectors(like: Mapping[str, Tensor], indices: Tensor | None = None) -> ParamDict:
    """The unit vectors ``e_i`` for flat ``indices`` as one batched parameter dict.

    Args:
        like: a parameter dict fixing the layout, dtype and device.
        indices: flat coordinate indices (``None``: every coordinate, the identity matrix).

    Returns:
        A batched parameter dict whose ``j``-th vector is ``e_{indices[j]}``.
    """
    n = sum(t.numel() for t in like.values())
    device = _device(like)
    indices = torch.arange(n, device=device) if indices is None else indices.to(device)
    units = torch.zeros(len(indices), n, dtype=_dtype(like), device=device)
    units[torch.arange(len(indices), device=device), indices] = 1
    return unflatten(units, like)


def _dtype(a: Mapping[str, Tensor]) -> torch.dtype:
    return next(iter(a.values())).dtype


def _device(a: Mapping[str, Tensor]) -> torch.device:
    return next(iter(a.values())).device
