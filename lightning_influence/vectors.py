"""Vector algebra on parameter dicts.

The solvers treat a ``dict[str, Tensor]`` keyed by parameter name as one vector, so no
giant flat copy of the model is ever made. All functions assume the dicts share keys.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

ParamDict = dict[str, Tensor]


def zeros_like(v: Mapping[str, Tensor]) -> ParamDict:
    return {k: torch.zeros_like(t) for k, t in v.items()}


def clone(v: Mapping[str, Tensor]) -> ParamDict:
    return {k: t.clone() for k, t in v.items()}


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """Inner product as a 0-dim tensor (stays on device: no sync per call)."""
    return sum(
        (torch.sum(a[k] * b[k]) for k in a),
        start=torch.zeros((), dtype=_dtype(a), device=_device(a)),
    )


def norm(a: Mapping[str, Tensor]) -> Tensor:
    return torch.sqrt(dot(a, a))


def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float | Tensor = 1.0) -> ParamDict:
    """a + alpha * b."""
    return {k: a[k] + alpha * b[k] for k in a}


def scale(a: Mapping[str, Tensor], alpha: float | Tensor) -> ParamDict:
    return {k: alpha * t for k, t in a.items()}


def mask(a: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None) -> ParamDict:
    """Zero every entry outside the selection (``P a``); ``None`` selects everything."""
    if masks is None:
        return dict(a)
    return {k: t * masks[k] if k in masks else torch.zeros_like(t) for k, t in a.items()}


def is_finite(a: Mapping[str, Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in a.values())


def flatten(a: Mapping[str, Tensor]) -> Tensor:
    """One flat vector (only for dense references on tiny models)."""
    return torch.cat([t.reshape(-1) for t in a.values()])


def unflatten(flat: Tensor, like: Mapping[str, Tensor]) -> ParamDict:
    out, i = {}, 0
    for k, t in like.items():
        out[k] = flat[i : i + t.numel()].reshape(t.shape).to(t.dtype)
        i += t.numel()
    return out


def _dtype(a: Mapping[str, Tensor]) -> torch.dtype:
    return next(iter(a.values())).dtype


def _device(a: Mapping[str, Tensor]) -> torch.device:
    return next(iter(a.values())).device
