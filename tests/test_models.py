"""Small models, the LightningModule, the digits DataModule and the quick trainer."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_influence.demos.datasets import digits_splits
from lightning_influence.demos.models import (
    MLP,
    DigitsDataModule,
    ImageClassifier,
    SmallCNN,
    train_classifier,
)
from lightning_influence.measure.metrics import evaluate


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_small_cnn_size_shapes_and_last_linear() -> None:
    m = SmallCNN()
    assert 10_000 <= _n_params(m) <= 30_000
    assert m(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    last = [mod for mod in m.modules() if isinstance(mod, (nn.Linear, nn.Conv2d))][-1]
    assert isinstance(last, nn.Linear) and last is m.fc2
    assert m.features(torch.zeros(2, 1, 8, 8)).shape == (2, m.fc2.in_features)
    assert any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    big = SmallCNN(in_channels=3, image_size=32)  # CIFAR-shaped input, same head size
    assert big(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert _n_params(big) <= 30_000


def test_mlp_and_classifier_archs() -> None:
    assert MLP()(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert _n_params(MLP()) < 5_000
    clf = ImageClassifier(arch="mlp")
    assert isinstance(clf.net, MLP) and clf(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert clf.hparams["arch"] == "mlp"
    with pytest.raises(ValueError, match="arch"):
        ImageClassifier(arch="vgg")  # type: ignore[arg-type]


def test_datamodule_batches() -> None:
    dm = DigitsDataModule(batch_size=32)
    x, y, idx = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and y.dtype == torch.int64 and idx.dtype == torch.int64
    # ids are positions in the split: they index the same sample.
    assert torch.equal(dm.train_set[int(idx[0])][0], x[0])
    # Seeded shuffle: a second loader gives the same first batch.
    assert torch.equal(next(iter(dm.train_dataloader()))[2], idx)
    assert len(next(iter(DigitsDataModule(with_ids=False).val_dataloader()))) == 2
    assert len(dm.test_dataloader().dataset) == 359


def test_lightning_steps_with_and_without_ids() -> None:
    model = ImageClassifier()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        limit_test_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    dm = DigitsDataModule(batch_size=16, with_ids=True)
    trainer.fit(model, dm)
    assert {"train_loss", "val_loss", "val_acc"} <= set(trainer.callback_metrics)
    trainer.test(model, DigitsDataModule(batch_size=16, with_ids=False), verbose=False)
    assert "test_acc" in trainer.callback_metrics


def test_train_classifier_reaches_accuracy_bar() -> None:
    train, val, test = digits_splits(seed=0)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    model = train_classifier(train, val, seed=0)
    seconds = time.perf_counter() - start
    assert torch.get_num_threads() == threads  # restored
    assert not model.training
    x, y = test.tensors
    with torch.no_grad():
        acc = (model(x).argmax(-1) == y).float().mean().item()
    assert acc >= 0.95, f"test accuracy {acc:.3f} after {seconds:.1f}s"
    assert seconds < 30, f"training took {seconds:.1f}s"
    # The forgetting metrics see a model that has not forgotten anything.
    out = evaluate(model, DataLoader(test, batch_size=128), [3])
    assert out["forget_acc"] > 0.9 and out["f1"] < 0.2
