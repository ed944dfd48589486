"""Read the training data once: the forget rows and a bounded pool of Hessian candidates.

One pass over the training loader keeps, per sample, its id and label; the inputs of the
rows to forget (which the forget specification recognises by label or id); and the inputs
of a bounded pool of retained *candidates* from which the sampler picks the Hessian subset.
When more retained samples exist than ``pool_size``, the pool is the ``pool_size`` samples
with the smallest seeded hash of their id: a uniform random draw that does not depend on
the loader's order, the batch size or the process count.

Sample ids follow one rule everywhere (:func:`batch_ids`): the batch's ids, else the running
position of the row in the pass (stable only when the loader does not shuffle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_influence.data.batches import Batch, BatchParser
from lightning_influence.data.forward import (
    inputs_cat,
    inputs_detach_cpu,
    inputs_rows,
    inputs_take,
    inputs_to,
    is_inputs,
)

__all__ = [
    "BoundedPool",
    "Rows",
    "TrainingData",
    "batch_ids",
    "read_rows",
    "read_training_data",
    "stratified_rows",
]

#: ``forget_mask(ids, labels) -> bool mask`` of the rows to forget in one batch.
ForgetMask = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Rows:
    """Samples held in memory: inputs ``x``, labels ``y`` and ids, aligned on dim 0."""

    x: Tensor
    y: Tensor
    ids: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, index: Tensor) -> Rows:
        """The rows at ``index`` (a LongTensor of positions or a bool mask)."""
        index = index.to(self.y.device)
        return Rows(inputs_take(self.x, index), self.y[index], self.ids[index])

    def relabelled(self, y: Tensor) -> Rows:
        """The same inputs and ids with other labels."""
        return Rows(self.x, y.to(self.y.device, self.y.dtype), self.ids)

    def to(self, device: torch.device | str) -> Rows:
        return Rows(inputs_to(self.x, device), self.y.to(device), self.ids)

    def positions(self, ids: Tensor) -> Tensor:
        """Row positions of ``ids`` (every id must be present)."""
        lookup = {int(i): k for k, i in enumerate(self.ids.tolist())}
        return torch.tensor([lookup[int(i)] for i in ids.tolist()], dtype=torch.long)

    def batches(
        self, size: int, device: torch.device, weights: Tensor | None = None
    ) -> list[Batch]:
        """Chunks of ``size`` rows on ``device`` as :class:`Batch` es (optionally weighted)."""
        out = []
        for i in range(0, len(self), size):
            w = None if weights is None else weights[i : i + size].to(device)
            out.append(
                Batch(
                    inputs_to(inputs_take(self.x, slice(i, i + size)), device),
                    self.y[i : i + size].to(device).long(),
                    self.ids[i : i + size],
                    w,
                )
            )
        return out

    @staticmethod
    def cat(parts: list[Rows]) -> Rows:
        return Rows(
            inputs_cat([p.x for p in parts]),
            torch.cat([p.y for p in parts]),
            torch.cat([p.ids for p in parts]),
        )


@dataclass
class TrainingData:
    """What one pass over the training loader keeps (see the module doc)."""

    ids: Tensor
    labels: Tensor
    forget: Rows
    candidates: Rows

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def stratified_rows(rows: Rows, limit: int | None, seed: int) -> Rows:
    """At most ``limit`` rows with every label's share kept (seeded; all rows if fewer).

    Args:
        rows: the rows (e.g. the validation data).
        limit: the most rows to keep (None: all).
        seed: the seed of the draw.
    """
    if limit is None or len(rows) <= limit:
        return rows
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for label in torch.unique(rows.y).tolist():
        where = torch.nonzero(rows.y == label).reshape(-1)
        k = max(1, round(limit * len(where) / len(rows)))
        keep.append(where[torch.randperm(len(where), generator=gen)[:k]])
    return rows.take(torch.sort(torch.cat(keep)).values)


def batch_ids(batch: Batch, start: int) -> Tensor:
    """The batch's sample ids, else the positions ``start, start + 1, ...`` (the one id rule)."""
    if batch.ids is not None:
        return torch.as_tensor(batch.ids).reshape(-1).cpu().long()
    return torch.arange(start, start + len(batch))


def _parsed(
    loader: Iterable[Any], parser: BatchParser, what: str, needs_ids: bool = False
) -> Iterable[tuple[Batch, Tensor]]:
    """``(batch, ids)`` per batch, inputs and labels detached on the CPU.

    Batches without ids take the dataset index of each position where the pass knows it
    (``loader.position_ids``), else the position; ``needs_ids`` refuses positions of a pass
    whose order is not reproducible (``loader.stable``).
    """
    known = getattr(loader, "position_ids", None)
    position = 0
    for raw in loader:
        b = parse_checked(parser, raw, what)
        if b.ids is None and known is not None:
            b.ids = known[position : position + len(b)]
        elif b.ids is None and needs_ids and not getattr(loader, "stable", True):
            raise ValueError(
                f"The {what} batches carry no sample ids and the loader's order "
                f"({getattr(loader, 'sampler', 'its sampler')}) cannot be reproduced, so "
                "positions are no ids: wrap the dataset in lightning_influence.IndexedDataset "
                "(or yield (x, y, idx)) so that forget ids name the same samples."
            )
        ids = batch_ids(b, position)
        position += len(b)
        yield b, ids


def check_label_range(y: Tensor, num_classes: int, what: str) -> None:
    """Raise, naming the label, if a label is not a class index of ``num_classes`` logits."""
    labels = y.reshape(-1)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"A {what} label is {int(bad[0])}, outside the model's {num_classes} outputs "
            f"(logits width): labels must be class indices 0..{num_classes - 1}. If the "
            "model returns more than the logits, pass logits_fn."
        )


def parse_checked(parser: BatchParser, raw: Any, what: str) -> Batch:
    """The batch parsed, checked (tensor inputs, one class index per row), detached on the
    CPU."""
    try:
        b = parser(raw)
    except ValueError as err:
        raise ValueError(f"cannot parse a {what} batch: {err}") from err
    if not is_inputs(b.x):
        raise ValueError(
            f"unlearning needs tensor inputs (a tensor, or a tuple/dict of tensors for several "
            f"inputs); a {what} batch has x of type {type(b.x).__name__} (pass a batch_parser "
            "that returns such an x)."
        )
    y = torch.as_tensor(b.y)
    rows = inputs_rows(b.x)
    if y.ndim > 1 and y.shape[0] == rows and y.numel() > rows:
        raise ValueError(
            f"{what} labels must be class indices, got shape {list(y.shape)} (one-hot or "
            "soft labels?): pass y.argmax(-1), or a batch_parser that does."
        )
    y = y.reshape(-1)
    if y.is_floating_point():
        raise ValueError(f"{what} labels must be integer class indices, got {y.dtype}.")
    if y.numel() != rows:
        raise ValueError(
            f"a {what} batch has {rows} inputs but {y.numel()} labels: one class index per "
            "sample is expected."
        )
    return Batch(inputs_detach_cpu(b.x), y.detach().cpu().long(), b.ids)


def _first_per_id(rows: Rows) -> Rows:
    """One row per id (the first seen), sorted by id: drops padding and repeats."""
    positions = torch.arange(len(rows))
    _, first = _unique_ids(rows.ids, positions)
    return rows.take(first)


def read_rows(loader: Iterable[Any], parser: BatchParser, what: str = "validation") -> Rows:
    """Every row of ``loader`` (one per id, sorted by id), on the CPU."""
    parts = [Rows(b.x, b.y, ids) for b, ids in _parsed(loader, parser, what)]
    if not parts or sum(len(p) for p in parts) == 0:
        raise ValueError(f"The {what} data is empty.")
    return _first_per_id(Rows.cat(parts))


def id_hash(ids: Tensor, seed: int) -> Tensor:
    """A seeded uniform hash of integer ids in [0, 1) (splitmix64): the pool's random key."""
    with np.errstate(over="ignore"):  # the arithmetic is modulo 2**64 on purpose
        z = ids.numpy().astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) / float(2**53))


class BoundedPool:
    """Keeps the ``size`` rows with the smallest id hash seen so far (all rows if ``None``)."""

    def __init__(self, size: int | None, seed: int) -> None:
        self.size, self.seed = size, seed
        self.parts: list[Rows] = []
        self.count = 0

    def add(self, rows: Rows) -> None:
        self.parts.append(rows)
        self.count += len(rows)
        if self.size is not None and self.count > 2 * self.size:
            self.parts = [self._smallest(Rows.cat(self.parts))]
            self.count = len(self.parts[0])

    def _smallest(self, rows: Rows) -> Rows:
        rows = _first_per_id(rows)
        if self.size is None or len(rows) <= self.size:
            return rows
        keep = torch.argsort(id_hash(rows.ids, self.seed), stable=True)[: self.size]
        return _first_per_id(rows.take(keep))

    def result(self, like: Rows) -> Rows:
        if not self.parts:
            return Rows(inputs_take(like.x, slice(0, 0)), like.y[:0], like.ids[:0])
        return self._smallest(Rows.cat(self.parts))


def read_training_data(
    loader: Iterable[Any],
    parser: BatchParser,
    forget_mask: ForgetMask,
    pool_size: int | None,
    seed: int,
    needs_ids: bool = False,
) -> TrainingData:
    """One pass: ids and labels of every row, the forget rows, a bounded candidate pool."""
    all_ids, all_labels, forget_parts = [], [], []
    pool = BoundedPool(pool_size, seed)
    like: Rows | None = None
    for b, ids in _parsed(loader, parser, "training", needs_ids):
        rows = Rows(b.x, b.y, ids)
        like = like or rows
        mask = forget_mask(ids, b.y).to(torch.bool).cpu()
        all_ids.append(ids)
        all_labels.append(b.y)
        if bool(mask.any()):
            forget_parts.append(rows.take(mask))
        if not bool(mask.all()):
            pool.add(rows.take(~mask))
    if like is None:
        raise ValueError(
            "The training data yielded no batch: nothing to unlearn from. A generator or other "
            "one-shot iterator is used up by fit; pass a DataLoader (it can be read again)."
        )
    ids, labels = _unique_ids(torch.cat(all_ids), torch.cat(all_labels))
    forget = _first_per_id(Rows.cat(forget_parts)) if forget_parts else like.take(torch.arange(0))
    return TrainingData(ids=ids, labels=labels, forget=forget, candidates=pool.result(like))


def _unique_ids(ids: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique ids and the label of each id's first row."""
    order = torch.argsort(ids, stable=True)
    s = ids[order]
    keep = torch.ones_like(s, dtype=torch.bool)
    keep[1:] = s[1:] != s[:-1]
    return s[keep], labels[order][keep]
