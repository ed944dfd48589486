"""Demo models, offline datasets and the ``lightning-influence demo`` command.

Not part of the library core (as ``lightning.pytorch.demos``): small CNN/MLP classifiers, a
digits ``LightningDataModule``, offline loaders for scikit-learn digits and Fashion-MNIST,
corrupted data for the forget tasks (:mod:`~lightning_influence.demos.corruptions`),
and the demo that unlearns one digit class and compares with retraining.
"""

from lightning_influence.demos.datasets import digits_splits, fashion_mnist_splits
from lightning_influence.demos.models import (
    MLP,
    DigitsDataModule,
    ImageClassifier,
    SmallCNN,
    quiet_cpu_trainer,
    train_classifier,
)

__all__ = [
    "MLP",
    "DigitsDataModule",
    "ImageClassifier",
    "SmallCNN",
    "digits_splits",
    "fashion_mnist_splits",
    "quiet_cpu_trainer",
    "train_classifier",
]
