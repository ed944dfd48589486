"""``lightning-influence demo``: train, unlearn one class with the callback, compare with a retrain.

The product path: an :class:`~lightning_influence.demos.models.ImageClassifier` is fitted by a
``Trainer`` whose callbacks include :class:`~lightning_influence.UnlearnCallback`; a small
snapshot callback placed before it records the model's held-out test metrics just before
unlearning. A model retrained from scratch without the class is the reference. All numbers in
the table are on the TEST split, which neither training nor the step search (validation data)
ever saw. ``seconds``: before = training, after = the unlearning step alone, retrain = the
retraining.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_influence.callbacks.unlearn import UnlearnCallback
from lightning_influence.data.batches import IndexedDataset
from lightning_influence.demos.models import (
    ImageClassifier,
    _quiet_lightning,
    quiet_cpu_trainer,
    train_classifier,
)
from lightning_influence.measure.metrics import evaluate

KEYS = ("forget_acc", "retain_acc", "f1", "exclusive_loss", "self_loss", "seconds")


class _TestSnapshot(L.Callback):
    """Record the test metrics at ``on_fit_end``, before the UnlearnCallback runs."""

    def __init__(self, test_loader: DataLoader, forget_classes: list[int]) -> None:
        self.test_loader, self.forget_classes = test_loader, forget_classes
        self.metrics: dict[str, float] = {}
        self.fit_seconds = 0.0
        self._start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._start
        self.metrics = evaluate(pl_module, self.test_loader, self.forget_classes)


def _load(
    dataset: str, seed: int, data_dir: str | None, download: bool
) -> tuple[Dataset, Dataset, Dataset]:
    if dataset == "digits":
        from lightning_influence.demos.datasets import digits_splits

        return digits_splits(seed)
    if dataset == "fashion-mnist":
        from lightning_influence.demos.datasets import fashion_mnist_splits

        return fashion_mnist_splits(
            data_dir, seed=seed, download=download, max_train_samples=10_000
        )
    raise ValueError(f"unknown dataset {dataset!r}: choose digits or fashion-mnist.")


def _without(ds: Dataset, classes: list[int]) -> Subset:
    labels = ds.tensors[1]  # type: ignore[attr-defined]
    keep = torch.nonzero(~torch.isin(labels, torch.tensor(classes))).reshape(-1)
    return Subset(ds, keep.tolist())


def run_demo(
    forget_class: int = 3,
    seed: int = 0,
    dataset: str = "digits",
    data_dir: str | None = None,
    download: bool = False,
    epochs: int = 15,
    progress_bar: bool = False,
) -> dict[str, dict[str, float]]:
    """Run the demo; return ``{"before": ..., "after": ..., "retrain": ...}`` (test metrics)."""
    torch.set_num_threads(1)
    train, val, test = _load(dataset, seed, data_dir, download)
    num_classes = int(train.tensors[1].max()) + 1  # type: ignore[attr-defined]
    if not 0 <= forget_class < num_classes:
        raise ValueError(f"--forget-class must be in 0..{num_classes - 1}, got {forget_class}.")
    classes = [forget_class]
    x0 = train[0][0]
    L.seed_everything(seed, workers=True, verbose=False)
    model = ImageClassifier(
        in_channels=int(x0.shape[0]), num_classes=num_classes, image_size=int(x0.shape[-1])
    )
    train_loader = DataLoader(
        IndexedDataset(train),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    val_loader = DataLoader(val, batch_size=256)
    test_loader = DataLoader(test, batch_size=512)
    snap = _TestSnapshot(test_loader, classes)
    unlearn = UnlearnCallback(forget_classes=classes, seed=seed, progress_bar=progress_bar)
    with _quiet_lightning(True):
        trainer = quiet_cpu_trainer(epochs, progress_bar=progress_bar, callbacks=[snap, unlearn])
        trainer.fit(model, train_loader, val_loader)
    assert unlearn.report is not None
    before = {**snap.metrics, "seconds": snap.fit_seconds}
    after = {**evaluate(model, test_loader, classes), "seconds": unlearn.report.seconds["total"]}
    start = time.perf_counter()
    ref = train_classifier(
        _without(train, classes),
        _without(val, classes),
        epochs=epochs,
        seed=seed,
        num_classes=num_classes,
    )
    retrain_s = time.perf_counter() - start
    retrain = {**evaluate(ref, test_loader, classes), "seconds": retrain_s}
    return {
        name: {k: float(d[k]) for k in KEYS}
        for name, d in (("before", before), ("after", after), ("retrain", retrain))
    }


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width text table: rows before/after/retrain, one column per metric."""
    head = f"{'':8s}" + "".join(f"{k:>15s}" for k in KEYS)
    rows = [head, "-" * len(head)]
    for name, d in results.items():
        rows.append(f"{name:8s}" + "".join(f"{d[k]:15.4f}" for k in KEYS))
    return "\n".join(rows)


def _bounded_int(low: int, high: int | None = None) -> Any:
    """An argparse type: an integer in [low, high] (checked before any work starts)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f"in {low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value} is not {bound}")
        return value

    return parse


def _writable_json(text: str) -> Path:
    """An argparse type: a path whose folder exists (or can be made) and is writable."""
    path = Path(text)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r} (not a writable file path)")
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--forget-class", type=_bounded_int(0, 9), default=3, help="class to unlearn (0-9)"
    )
    p.add_argument("--seed", type=_bounded_int(0, 2**32 - 1), default=0)
    p.add_argument(
        "--json", type=_writable_json, default=None, help="write {before, after, retrain} here"
    )
    p.add_argument("--dataset", choices=("digits", "fashion-mnist"), default="digits")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: Debian's)")
    p.add_argument(
        "--download", action="store_true", help="allow torchvision to download Fashion-MNIST"
    )
    p.add_argument("--epochs", type=_bounded_int(1, 1000), default=15)
    p.add_argument(
        "--progress-bar", action="store_true", help="show training/unlearning progress bars"
    )


def main_demo(args: argparse.Namespace) -> dict[str, Any]:
    results = run_demo(
        forget_class=args.forget_class,
        seed=args.seed,
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        epochs=args.epochs,
        progress_bar=args.progress_bar,
    )
    print(
        f"Unlearning class {args.forget_class} on {args.dataset} (seed {args.seed}); held-out test split:"
    )
    print(format_table(results))
    gap = results["after"]["f1"] - results["retrain"]["f1"]
    print(f"F1 after - F1 retrain = {gap:+.4f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results
