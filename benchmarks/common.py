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


def _cpu_model() -> dict[str, Any]:
    """The CPU's model name and whether it has AVX-512 (Linux): float rounding, and so a
    trained model and every number measured from it, differ between CPUs (digits memorised,
    same code: Avg. Gap 5.72 pp on one, 4.88 on another), so rows are compared within one."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line and line.strip())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return {
        "cpu_model": fields.get("model name"),
        "avx512": "avx512f" in fields.get("flags", "").split(),
    }


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        **_cpu_model(),
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


def mean_or_none(values: list[float]) -> float | None:
    """The arithmetic mean, or None for no values."""
    return statistics.fmean(values) if values else None


def geometric_mean_or_none(values: list[float]) -> float | None:
    """The geometric mean (of positive ratios), or None for no values."""
    return statistics.geometric_mean(values) if values else None


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


#: Where each flat setting name of the benchmarks' configurations lives in the callback's groups.
_GROUPS = {
    "sampler": ("hessian", "sampler"),
    "hessian_budget": ("hessian", "budget"),
    "pool_size": ("hessian", "pool_size"),
    "feature_module": ("hessian", "feature_module"),
    "selection": ("selection", "method"),
    "ratio": ("selection", "ratio"),
    "estimator": ("solve", "estimator"),
    "solver": ("solve", "solver"),
    "damping": ("solve", "damping"),
    "tol": ("solve", "tol"),
    "max_iter": ("solve", "max_iter"),
    "steps": ("step", "steps"),
    "min_radius": ("step", "min_radius"),
    "max_radius": ("step", "max_radius"),
    "refine": ("step", "refine"),
    "forget_target": ("step", "forget_target"),
    "max_retain_drop": ("step", "max_retain_drop"),
    "accept_retain_drop": ("grid", "accept_retain_drop"),
    "retain_tolerance": ("grid", "retain_tolerance"),
}


def unlearn_callback(**kwargs: Any) -> Any:
    """``li.UnlearnCallback`` from the flat setting names the benchmark tables record."""
    import lightning_influence as li

    groups: dict[str, dict[str, Any]] = {}
    flat = {}
    for key, value in kwargs.items():
        if key in _GROUPS:
            group, field_name = _GROUPS[key]
            groups.setdefault(group, {})[field_name] = value
        else:
            flat[key] = value
    return li.UnlearnCallback(**flat, **groups)
