"""Re-use the forward passes validation makes anyway: a CaptureCallback records the training
pool's logits during the last validation run, and UnlearnCallback samples the Hessian subset
from that capture instead of making its own pass over the training data.

The training set is passed as a *second* validation loader (unshuffled, with ids); the first
validation loader stays the one the step is chosen on. ``report.capture_source`` says which
capture was used (``capture_callback`` or ``pass``).

python examples/capture_then_unlearn.py
"""

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_influence import CaptureCallback, IndexedDataset, UnlearnCallback
from lightning_influence.demos.datasets import digits_splits
from lightning_influence.demos.models import ImageClassifier


def main() -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    train, val, _ = digits_splits(0)
    train_loader = DataLoader(IndexedDataset(train), batch_size=64, shuffle=True)
    val_loader = DataLoader(val, batch_size=256)
    pool_loader = DataLoader(IndexedDataset(train), batch_size=256)  # the training set, once
    capture = CaptureCallback(dataloader_idx=1)  # records validation loader 1: the pool
    unlearn = UnlearnCallback(forget_classes=[3])
    trainer = L.Trainer(
        max_epochs=15,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        callbacks=[capture, unlearn],
    )
    trainer.fit(model := ImageClassifier(), train_loader, [val_loader, pool_loader])
    report = unlearn.report
    print(f"capture used: {report.capture_source}; seconds per stage: {report.seconds}")
    print("validation before:", report.before)
    print("validation after: ", report.after)
    del model


if __name__ == "__main__":
    main()
