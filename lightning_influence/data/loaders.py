"""Which samples an unlearning run reads, and in what order.

Lightning may hold a loader, a ``CombinedLoader``, a list or a dict of loaders; the run uses
the first (:func:`first_loader`). The samples are exactly those the user's loader yields:
:func:`data_pass` re-reads a map-style loader's samples once, in dataset order, through the
same dataset, batch size and collate function, respecting its sampler:

| sampler | samples read |
|---|---|
| sequential, ``RandomSampler``, ``DistributedSampler`` | the whole dataset (under DDP rank 0 reads the union of the shards) |
| Lightning's ``DistributedSamplerWrapper`` (DDP around a user's sampler) | what the wrapped sampler yields (rows above) |
| ``SubsetRandomSampler``, a sequence of indices | those indices |
| ``WeightedRandomSampler`` | the indices with a positive weight |
| anything else (custom samplers, batch samplers, iterable datasets) | the loader itself, once |

Batches without ids get the dataset index of each sample where the pass knows it, else the
position in the pass; a pass in an order that cannot be reproduced has no stable positions,
so tasks that name sample ids then need ids in the batches (:class:`~lightning_influence.IndexedDataset`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

__all__ = ["DataPass", "data_pass", "first_loader"]

_CHUNK = 512


def first_loader(loaders: Any) -> Any:
    """The first loader of whatever Lightning holds (a loader, CombinedLoader, list or dict).

    A sequence whose first item is a batch (a tensor, a dict, or a tuple of tensors) is itself
    the loader (a list of batches).

    Args:
        loaders: a loader, a ``CombinedLoader``, a sequence or a mapping of loaders, or None.
    """
    if isinstance(loaders, CombinedLoader):
        loaders = loaders.iterables
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    if isinstance(loaders, Sequence) and not isinstance(loaders, (str, bytes)):
        if len(loaders) and _is_batch(loaders[0]):
            return loaders  # a list of batches is one loader
        loaders = loaders[0] if len(loaders) else None
    return loaders


def _is_batch(item: Any) -> bool:
    """Whether ``item`` looks like one batch (a tensor, a dict, or a tuple holding tensors),
    not a loader."""
    if isinstance(item, (Tensor, Mapping)):
        return True
    return isinstance(item, (tuple, list)) and any(isinstance(e, Tensor) for e in item)


class DataPass:
    """One pass over a loader's samples, with the sample id of each position where known.

    Args:
        loader: what to iterate.
        position_ids: the dataset index of each position of the pass (None: unknown).
        stable: whether the order of the pass is reproducible (so positions are ids).
        sampler: the name of the user's sampler, for messages.
    """

    def __init__(
        self, loader: Iterable[Any], position_ids: Tensor | None, stable: bool, sampler: str
    ) -> None:
        self.loader, self.position_ids = loader, position_ids
        self.stable, self.sampler = stable, sampler

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)


def _indices(sampler: Any, n: int) -> Tensor | None:
    """The dataset indices a sampler can yield, sorted (None: not knowable)."""
    inner = getattr(getattr(sampler, "dataset", None), "_sampler", None)
    if isinstance(sampler, DistributedSamplerWrapper) and inner is not None:
        return _indices(inner, n)  # Lightning's DDP wrapper around the user's own sampler
    if isinstance(sampler, (SequentialSampler, RandomSampler, DistributedSampler)):
        return torch.arange(n)
    if isinstance(sampler, SubsetRandomSampler):
        return torch.unique(torch.as_tensor(list(sampler.indices), dtype=torch.long))
    if isinstance(sampler, WeightedRandomSampler):
        return torch.nonzero(torch.as_tensor(sampler.weights) > 0).reshape(-1)
    if isinstance(sampler, (Sequence, Tensor)) and not isinstance(sampler, (str, bytes)):
        return torch.unique(torch.as_tensor(list(sampler), dtype=torch.long))
    return None


def data_pass(loader: Any) -> DataPass | None:
    """The samples of ``loader`` read once, in dataset order where possible (module doc).

    Args:
        loader: a DataLoader (or anything Lightning holds, or any iterable of batches).
    """
    loader = first_loader(loader)
    if loader is None:
        return None
    name = type(getattr(loader, "sampler", loader)).__name__
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return DataPass(loader, None, stable=False, sampler=name)
    batch_sampler = loader.batch_sampler
    sampler = batch_sampler.sampler if type(batch_sampler) is BatchSampler else None
    indices = None if sampler is None else _indices(sampler, len(loader.dataset))  # type: ignore[arg-type]
    if indices is None:
        return DataPass(
            loader, None, stable=False, sampler=type(batch_sampler or loader.sampler).__name__
        )
    rebuilt = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size or _CHUNK,
        sampler=indices.tolist(),
        collate_fn=loader.collate_fn,
        num_workers=0,
    )
    return DataPass(rebuilt, indices, stable=True, sampler=type(sampler).__name__)
