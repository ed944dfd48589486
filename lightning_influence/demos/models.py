"""Small models, a LightningModule and a digits DataModule for tests, the demo and benchmarks.

The models are deliberately tiny (~20k parameters) so that dense Hessians and many HVPs stay
cheap on a CPU. Layer names are stable (``conv1``, ``bn1``, ``conv2``, ``fc1``, ``fc2``) and the
last layer is always an ``nn.Linear`` whose input is the default feature layer for capture.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_influence.data.batches import IndexedDataset, parse_batch
from lightning_influence.demos.datasets import digits_splits

__all__ = ["MLP", "DigitsDataModule", "ImageClassifier", "SmallCNN", "train_classifier"]


class SmallCNN(nn.Module):
    """conv3x3-BN-ReLU, conv3x3-ReLU, maxpool 2, flatten, Linear-ReLU, Linear.

    Channels ``width`` then ``2 * width``; hidden size ``2 * width``. After the max-pool the map
    is average-pooled to at most 4x4, so the parameter count does not grow with
    ``image_size`` (21,578 parameters for the defaults, for 8x8 digits and 28x28 alike). One
    BatchNorm is included on purpose: it must enter the Hessian but never be selected.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, width: int = 16, image_size: int = 8
    ) -> None:
        super().__init__()
        if image_size < 2:
            raise ValueError(f"image_size must be >= 2, got {image_size}.")
        pooled = min(image_size // 2, 4)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(pooled))
        self.fc1 = nn.Linear(2 * width * pooled * pooled, 2 * width)
        self.fc2 = nn.Linear(2 * width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The input of the last Linear (``fc2``): the default features for capture."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.features(x))


class MLP(nn.Module):
    """flatten, Linear-ReLU, Linear: a tiny model for dense-Hessian reference tests."""

    def __init__(self, in_features: int = 64, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class ImageClassifier(L.LightningModule):
    """Cross-entropy image classifier around :class:`SmallCNN` or :class:`MLP`, trained with Adam.

    Plain typed arguments so LightningCLI can configure it. Batches may be ``(x, y)``,
    ``(x, y, idx)`` or dicts (see :func:`~lightning_influence.data.batches.parse_batch`). Logs
    ``train_loss``, ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``. The network is
    ``self.net``; ``forward`` returns logits.
    """

    def __init__(
        self,
        arch: Literal["small_cnn", "mlp"] = "small_cnn",
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        image_size: int = 8,
        lr: float = 1e-2,
        weight_decay: float = 5e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if arch == "small_cnn":
            self.net: nn.Module = SmallCNN(in_channels, num_classes, width, image_size)
        elif arch == "mlp":
            self.net = MLP(in_channels * image_size * image_size, 2 * width, num_classes)
        else:
            raise ValueError(f"unknown arch {arch!r}; choose 'small_cnn' or 'mlp'.")
        self.lr = lr
        self.weight_decay = weight_decay

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _loss_acc(self, batch: Any) -> tuple[Tensor, Tensor, int]:
        parsed = parse_batch(batch)
        logits = self(parsed.x)
        loss = F.cross_entropy(logits, parsed.y)
        acc = (logits.argmax(-1) == parsed.y).float().mean()
        return loss, acc, len(parsed)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, _, n = self._loss_acc(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, acc, n = self._loss_acc(batch)
        if dataloader_idx != 0:  # e.g. the training set passed for a CaptureCallback: no logs
            return
        self.log("val_loss", loss, batch_size=n, add_dataloader_idx=False)
        self.log("val_acc", acc, prog_bar=True, batch_size=n, add_dataloader_idx=False)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, acc, n = self._loss_acc(batch)
        self.log("test_loss", loss, batch_size=n)
        self.log("test_acc", acc, batch_size=n)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self(parse_batch(batch).x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class DigitsDataModule(L.LightningDataModule):
    """scikit-learn digits (offline) as a DataModule; see :func:`digits_splits` for the splits.

    ``with_ids=True`` wraps every split in :class:`~lightning_influence.data.batches.IndexedDataset`
    so batches are ``(x, y, idx)`` with ``idx`` the sample's position in its split (stable
    across epochs, shuffles and ranks). The training loader shuffles with a generator seeded
    by ``seed``.
    """

    num_classes = 10
    in_channels = 1
    image_size = 8

    def __init__(
        self,
        batch_size: int = 64,
        seed: int = 0,
        with_ids: bool = True,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.seed = seed
        self.with_ids = with_ids
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = digits_splits(self.seed, self.val_fraction, self.test_fraction)
        if self.with_ids:
            splits = tuple(IndexedDataset(s) for s in splits)  # type: ignore[assignment]
        self.train_set, self.val_set, self.test_set = splits

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        assert dataset is not None, "setup() did not run"
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=gen,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, shuffle=False)


@contextlib.contextmanager
def _quiet_lightning(quiet: bool) -> Iterator[None]:
    """Silence Lightning's info lines (GPU available, seed set, ...) for the duration."""
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _restore_threads(threads: int) -> Iterator[None]:
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sample_xy(item: Any) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of one dataset item: ``(x, y[, idx])`` or a dict with input/label keys."""
    if isinstance(item, Mapping):
        parsed = parse_batch(item)
        return torch.as_tensor(parsed.x), parsed.y
    return torch.as_tensor(item[0]), torch.as_tensor(item[1])


def _labels(dataset: Dataset) -> Tensor:
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        return tensors[1]
    return torch.stack([_sample_xy(dataset[i])[1] for i in range(len(dataset))])  # type: ignore[arg-type]


def quiet_cpu_trainer(epochs: int, progress_bar: bool = False, **kwargs: Any) -> L.Trainer:
    """A deterministic single-CPU ``Trainer`` without logger, checkpoints or model summary."""
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
        **kwargs,
    )


def train_classifier(
    train: Dataset,
    val: Dataset | None = None,
    epochs: int = 15,
    seed: int = 0,
    batch_size: int = 64,
    arch: Literal["small_cnn", "mlp"] = "small_cnn",
    num_classes: int | None = None,
    width: int = 16,
    lr: float = 1e-2,
    weight_decay: float = 5e-4,
    quiet: bool = True,
    num_threads: int | None = 1,
    callbacks: list[L.Callback] | None = None,
) -> ImageClassifier:
    """Fit an :class:`ImageClassifier` on CPU quickly and deterministically; return it in eval mode.

    Shapes come from ``train[0]``; ``num_classes`` defaults to the largest label in ``train``
    (and ``val``) plus one, so pass it explicitly when a class is absent (e.g. a retrained
    reference without the forgotten class). No logger, checkpoints or progress bar.
    ``num_threads`` caps torch's intra-op threads during the fit (restored after): for a model
    this small one thread is fastest, and with several threads on a busy 2-core machine
    OpenMP contention made each step ~10x slower. ``None`` leaves the setting alone.
    ``callbacks`` join the Trainer (e.g. a :class:`~lightning_influence.MarginCallback`);
    with callbacks the batches carry sample ids (``IndexedDataset``), in the same order.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    x0, _ = _sample_xy(train[0])
    if num_classes is None:
        labels = [_labels(train)] + ([_labels(val)] if val is not None else [])
        num_classes = int(max(int(t.max()) for t in labels)) + 1
    model = ImageClassifier(
        arch=arch,
        in_channels=int(x0.shape[0]) if x0.ndim == 3 else 1,
        num_classes=num_classes,
        width=width,
        image_size=int(x0.shape[-1]),
        lr=lr,
        weight_decay=weight_decay,
    )
    train_loader = DataLoader(
        IndexedDataset(train) if callbacks else train,  # callbacks may need sample ids
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    val_loader = DataLoader(val, batch_size=256) if val is not None else None
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    with _quiet_lightning(quiet), _restore_threads(threads):
        trainer = quiet_cpu_trainer(
            epochs, limit_val_batches=None if val is not None else 0, callbacks=callbacks or []
        )
        trainer.fit(model, train_loader, val_loader)
    return model.eval()
