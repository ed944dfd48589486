"""Plain script: fit a small CNN on digits with an UnlearnCallback, then compare on test data.

python examples/unlearn_digits.py
"""

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_influence.callbacks.unlearn import UnlearnCallback
from lightning_influence.demos.models import DigitsDataModule, ImageClassifier
from lightning_influence.measure.metrics import evaluate


def main() -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    data = DigitsDataModule(batch_size=64, seed=0)  # batches are (x, y, idx)
    model = ImageClassifier()
    unlearn = UnlearnCallback(forget_classes=[3])  # runs after fit, scored on the val loader
    trainer = L.Trainer(
        max_epochs=15,
        accelerator="cpu",
        logger=CSVLogger("lightning_logs_unlearn"),
        callbacks=[unlearn],
        enable_checkpointing=False,
        deterministic=True,
    )
    trainer.fit(model, datamodule=data)  # the model has now forgotten class 3
    report = unlearn.report
    print("validation before:", report.before)
    print("validation after: ", report.after)
    print(
        f"step radius {report.radius:.3g}, {report.selected_params} parameters moved, {report.seconds['total']:.2f} s"
    )
    print("test after:", evaluate(model, data.test_dataloader(), forget_classes=[3]))


if __name__ == "__main__":
    main()
