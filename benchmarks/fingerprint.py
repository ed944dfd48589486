"""Fingerprints of every number a refactor must keep: weights after each forget task, scores.

A refactor that "keeps every number" is checked by running this before and after on the
same machine (a CPU's rounding changes trained models, so fingerprints are compared within
one machine only)::

    python -m benchmarks.fingerprint --out /tmp/before.json      # on the old commit
    python -m benchmarks.fingerprint --compare /tmp/before.json  # on the new one: exit 1 on
                                                                 # any difference

It trains the digits CNN (clean, label-flipped, poisoned; as the task tests do), runs each
forget task of ``UnlearnCallback`` on a copy and hashes the weights it ends with, hashes
the influence scores of the estimators ``li.self_influence`` / ``li.influence_scores``
offer, and runs the demo (its table's numbers). About two minutes on one core.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_influence as li
from lightning_influence.demos.corruptions import corner_trigger, flip_labels, poison
from lightning_influence.demos.datasets import digits_splits
from lightning_influence.demos.models import train_classifier


def digest(tensors: list[torch.Tensor]) -> str:
    """sha256 over the float64 bytes of ``tensors`` (12 hex digits)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to(torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def weights_digest(model: torch.nn.Module) -> str:
    return digest([v for _, v in sorted(model.state_dict().items())])


def _unlearned(model, train: TensorDataset, val: TensorDataset, **task) -> dict[str, Any]:
    model = copy.deepcopy(model)
    report = li.UnlearnCallback(progress_bar=False, **task).unlearn_model(
        model,
        DataLoader(li.IndexedDataset(train), batch_size=64),
        DataLoader(val, batch_size=256),
    )
    return {
        "weights": weights_digest(model),
        "applied": report.applied,
        "reason": report.reason,
        "forget_score": report.forget_score,
    }


def forget_tasks() -> dict[str, Any]:
    """Each forget task on digits (seed 0), from models trained as the task tests train them."""
    train, val, _ = digits_splits(0)

    def fit(data: TensorDataset) -> torch.nn.Module:
        return train_classifier(data, val, epochs=12, seed=0, num_classes=10)

    clean = fit(train)
    noisy, relabel = flip_labels(train, 3, 8, 0.5, seed=0)
    flipped = fit(noisy)
    trigger = corner_trigger(size=4, value=1.0, corner="bottom_right")
    poisoned, ids, true_labels = poison(train, trigger, 0, 0.05, seed=0)
    backdoored = fit(poisoned)
    backdoor = {"backdoor_trigger": trigger, "backdoor_target": 0, "forget_ids": ids}
    trained = {"clean": clean, "flipped": flipped, "backdoored": backdoored}
    out: dict[str, Any] = {"trained": {n: weights_digest(m) for n, m in trained.items()}}
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "class": lambda: _unlearned(clean, train, val, forget_classes=[3]),
        "class_gauss_newton": lambda: _unlearned(
            clean, train, val, forget_classes=[3], solve={"curvature": "gauss_newton"}
        ),
        "samples": lambda: _unlearned(clean, train, val, forget_ids=list(range(0, 400, 20))),
        "relabel": lambda: _unlearned(flipped, noisy, val, relabel=relabel),
        "backdoor": lambda: _unlearned(backdoored, poisoned, val, **backdoor),
        "backdoor_labels": lambda: _unlearned(
            backdoored, poisoned, val, backdoor_true_labels=true_labels, **backdoor
        ),
    }
    for name, run in runs.items():
        out[name] = run()
        print(f"  {name}: {out[name]['weights']} {out[name]['reason'][:70]}", flush=True)
    return out


def scores() -> dict[str, str]:
    """The scores of each estimator on 200 digits training rows and 20 queries (the exact
    curvatures: 10 rows, 2 queries)."""
    train, val, test = digits_splits(0)
    model = train_classifier(train, val, epochs=4, seed=0, num_classes=10).eval()
    x, y = train.tensors
    data, query = (x[:200], y[:200]), (test.tensors[0][:20], test.tensors[1][:20])
    settings: dict[str, dict[str, Any]] = {
        "ekfac_last": {},
        "ekfac_all": {"layers": "all"},
        "kfac_all": {"curvature": "kfac", "layers": "all"},
        "ekfac_all_projected": {"layers": "all", "projection": 8},
        "gauss_newton": {"curvature": "gauss_newton", "damping": 0.1},
        "hessian": {"curvature": "hessian", "damping": 0.1},
    }
    out = {}
    for name, opts in settings.items():
        if name in ("gauss_newton", "hessian"):  # a Krylov solve per row: fewer rows
            data, query = (data[0][:10], data[1][:10]), (query[0][:2], query[1][:2])
        s = li.influence_scores(model, data, query, hessian_data=data, **opts)
        out[name] = digest([s, li.self_influence(model, data, hessian_data=data, **opts)])
        print(f"  scores {name}: {out[name]}", flush=True)
    return out


def demo() -> dict[str, Any]:
    from lightning_influence.demos.demo import run_demo

    results = run_demo(forget_class=3, seed=0)
    return {name: {k: v for k, v in d.items() if k != "seconds"} for name, d in results.items()}


def fingerprint() -> dict[str, Any]:
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"forget_tasks": forget_tasks(), "scores": scores(), "demo": demo()}


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Where ``new`` differs from ``old``, as 'path: old -> new' lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in differences(old.get(k), new.get(k), f"{path}/{k}")]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the fingerprints here (JSON)")
    p.add_argument("--compare", type=Path, help="compare with this file; exit 1 if any differ")
    args = p.parse_args(argv)
    result = fingerprint()
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))
    if args.compare:
        diff = differences(json.loads(args.compare.read_text()), json.loads(json.dumps(result)))
        print("\n".join(diff) or "every fingerprint is unchanged")
        sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
