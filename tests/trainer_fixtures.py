"""Digits loaders and a quiet CPU Trainer for the tests that fit through Lightning."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_influence import IndexedDataset
from lightning_influence.demos.datasets import digits_splits


def digits_loaders() -> tuple[DataLoader, DataLoader, DataLoader]:
    """(shuffled training loader with ids, validation loader, test loader) on digits."""
    train, val, test = digits_splits(0)
    return (
        DataLoader(
            IndexedDataset(train),
            batch_size=64,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        ),
        DataLoader(val, batch_size=256),
        DataLoader(test, batch_size=512),
    )


def split_loaders(splits: tuple) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(training loader with ids, in order; validation loader; test loader) of given splits."""
    train, val, test = splits
    return (
        DataLoader(IndexedDataset(train), batch_size=64),
        DataLoader(val, batch_size=256),
        DataLoader(test, batch_size=512),
    )


def quiet_trainer(tmp_path: Any, callbacks: list, max_epochs: int, **kwargs: Any) -> L.Trainer:
    """A CPU Trainer without logger, progress bar or model summary (``kwargs`` override)."""
    options = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)
