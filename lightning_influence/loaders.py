"""Which loaders an unlearning run reads, and how.

Lightning may hold a loader, a ``CombinedLoader``, a list or a dict of loaders; the run uses
the first. A map-style training loader is re-read without shuffling (so that positions are
stable ids for batches that carry none) through a plain ``DataLoader`` over the same dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader, IterableDataset

__all__ = ["first_loader", "plain_loader"]

_CHUNK = 512


def first_loader(loaders: Any) -> Any:
    """The first loader of whatever Lightning holds (a loader, CombinedLoader, list or dict)."""
    if isinstance(loaders, CombinedLoader):
        loaders = loaders.iterables
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    if isinstance(loaders, Sequence) and not isinstance(loaders, (str, bytes)):
        loaders = loaders[0] if len(loaders) else None
    return loaders


def plain_loader(loader: Any) -> Iterable[Any] | None:
    """A deterministic, non-shuffled, non-distributed loader over the same map-style dataset."""
    loader = first_loader(loader)
    if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size or _CHUNK,
            shuffle=False,
            collate_fn=loader.collate_fn,
            num_workers=0,
        )
    return loader
