"""Forgetting metrics as torchmetrics ``Metric`` objects.

Every metric here is updated with ``(logits, targets)`` and splits the samples into a
*forget* part and a *retained* part:

- by class (the default): a sample is "forget" when its label is in ``forget_classes``;
- by mask (sample removal, label change): ``update(logits, targets, forget_mask)`` with a
  boolean mask overrides the class rule for that batch.

States are plain sums (``dist_reduce_fx="sum"``), so values are exact under DDP and across
any split of the data into batches.

An empty part has no defined value: accuracies and losses over zero samples are ``nan``
(not 0, which would read as "perfectly forgotten" or "perfect loss"), and F1 is ``nan``
whenever either accuracy is. Check with ``math.isnan`` before comparing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from lightning_influence.data._modules import eval_mode, model_device
from lightning_influence.data.batches import parse_batch
from lightning_influence.data.forward import call_model, inputs_to, logits_of

__all__ = [
    "ExclusiveLoss",
    "ForgetAccuracy",
    "ForgettingF1",
    "RetainedAccuracy",
    "SelfLoss",
    "UnlearningMetrics",
    "evaluate",
    "forgetting_f1",
    "unlearning_metrics",
]

METRIC_KEYS = ("forget_acc", "retain_acc", "f1", "exclusive_loss", "self_loss")


def forgetting_f1(forget_acc: float | Tensor, retain_acc: float | Tensor) -> Tensor:
    """F1 of forgetting: ``2 (1 - a_f) a_r / ((1 - a_f) + a_r)``; 0 when both terms are 0.

    Harmonic mean of "how much was forgotten" and "how much utility is left"; ``nan`` if
    either input is ``nan`` (an empty forget or retained part).
    """
    a_f = torch.as_tensor(forget_acc, dtype=torch.float64)
    a_r = torch.as_tensor(retain_acc, dtype=torch.float64)
    forgot = 1.0 - a_f
    denom = forgot + a_r
    f1 = torch.where(denom > 0, 2.0 * forgot * a_r / denom.clamp_min(1e-300), 0.0)
    return torch.where(torch.isnan(a_f) | torch.isnan(a_r), torch.nan, f1)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` in float64, ``nan`` when ``den == 0``."""
    num = num.to(torch.float64)
    den = den.to(torch.float64)
    return torch.where(den > 0, num / den.clamp_min(1), torch.nan)


class _SplitMetric(Metric):
    """Base: holds the forget rule and splits each batch into forget / retained samples.

    A subclass names its states: float64 sums (``sum_states``) and integer counts
    (``count_states``), each summed across processes.
    """

    is_differentiable = False
    full_state_update = False
    sum_states: tuple[str, ...] = ()
    count_states: tuple[str, ...] = ()

    def __init__(
        self,
        forget_classes: Sequence[int] | None = None,
        num_classes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        classes = tuple(int(c) for c in (forget_classes or ()))
        if num_classes is not None:
            if num_classes < 1:
                raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
            bad = [c for c in classes if not 0 <= c < num_classes]
            if bad:
                raise ValueError(
                    f"forget_classes {bad} are outside the valid labels 0..{num_classes - 1}."
                )
        self.forget_classes = classes
        self.num_classes = num_classes
        for name in self.sum_states:
            self.add_state(
                name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )
        for name in self.count_states:
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _split(
        self, logits: Tensor, targets: Tensor, forget_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Validate inputs; return (forget mask, targets as int64)."""
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape [N, C], got {tuple(logits.shape)}.")
        targets = targets.reshape(-1).long()
        if targets.shape[0] != logits.shape[0]:
            raise ValueError(
                f"logits ({logits.shape[0]}) and targets ({targets.shape[0]}) "
                "have different numbers of samples."
            )
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[1]} classes, the metric expects {self.num_classes}."
            )
        if targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
            raise ValueError(
                f"targets must lie in 0..{logits.shape[1] - 1} (the logits have "
                f"{logits.shape[1]} classes); got labels {int(targets.min())}..{int(targets.max())}."
            )
        if forget_mask is not None:
            mask = forget_mask.reshape(-1).to(device=targets.device, dtype=torch.bool)
            if mask.shape[0] != targets.shape[0]:
                raise ValueError(
                    f"forget_mask has {mask.shape[0]} entries for {targets.shape[0]} samples."
                )
            return mask, targets
        if not self.forget_classes:
            raise ValueError(
                f"{type(self).__name__} has no forget_classes: pass them at construction or "
                "give update() a forget_mask."
            )
        classes = torch.tensor(self.forget_classes, device=targets.device)
        return torch.isin(targets, classes), targets


class _AccuracyCounts(_SplitMetric):
    """Correct/total counts for the forget and retained parts (used by the accuracies, F1)."""

    count_states = ("correct_f", "total_f", "correct_r", "total_r")

    def update(self, logits: Tensor, targets: Tensor, forget_mask: Tensor | None = None) -> None:
        """Count correct argmax predictions on each part of the batch."""
        mask, targets = self._split(logits, targets, forget_mask)
        correct = logits.argmax(dim=-1) == targets
        self.correct_f += (correct & mask).sum()
        self.total_f += mask.sum()
        self.correct_r += (correct & ~mask).sum()
        self.total_r += (~mask).sum()


class ForgetAccuracy(_AccuracyCounts):
    """Accuracy a_f on forget samples (label in ``forget_classes`` or ``forget_mask`` true).

    Lower is better after unlearning. ``nan`` when no forget sample was seen.
    """

    higher_is_better = False

    def compute(self) -> Tensor:
        return _ratio(self.correct_f, self.total_f)


class RetainedAccuracy(_AccuracyCounts):
    """Accuracy a_r on retained samples (everything not forget). ``nan`` when none was seen."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return _ratio(self.correct_r, self.total_r)


class ForgettingF1(_AccuracyCounts):
    """F1 of forgetting, ``2 (1 - a_f) a_r / ((1 - a_f) + a_r)``.

    Holds both parts' counts itself, so it needs no other metric. 0 when ``a_f = 1`` and
    ``a_r = 0``; ``nan`` when either part is empty (forgetting or utility unmeasurable).
    """

    higher_is_better = True

    def compute(self) -> Tensor:
        return forgetting_f1(
            _ratio(self.correct_f, self.total_f), _ratio(self.correct_r, self.total_r)
        )


class _MeanCrossEntropy(_SplitMetric):
    """Mean cross-entropy over one part (forget or retained) of the samples."""

    higher_is_better = None  # judged against a retrained reference: |EL - EL_retrain|
    _on_forget: bool
    sum_states = ("loss_sum",)
    count_states = ("total",)

    def update(self, logits: Tensor, targets: Tensor, forget_mask: Tensor | None = None) -> None:
        """Accumulate per-sample cross-entropy (float64 sums) on this metric's part."""
        mask, targets = self._split(logits, targets, forget_mask)
        part = mask if self._on_forget else ~mask
        if not bool(part.any()):
            return
        losses = F.cross_entropy(logits[part].float(), targets[part], reduction="none")
        self.loss_sum += losses.to(torch.float64).sum()
        self.total += part.sum()

    def compute(self) -> Tensor:
        return _ratio(self.loss_sum, self.total)


class ExclusiveLoss(_MeanCrossEntropy):
    """EL: mean cross-entropy on retained samples. ``nan`` when none was seen."""

    _on_forget = False


class SelfLoss(_MeanCrossEntropy):
    """SL: mean cross-entropy on forget samples. ``nan`` when none was seen."""

    _on_forget = True


class UnlearningMetrics(MetricCollection):
    """The five forgetting metrics under the keys ``forget_acc``, ``retain_acc``, ``f1``,
    ``exclusive_loss``, ``self_loss`` (plus ``prefix``/``postfix``).

    ``update(logits, targets, forget_mask=None)`` is forwarded to every metric.
    """

    def __init__(
        self,
        forget_classes: Sequence[int] | None = None,
        num_classes: int | None = None,
        prefix: str | None = None,
        postfix: str | None = None,
    ) -> None:
        kw: dict[str, Any] = {"forget_classes": forget_classes, "num_classes": num_classes}
        super().__init__(
            {
                "forget_acc": ForgetAccuracy(**kw),
                "retain_acc": RetainedAccuracy(**kw),
                "f1": ForgettingF1(**kw),
                "exclusive_loss": ExclusiveLoss(**kw),
                "self_loss": SelfLoss(**kw),
            },
            prefix=prefix,
            postfix=postfix,
            # The metrics' states differ; grouping would save nothing and hides bugs.
            compute_groups=False,
        )


def unlearning_metrics(
    forget_classes: Sequence[int] | None = None,
    num_classes: int | None = None,
    prefix: str | None = None,
) -> UnlearningMetrics:
    """Functional spelling of :class:`UnlearningMetrics`."""
    return UnlearningMetrics(forget_classes, num_classes=num_classes, prefix=prefix)


# ----------------------------------------------------------------------------- evaluation


def _unpack(parsed: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    """Accept what a batch parser returns: a ParsedBatch-like object or an (x, y[, ids]) tuple."""
    if hasattr(parsed, "x") and hasattr(parsed, "y"):
        return parsed.x, parsed.y, getattr(parsed, "ids", None)
    p = parse_batch(parsed)
    return p.x, p.y, p.ids


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataloader: Iterable[Any],
    forget_classes: Sequence[int] | None = None,
    batch_parser: Callable[[Any], Any] | None = None,
    device: torch.device | str | None = None,
    forget_ids: Collection[int] | None = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """One no-grad, eval-mode pass; returns the five metric values as floats.

    Batches are read with ``batch_parser`` (default :func:`~lightning_influence.data.batches.parse_batch`:
    ``(x, y)``, ``(x, y, ids)`` or dicts); a parser may return a ``ParsedBatch`` or a tuple.

    ``forget_ids`` (sample removal) marks forget samples by the batches' ids instead of
    their class, so batches must carry ids. ``device`` (default: the model's) is where
    inputs go; the model is not moved. Every submodule's train/eval flag is restored after,
    even when the pass fails.
    """
    if forget_ids is None and not forget_classes:
        raise ValueError("evaluate() needs forget_classes or forget_ids.")
    parser = batch_parser or parse_batch
    dev = torch.device(device) if device is not None else model_device(model)
    metrics = UnlearningMetrics(forget_classes, num_classes=num_classes).to(dev)
    id_set = torch.tensor(sorted(int(i) for i in forget_ids), device=dev) if forget_ids else None
    with eval_mode(model):
        seen = 0
        for batch in dataloader:
            x, y, ids = _unpack(parser(batch))
            x, y = inputs_to(x, dev), y.to(dev)
            mask = None
            if forget_ids is not None:
                if ids is None:
                    raise ValueError("forget_ids needs batches with ids: (x, y, ids).")
                ids = torch.as_tensor(ids, device=dev).reshape(-1)
                mask = (
                    torch.isin(ids, id_set)
                    if id_set is not None
                    else torch.zeros_like(ids, dtype=torch.bool)
                )
            metrics.update(logits_of(call_model(model, x)), y, forget_mask=mask)
            seen += int(y.numel())
        if seen == 0:
            raise ValueError("evaluate() got no samples from the dataloader.")
        return {k: float(v) for k, v in metrics.compute().items()}
