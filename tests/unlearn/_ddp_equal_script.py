"""Run by tests/unlearn/test_unlearn_sharded.py: unlearn a saved model under 2-process CPU DDP.

The fit trains nothing (``limit_train_batches=0``), it only starts the processes: both ranks
unlearn the saved weights, so the result can be compared with one process doing the same.
"""

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
    out, weights, settings = sys.argv[1], sys.argv[2], eval(sys.argv[3])  # noqa: S307
    train, val, _ = digits_splits(0)
    model = ImageClassifier()
    model.load_state_dict(torch.load(weights, weights_only=True))
    cb = UnlearnCallback(progress_bar=False, **settings)
    trainer = L.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=1,
        limit_train_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    train_loader = DataLoader(IndexedDataset(train), batch_size=64, shuffle=True)
    val_loader = DataLoader(val, batch_size=256)
    trainer.fit(model, train_loader, val_loader)  # launches the processes, trains nothing
    cb.unlearn(trainer, model, train_loader, val_loader)
    torch.save(
        {"state": model.state_dict(), "report": cb.report.as_dict()},
        f"{out}/rank{trainer.global_rank}.pt",
    )
    # shut the process group down before the interpreter exits: left to the exit, gloo's
    # threads can abort the process ("terminate called without an active exception", -6)
    # after the work is done and saved
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
