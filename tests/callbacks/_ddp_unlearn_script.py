"""Run by tests/callbacks/test_unlearn_ddp.py: 2-process CPU DDP fit + UnlearnCallback; each rank saves its weights."""

import sys

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_influence.callbacks.unlearn import UnlearnCallback
from lightning_influence.data.batches import IndexedDataset
from lightning_influence.demos.datasets import digits_splits
from lightning_influence.demos.models import ImageClassifier

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1]
    L.seed_everything(0, verbose=False)
    train, val, _ = digits_splits(0)
    cb = UnlearnCallback(forget_classes=[3], progress_bar=False, step={"steps": 8})
    trainer = L.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[cb],
    )
    model = ImageClassifier()
    trainer.fit(
        model,
        DataLoader(IndexedDataset(train), batch_size=64, shuffle=True),
        DataLoader(val, batch_size=256),
    )
    torch.save(
        {"state": model.state_dict(), "applied": cb.report.applied, "radius": cb.report.radius},
        f"{out}/rank{trainer.global_rank}.pt",
    )
    # shut the process group down before the interpreter exits: left to the exit, gloo's
    # threads can abort the process ("terminate called without an active exception", -6)
    # after the work is done and saved
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
