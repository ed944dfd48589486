"""Variants of the margin ranking for flipped labels, on validation flip seeds (issue 26).

``python -m benchmarks.aum_variants --seeds 100 101 102``

Whole Fashion-MNIST training split, 5 % of the labels flipped (seeds disjoint from the
reported 0-2 of :mod:`benchmarks.influence`), one 8-epoch fit of the demo recipe per seed
recorded by four ``li.MarginCallback`` s: the area under the margin from epoch 0 (the
default), 2, 4 and 6; the noisy model's loss; and the rank average of the loss and the AUM
(from epoch 0 and 4). The same fit also records, per sample and training step, what
influence along the training run needs for the output layer (:class:`InRunRecorder`): the
TracIn self-influence with a checkpoint at every step (Pruthi et al., NeurIPS 2020; its
"ideal" form: the sum over the steps that saw a sample of its output-layer gradient's squared
norm, ||p - y||^2 (||h||^2 + 1) for softmax cross-entropy with inputs h; a constant step
size), the mean training loss along the run and the mean squared error of the probabilities
(Brier). Top-k precision, k = the number flipped. Writes
``benchmarks/results/aum_variants_fashion.json``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import lightning_influence as li
from benchmarks import influence as I  # noqa: N812 - the study this one varies
from benchmarks.common import machine, mean_std, write_json
from lightning_influence.demos.models import train_classifier

START_EPOCHS = (0, 2, 4, 6)


class InRunRecorder(pl.Callback):
    """Per training sample, sums over the training steps that saw it: the output layer's
    per-sample gradient's squared norm (``tracin``), the loss and the Brier error, read by a
    forward hook on the last ``nn.Linear`` during training batches ``(x, y, ids)``."""

    def __init__(self, n: int) -> None:
        self.sums = {k: torch.zeros(n, dtype=torch.float64) for k in ("tracin", "loss", "brier")}
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handle = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = [m for m in pl_module.modules() if isinstance(m, torch.nn.Linear)][-1]
        self._handle = last.register_forward_hook(self._record)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._handle.remove()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _, y, ids = batch
        self._pending = (ids.long(), y.long())

    def _record(self, module, args, output) -> None:
        if self._pending is None or not module.training:
            return
        ids, y = self._pending
        self._pending = None
        h, z = args[0].detach().double(), output.detach().double()
        error = z.softmax(-1)
        error[torch.arange(len(y)), y] -= 1.0  # p - onehot(y): dloss/dlogits
        brier = error.pow(2).sum(-1)
        self.sums["tracin"].index_add_(0, ids, brier * (h.pow(2).sum(-1) + 1.0))
        self.sums["brier"].index_add_(0, ids, brier)
        self.sums["loss"].index_add_(0, ids, F.cross_entropy(z, y, reduction="none"))


def _ranks(s: torch.Tensor) -> torch.Tensor:
    """Ranks scaled to [0, 1], higher = more suspicious."""
    r = torch.empty_like(s, dtype=torch.float64)
    r[torch.argsort(s)] = torch.arange(len(s), dtype=torch.float64)
    return r / max(len(s) - 1, 1)


def one_seed(seed: int) -> dict[str, Any]:
    train, val = I.splits("fashion", fashion_train=0)  # the whole training split
    x, y = train.tensors
    noisy, flipped = I.flip_labels(y, seed)
    truth = torch.zeros(len(y), dtype=torch.bool)
    truth[flipped] = True
    k = len(flipped)
    callbacks = {e: li.MarginCallback(start_epoch=e) for e in START_EPOCHS}
    in_run = InRunRecorder(len(y))
    start = time.perf_counter()
    model = train_classifier(
        TensorDataset(x, noisy), val, epochs=I.EPOCHS["fashion"], seed=seed, num_classes=10,
        callbacks=[*callbacks.values(), in_run],
    )  # fmt: skip
    row: dict[str, Any] = {"seed": seed, "k": k, "fit_seconds": time.perf_counter() - start}
    scores = {"loss": I.rank_loss(model.eval(), x, noisy).double()}
    for e, cb in callbacks.items():
        ids, aum = cb.aum()
        s = torch.full((len(y),), float("-inf"), dtype=torch.float64)
        s[ids] = -aum.double()
        scores[f"aum_from{e}"] = s
    for e in (0, 4):
        scores[f"rankavg_loss_aum_from{e}"] = _ranks(scores["loss"]) + _ranks(
            scores[f"aum_from{e}"]
        )
    for name, total in in_run.sums.items():  # every sample is seen once per epoch
        scores[f"in_run_{name}"] = total
    for name, s in scores.items():
        row[name] = int(truth[torch.topk(s, k).indices].sum()) / k
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102])
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rows = [one_seed(s) for s in a.seeds]
    names = [n for n in rows[0] if n not in ("seed", "k", "fit_seconds")]
    summary = {n: mean_std([r[n] for r in rows]) for n in names}
    summary["best_minus_loss"] = max(summary[n]["mean"] for n in names) - summary["loss"]["mean"]
    out = {
        "benchmark": "aum_variants",
        "command": "python -m benchmarks.aum_variants --seeds " + " ".join(map(str, a.seeds)),
        "machine": machine(),
        "summary": summary,
        "rows": rows,
    }
    write_json("aum_variants_fashion.json", out)
    return out


if __name__ == "__main__":
    main()
