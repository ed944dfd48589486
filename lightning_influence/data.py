"""Normalise what users pass as data into a list of ``(x, y, w)`` batches."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

Batch = tuple[Tensor, Tensor, Tensor | None]


def _is_single_batch(data: Any) -> bool:
    return (
        isinstance(data, (tuple, list))
        and 2 <= len(data) <= 3
        and all(isinstance(t, Tensor) for t in data)
    )


def as_batches(data: Any, name: str = "data") -> list[Batch]:
    """Return ``data`` as a list of ``(x, y, w)`` batches (``w`` is ``None`` when unweighted).

    Accepts one batch ``(x, y)`` / ``(x, y, w)`` or an iterable of them (e.g. a DataLoader).
    A third element is always read as per-sample weights: strip sample ids before calling.
    """
    if data is None:
        raise ValueError(
            f"{name} is None: pass a batch (x, y), (x, y, w) or an iterable of batches."
        )
    from lightning_influence.batches import Batch as _Batch

    if isinstance(data, _Batch):
        data = [data]
    raw: Iterable[Any] = [data] if _is_single_batch(data) else data
    try:
        items = list(raw)
    except TypeError as err:
        raise ValueError(
            f"{name} must be a batch (x, y), (x, y, w) or an iterable of such batches; got {type(data).__name__}."
        ) from err
    batches: list[Batch] = []
    for i, b in enumerate(items):
        if isinstance(b, _Batch):
            b = (b.x, b.y) if b.weights is None else (b.x, b.y, b.weights)
        if not _is_single_batch(b):
            raise ValueError(
                f"{name}[{i}] is not a batch of tensors (x, y) or (x, y, w); got {type(b).__name__}"
                f"{' of length ' + str(len(b)) if isinstance(b, (tuple, list)) else ''}."
            )
        x, y = b[0], b[1]
        w = b[2] if len(b) == 3 else None
        if x.shape[0] == 0:
            continue
        if y.shape[0] != x.shape[0] or (w is not None and w.shape[0] != x.shape[0]):
            raise ValueError(f"{name}[{i}]: x, y (and w) must have the same number of samples.")
        if w is not None:
            if not torch.isfinite(w).all() or (w < 0).any():
                raise ValueError(f"{name}[{i}]: weights must be finite and non-negative.")
        batches.append((x, y, w))
    if not batches or sum(b[0].shape[0] for b in batches) == 0:
        raise ValueError(f"{name} is empty: it must hold at least one sample.")
    return batches


def total_weight(batches: list[Batch]) -> float:
    return float(sum(b[0].shape[0] if b[2] is None else b[2].sum() for b in batches))
