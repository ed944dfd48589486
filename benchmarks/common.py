"""Shared benchmark plumbing: machine info, a cached trained model, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / "cache"


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def mean_std(values: list[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def trained_digits_cnn(seed: int = 0, epochs: int = 15):
    """A SmallCNN trained on digits (cached under benchmarks/cache), with its splits."""
    from lightning_influence.demos.datasets import digits_splits
    from lightning_influence.demos.models import ImageClassifier, train_classifier

    train, val, test = digits_splits(seed=seed)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"digits_cnn_seed{seed}_ep{epochs}.pt"
    if path.exists():
        model = ImageClassifier(num_classes=10, image_size=8)
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    else:
        model = train_classifier(train, val, epochs=epochs, seed=seed)
        torch.save(model.state_dict(), path)
    return model, (train, val, test)
