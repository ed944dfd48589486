"""Training dynamics: the area under the margin (AUM) of every training sample, recorded
during ``fit``.

A sample's margin at a training step is its assigned label's logit minus the largest other
logit. A mislabelled sample is pushed towards its (wrong) label by its own gradient and away
from it by every similar sample, so its margin stays low or negative for most of training;
a hard but correctly labelled sample's margin rises as training goes on. The mean margin over
all steps a sample was seen (its AUM; Pleiss et al., NeurIPS 2020) separates the two where
the final loss, one snapshot at the end, cannot. Lower AUM = more suspicious.

:class:`MarginCallback` records it with a forward hook on the LightningModule during
training batches: two numbers per sample (sum and count of margins), no extra forward pass,
no gradient. Under DDP each rank records its own batches and :meth:`MarginCallback.aum`
sums over the ranks. The sums are the callback's ``state_dict``, so a resumed fit goes on
adding to them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from lightning_influence.attribution.figures import (
    AUM_HISTOGRAM_TAG,
    log_figure,
    score_histogram_array,
    takes_images,
)
from lightning_influence.data.batches import BatchParser
from lightning_influence.data.model_task import ModelTask
from lightning_influence.unlearn.settings import _check_number

__all__ = ["MarginCallback", "margins"]


def margins(logits: Tensor, labels: Tensor) -> Tensor:
    """Per row: the labelled class's logit minus the largest other logit.

    Args:
        logits: ``[B, C]`` logits.
        labels: ``[B]`` class indices.
    """
    logits = logits.detach().float()
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf"))
    return own - others.max(dim=1).values


class MarginCallback(pl.Callback):
    """Record every training sample's margin at every training step; :meth:`aum` ranks them.

    Batches need sample ids (``(x, y, idx)``, dicts with an id key; see
    :class:`~lightning_influence.IndexedDataset`): a shuffled loader's positions are not ids.
    The model's output during ``training_step`` must hold the logits for the batch's rows
    (``logits_fn`` otherwise); a forward on other rows (e.g. a second view) is not recorded.

    Args:
        batch_parser: turns a training batch into a :class:`~lightning_influence.Batch`.
        logits_fn: ``logits_fn(output) -> logits`` where the forward returns something else.
        start_epoch: the first epoch recorded (0: from the start).
        flag_share: the share of recorded samples :meth:`flagged` returns (the lowest AUM),
            also the cut drawn on the AUM histogram that the end of training logs to every
            logger that takes images (``dynamics/aum_histogram``; needs matplotlib).
        model_task: ``batch_parser`` and ``logits_fn`` as one
            :class:`~lightning_influence.ModelTask` (give either it or the loose keywords).
    """

    def __init__(
        self,
        batch_parser: BatchParser | None = None,
        logits_fn: Callable[[Any], Tensor] | None = None,
        start_epoch: int = 0,
        flag_share: float = 0.05,
        model_task: ModelTask | None = None,
    ) -> None:
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"start_epoch must be an integer >= 0, got {start_epoch!r}.")
        _check_number(flag_share, "flag_share")  # the settings' own check and message
        if not 0.0 < flag_share <= 1.0:
            raise ValueError(f"flag_share must be in (0, 1], got {flag_share!r}.")
        self.flag_share = float(flag_share)
        self.model_task = ModelTask.of(model_task, batch_parser=batch_parser, logits_fn=logits_fn)
        self.start_epoch = start_epoch
        self.sums = torch.zeros(0, dtype=torch.float64)
        self.counts = torch.zeros(0, dtype=torch.long)
        self._pending: tuple[Tensor, Tensor] | None = None
        self._handle: Any = None
        #: wall-clock seconds spent recording (parsing ids, computing and adding margins)
        self.seconds = 0.0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(start_epoch=self.start_epoch)

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._handle = pl_module.register_forward_hook(self._record)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if any(takes_images(lg) for lg in trainer.loggers):
            _, aum = self.aum(trainer)  # every rank takes part in the sum
            if aum.numel() > 0:
                self._log_histogram(trainer, aum)

    @rank_zero_only
    def _log_histogram(self, trainer: pl.Trainer, aum: Tensor) -> None:
        try:
            array = score_histogram_array(aum, self._cut(aum), "area under the margin", "below")
        except ImportError:  # matplotlib is optional
            return
        for logger in trainer.loggers:
            log_figure(logger, AUM_HISTOGRAM_TAG, array, trainer.global_step)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._pending = None
        if trainer.current_epoch < self.start_epoch:
            return
        start = time.perf_counter()
        parsed = self.model_task.parse(batch)
        if parsed.ids is None:
            raise ValueError(
                "MarginCallback needs sample ids in the training batches ((x, y, idx) or a dict "
                "with an id key): wrap the dataset in lightning_influence.IndexedDataset."
            )
        self._pending = (torch.as_tensor(parsed.ids).reshape(-1).cpu().long(), parsed.y)
        self.seconds += time.perf_counter() - start

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "counts": self.counts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sums = state_dict["sums"].to(torch.float64)
        self.counts = state_dict["counts"].long()

    # ------------------------------------------------------------------ recording

    def _record(self, module: Any, args: Any, output: Any) -> None:
        if self._pending is None or not module.training:
            return
        start = time.perf_counter()
        ids, labels = self._pending
        logits = self.model_task.logits_of(output)
        if logits.ndim != 2 or logits.shape[0] != ids.numel():
            return  # a forward on other rows than the batch's
        self._pending = None  # one record per batch
        m = margins(logits, labels.to(logits.device).long()).cpu().double()
        self._grow(int(ids.max()) + 1)
        self.sums.index_add_(0, ids, m)
        self.counts.index_add_(0, ids, torch.ones_like(ids))
        self.seconds += time.perf_counter() - start

    def _grow(self, size: int) -> None:
        if size > self.sums.numel():
            pad = size - self.sums.numel()
            self.sums = torch.cat([self.sums, torch.zeros(pad, dtype=torch.float64)])
            self.counts = torch.cat([self.counts, torch.zeros(pad, dtype=torch.long)])

    # ------------------------------------------------------------------ results

    def aum(self, trainer: pl.Trainer | None = None) -> tuple[Tensor, Tensor]:
        """``(ids, aum)`` of every recorded sample, ids ascending; lower AUM = more suspicious.

        Args:
            trainer: under DDP, the trainer whose strategy sums the ranks' records (every rank
                must call it); None: this process's records only.
        """
        sums, counts = self.sums, self.counts
        if trainer is not None and trainer.world_size > 1:
            size = int(trainer.strategy.reduce(torch.tensor(float(sums.numel())), reduce_op="max"))
            self._grow(size)
            sums = trainer.strategy.reduce(self.sums.clone(), reduce_op="sum")
            counts = trainer.strategy.reduce(self.counts.clone(), reduce_op="sum")
        seen = torch.nonzero(counts > 0).reshape(-1)
        return seen, (sums[seen] / counts[seen]).float()

    def _k(self, n: int) -> int:
        return max(1, round(self.flag_share * n))

    def _cut(self, aum: Tensor) -> float:
        """The largest AUM among the ``flag_share`` lowest (flagged: AUM <= cut)."""
        return float(torch.sort(aum).values[self._k(aum.numel()) - 1])

    def flagged(self, trainer: pl.Trainer | None = None) -> Tensor:
        """Ids of the ``flag_share`` of recorded samples with the lowest AUM, most suspicious
        first (``trainer``: as in :meth:`aum`)."""
        ids, aum = self.aum(trainer)
        if ids.numel() == 0:
            return ids
        order = torch.argsort(aum)[: self._k(aum.numel())]
        return ids[order]
