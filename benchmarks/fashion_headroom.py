"""Is the Fashion-MNIST recipe's model at its optimum? Continue training it on *all* its
training data (nothing forgotten), the fine-tune baseline's recipe (Adam lr 1e-3, batch 128,
2 epochs, the epoch kept by validation accuracy), and compare test accuracy.

If continuing lifts test accuracy, the early-stopped constant-learning-rate recipe leaves
headroom that any baseline which trains further (fine-tune, random relabel, SalUn) collects
on top of forgetting, while an edit of the forgotten class's output unit cannot. Writes
``benchmarks/results/fashion_headroom.json``::

    python -m benchmarks.fashion_headroom --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from torch.utils.data import DataLoader

from benchmarks.common import machine, write_json
from benchmarks.fashion import cached_fit, splits
from benchmarks.unlearning import best_by_validation, train_epoch


@torch.no_grad()
def accuracy(model, ds) -> float:
    x, y = ds.tensors
    pred = torch.cat([model(x[i : i + 2048]).argmax(1) for i in range(0, len(y), 2048)])
    return float((pred == y).float().mean())


def continue_training(base, train, val, seed: int, epochs: int = 2):
    """A copy of ``base`` trained ``epochs`` more on ``train``; the best epoch on validation."""
    model = copy.deepcopy(base)
    loader = DataLoader(
        train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    best_by_validation(
        model, epochs, lambda: train_epoch(model, loader, opt), lambda: accuracy(model, val)
    )
    return model


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fashion_headroom", description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in a.seeds:
        train, val, test = splits(seed)
        base, info = cached_fit(f"base_seed{seed}", train, val, seed)
        start = time.perf_counter()
        model = continue_training(base, train, val, seed)
        row = {
            "seed": seed,
            "base_epochs": info.get("epochs"),
            "test_acc_base": accuracy(base, test),
            "test_acc_continued": accuracy(model, test),
            "val_acc_base": accuracy(base, val),
            "val_acc_continued": accuracy(model, val),
            "seconds": time.perf_counter() - start,
        }
        row["test_acc_gain"] = row["test_acc_continued"] - row["test_acc_base"]
        rows.append(row)
        print(row, flush=True)
    gains = [r["test_acc_gain"] for r in rows]
    write_json(
        "fashion_headroom.json",
        {
            "benchmark": "fashion_headroom",
            "command": "python -m benchmarks.fashion_headroom " + " ".join(sys.argv[1:]),
            "setup": __doc__.split("\n\n")[0],
            "machine": machine(),
            "summary": {"mean_test_acc_gain": sum(gains) / len(gains)},
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
