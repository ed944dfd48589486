"""LightningCLI entry point: ``python examples/cli.py fit --config examples/config_unlearn.yaml``.

The UnlearnCallback is configured under ``trainer.callbacks`` in the YAML; after ``fit`` the
model has forgotten the configured class and the before/after metrics are in the logger.
"""

import torch
from lightning.pytorch.cli import LightningCLI

from lightning_influence.demos.models import DigitsDataModule, ImageClassifier


def main() -> None:
    torch.set_num_threads(1)  # tiny model on a small CPU: one thread is fastest
    LightningCLI(ImageClassifier, DigitsDataModule, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
