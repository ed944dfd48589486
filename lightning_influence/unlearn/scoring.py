"""Score a model on validation data: what the step search optimises and the report shows.

A :class:`Scorer` answers two questions about the current weights:

- ``score(model) -> (forget, retain)``: the *forget score* (lower is more forgotten; 0 means
  forgetting is complete for every built-in task) and the retained accuracy, from which the
  step search computes the forgetting F1 ``2 (1 - forget) retain / ((1 - forget) + retain)``;
- ``metrics(model) -> dict``: the named values reported before and after unlearning.

Two scorers cover the four forget tasks:

- :class:`SplitScorer`: accuracy on the rows to forget vs accuracy on the others (class
  removal: the forget classes' validation samples; label change: the relabelled training
  samples with their old labels; backdoor repair: triggered validation inputs labelled with
  the attack target, so the forget score is the attack success rate).
- :class:`MembershipScorer` (sample removal): a model that never saw a sample treats it
  like held-out data, so the forget score is how much lower the forgotten samples' loss is
  than the validation loss of their classes (0 once it is as high).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_influence.data._modules import eval_mode, model_device
from lightning_influence.data.distributed import Shards, active_shards
from lightning_influence.data.forward import LossFn, call_model, inputs_rows, inputs_take, logits_of
from lightning_influence.data.pool import Rows
from lightning_influence.measure.faithfulness import ConfidenceAttack, label_confidence
from lightning_influence.measure.metrics import (
    ExclusiveLoss,
    ForgetAccuracy,
    ForgettingF1,
    RetainedAccuracy,
    SelfLoss,
    forgetting_f1,
)
from lightning_influence.solve.curvature import default_loss, per_sample_loss
from lightning_influence.unlearn.memorised import Memorised, memorised_rows
from lightning_influence.unlearn.output_layer import OutputLayerInputs
from lightning_influence.unlearn.step import Score

__all__ = [
    "FittedScorer",
    "MembershipScorer",
    "Scorer",
    "SplitScorer",
    "mia_efficacy",
    "predict_logits",
]


#: Rows per forward pass when scoring. On CPU a small chunk keeps each layer's activations
#: in cache: the Fashion-MNIST CNN scores 6,000 images in 0.9 s at 128 rows and in 2.1 s at
#: 1,024 (one thread), and two processes sharing the cores slow each other less. On GPU a
#: large chunk fills the device.
CPU_CHUNK, GPU_CHUNK = 128, 1024


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int | None = None) -> Tensor:
    """Logits of ``model`` (eval mode, no grad) on ``x``, in chunks of ``batch_size`` rows
    (None: :data:`GPU_CHUNK` on CUDA, else :data:`CPU_CHUNK`)."""
    with eval_mode(model):
        step = batch_size or (GPU_CHUNK if model_device(model).type == "cuda" else CPU_CHUNK)
        return torch.cat(
            [
                logits_of(call_model(model, inputs_take(x, slice(i, i + step))))
                for i in range(0, inputs_rows(x), step)
            ]
        )


class _ShardedInputs:
    """Scoring inputs split over the processes: each predicts its block, all get every logit."""

    def __init__(self, x: Tensor, shards: Shards) -> None:
        self.n, self.shards = inputs_rows(x), shards
        self.local = inputs_take(x, shards.block(self.n)) if shards.split else x

    def gather(self, local_logits: Tensor) -> Tensor:
        return self.shards.gather(local_logits, self.n)

    def logits(self, model: nn.Module) -> Tensor:
        return self.gather(predict_logits(model, self.local))


def share_predicted(model: nn.Module, x: Tensor, label: int) -> float:
    """Share of the inputs ``x`` that the model classifies as ``label`` (split over the
    processes like every scorer)."""
    logits = _ShardedInputs(x, active_shards()).logits(model)
    return float((logits.argmax(-1) == label).float().mean())


class Scorer(ABC):
    """Validation scoring of one forget task (see the module doc)."""

    @abstractmethod
    def score(self, model: nn.Module) -> tuple[float, float]:
        """``(forget score, retained accuracy)`` at the current weights."""

    @abstractmethod
    def metrics(self, model: nn.Module) -> dict[str, float]:
        """The named values reported before and after unlearning."""

    def remember_reference(self, model: nn.Module) -> None:
        """Record what a floor of the scorer's own is measured from, at the unchanged
        weights; called once before any step. The base class has no such floor."""
        return None

    @contextmanager
    def only_moving(self, model: nn.Module, layer_name: str) -> Iterator[bool]:
        """Within the block, only ``layer_name``'s parameters change: a scorer may score
        from that layer's recorded inputs (:mod:`lightning_influence.unlearn.output_layer`). Yields
        whether it does; the base class never does."""
        yield False


class SplitScorer(Scorer):
    """Accuracy on the rows to forget (``forget_mask``) vs on every other row.

    Args:
        x: scoring inputs on the model's device.
        y: their labels (for the forget rows: the label that must no longer be predicted).
        forget_mask: bool ``[N]``, True for the rows to forget.
        new_labels: for label change, the corrected labels of the forget rows; adds
            ``relabel_acc`` (share of them now predicted as the new label) to the metrics.
        forget_name: an extra metric key under which the forget accuracy is also reported
            (e.g. ``attack_success_rate`` for backdoor repair).
        guarded: bool ``[N]``, retained rows with a floor of their own (label change: the
            validation rows of the relabelled rows' old classes).
            :meth:`remember_reference` (the unchanged model, before any step) records their
            accuracy; a later score whose guarded accuracy falls more than ``guarded_drop``
            below it is a :class:`~lightning_influence.unlearn.step.Score` with ``guard_broken``,
            which the step search and the response descent never keep.
        guarded_drop: the guarded rows' budget.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        forget_mask: Tensor,
        new_labels: Tensor | None = None,
        forget_name: str | None = None,
        guarded: Tensor | None = None,
        guarded_drop: float = 0.05,
    ) -> None:
        self.x, self.y, self.mask = x, y.long(), forget_mask.to(torch.bool)
        has_rows = guarded is not None and bool(guarded.any())
        self.guarded = guarded.to(torch.bool) if has_rows else None
        self.guarded_drop = guarded_drop
        self.guarded_reference: float | None = None
        self._inputs = _ShardedInputs(x, active_shards())
        self.new_labels, self.forget_name = new_labels, forget_name
        self._recorded: OutputLayerInputs | None = None

    @contextmanager
    def only_moving(self, model: nn.Module, layer_name: str) -> Iterator[bool]:
        local = self._inputs.local
        self._recorded = OutputLayerInputs.record(model, layer_name, predict_logits, local)
        try:
            yield self._recorded is not None
        finally:
            self._recorded = None

    def _logits(self, model: nn.Module) -> Tensor:
        if self._recorded is not None:
            return self._inputs.gather(self._recorded.logits())
        return self._inputs.logits(model)

    def _correct(self, model: nn.Module) -> Tensor:
        return self._logits(model).argmax(-1) == self.y

    def remember_reference(self, model: nn.Module) -> None:
        if self.guarded is not None:
            self.guarded_reference = float(self._correct(model)[self.guarded].float().mean())

    def score(self, model: nn.Module) -> Score:
        ok = self._correct(model)
        broken = False
        if self.guarded is not None and self.guarded_reference is not None:
            guarded = float(ok[self.guarded].float().mean())
            broken = guarded < self.guarded_reference - self.guarded_drop
        return Score(ok[self.mask].float().mean(), ok[~self.mask].float().mean(), broken)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        logits = self._inputs.logits(model)
        out = {}
        for key, cls in (
            ("forget_acc", ForgetAccuracy),
            ("retain_acc", RetainedAccuracy),
            ("f1", ForgettingF1),
            ("exclusive_loss", ExclusiveLoss),
            ("self_loss", SelfLoss),
        ):
            metric = cls(sync_on_compute=False).to(logits.device)
            metric.update(logits, self.y, forget_mask=self.mask)
            out[key] = float(metric.compute())
        if self.new_labels is not None:
            pred = logits[self.mask].argmax(-1)
            out["relabel_acc"] = float((pred == self.new_labels.to(pred.device)).float().mean())
        if self.forget_name:
            out[self.forget_name] = out["forget_acc"]
        return out


def mia_efficacy(model: nn.Module, forget: Rows, retained: Rows, heldout: Rows) -> float:
    """SalUn's MIA-efficacy at the current weights: a confidence attack fitted on
    ``retained`` (members) vs ``heldout`` (non-members) rows, applied to ``forget``: the
    share of the forgotten rows it calls non-members (see
    :mod:`lightning_influence.measure.faithfulness`)."""
    conf = [label_confidence(predict_logits(model, r.x), r.y) for r in (forget, retained, heldout)]
    return ConfidenceAttack.fit(conf[1], conf[2]).efficacy(conf[0])


class FittedScorer(Scorer):
    """Sample removal, "as far as the budget allows": the forget score is the mean
    probability the model gives the forgotten rows' labels, so the step search raises their
    loss until the retained validation accuracy's budget is spent. Samples a retrained model
    would still classify correctly (like validation data) cannot go far without costing
    validation accuracy; memorised ones (a wrong label the model fitted) can, and do.

    Args:
        forget: the forgotten training rows on the model's device.
        val: the validation rows on the model's device.
    """

    def __init__(self, forget: Rows, val: Rows) -> None:
        self.forget, self.val = forget, val
        shards = active_shards()
        self._forget_inputs = _ShardedInputs(forget.x, shards)
        self._val_inputs = _ShardedInputs(val.x, shards)

    def _values(self, model: nn.Module) -> dict[str, float]:
        f_logits = self._forget_inputs.logits(model)
        v_logits = self._val_inputs.logits(model)
        return {
            "forget_confidence": float(label_confidence(f_logits, self.forget.y).mean()),
            "retain_acc": float((v_logits.argmax(-1) == self.val.y).float().mean()),
            "forget_acc": float((f_logits.argmax(-1) == self.forget.y).float().mean()),
        }

    def score(self, model: nn.Module) -> tuple[float, float]:
        v = self._values(model)
        return v["forget_confidence"], v["retain_acc"]

    def metrics(self, model: nn.Module) -> dict[str, float]:
        v = self._values(model)
        v["f1"] = float(forgetting_f1(v["forget_confidence"], v["retain_acc"]))
        return v


class MembershipScorer(Scorer):
    """Sample removal: do the forgotten samples look like held-out data to the model?

    The *held-out loss* is the median validation loss of the forgotten samples' classes,
    weighted by how many forgotten samples each class has (the median over all validation
    samples for a class without any), measured once, on the weights of the first call (the
    model before unlearning), so that a step cannot move its own target. The forget score
    ("familiarity") is ``max(0, 1 - forget_loss / heldout_loss)`` with ``forget_loss`` the
    median loss of the forgotten samples: near 1 when the model fits them far better than
    unseen samples of their classes, 0 once it fits them no better. Medians, because losses
    are heavy-tailed: a few misclassified validation samples would otherwise set a target
    that a typical unseen sample never reaches. The retained accuracy is the validation
    accuracy.

    A loss cannot tell a memorised sample (a flipped label the model fitted) from a typical
    one: held-out samples of its labelled class are fitted too. So the forgotten rows that
    the model fits against held-out data (:func:`~lightning_influence.unlearn.memorised.memorised_rows`,
    judged once, at the first call's weights) have a score of their own: the share of them
    still predicted as their label (``memorised_target="zero"``), or how far that share is
    above the share a model that never saw them would predict so, estimated from their
    validation neighbours (``"expected"``; calibrated on validation rows:
    ``"calibrated"``), as a fraction of the way from there to all of them. The forget score
    is the larger of the two, so forgetting is complete once the median loss is
    held-out-like *and* the memorised rows are unfitted (or no more fitted than the estimate
    says retraining would leave them).

    Forgetting must not go far past retraining either. A model that never saw the forgotten
    rows still predicts most of them right (the ones it could learn from other data), so a
    point whose forget accuracy falls below that accuracy, estimated from validation rows
    (:meth:`~lightning_influence.unlearn.memorised.Memorised.unseen_accuracy`: memorised rows at 0,
    the others at their calibrated rates), by more than three standard errors of the
    estimate, breaks the scorer's guard (:class:`~lightning_influence.unlearn.step.Score`): it is
    never kept, as a point below the retained-accuracy floor. Before the guard, 20 typical
    images deleted from a ResNet-18 went from 0.90 to 0.10 accuracy where held-out images
    of their classes get 0.79. The floor is reported as ``forget_floor``.

    Args:
        forget: the forgotten training rows (inputs, labels) on the model's device.
        val: the validation rows on the model's device.
        loss_fn: the run's mean-reduced ``loss_fn(logits, targets)``, applied per sample
            (None: cross-entropy).
        memorised: judge which rows are memorised (False: the loss alone).
        memorised_target: ``"zero"``, ``"expected"`` or ``"calibrated"`` (the estimate
            calibrated on validation rows, :meth:`Memorised.calibrated_share`; see above).
    """

    #: points whose forget accuracy is below ``forget_floor`` break the scorer's guard
    #: (never kept); False turns the guard off (a benchmark lever)
    guard_over_forgetting: bool = True

    def __init__(
        self,
        forget: Rows,
        val: Rows,
        loss_fn: LossFn | None = None,
        memorised: bool = True,
        memorised_target: str = "zero",
    ) -> None:
        self.forget, self.val, self.loss_fn = forget, val, loss_fn
        self.judge_memorised, self.memorised_target = memorised, memorised_target
        #: the memorised rows (None until the first call, or not judged)
        self.memorised: Memorised | None = None
        self._judged = False
        self._memorised_source: MembershipScorer | None = None
        self._start_acc: float | None = None
        classes, counts = torch.unique(forget.y, return_counts=True)
        weights = counts.double() / len(forget)
        self.class_weights = {int(c): float(w) for c, w in zip(classes, weights, strict=True)}
        self.heldout_loss: float | None = None
        shards = active_shards()
        self._forget_inputs = _ShardedInputs(forget.x, shards)
        self._val_inputs = _ShardedInputs(val.x, shards)

    def _losses(self, logits: Tensor, y: Tensor) -> Tensor:
        return per_sample_loss(self.loss_fn or default_loss, logits, y)

    def _heldout(self, v_loss: Tensor) -> float:
        overall = float(v_loss.median())
        total = 0.0
        for c, w in self.class_weights.items():
            in_class = self.val.y == c
            total += w * (float(v_loss[in_class].median()) if bool(in_class.any()) else overall)
        return total

    def _values(self, model: nn.Module) -> dict[str, float]:
        f_logits = self._forget_inputs.logits(model)
        v_logits = self._val_inputs.logits(model)
        if self.heldout_loss is None:
            v_loss = self._losses(v_logits, self.val.y)
            self.heldout_loss = self._heldout(v_loss)
        self._judge(model)
        forget_loss = float(self._losses(f_logits, self.forget.y).median())
        held = self.heldout_loss
        familiarity = max(0.0, 1.0 - forget_loss / held) if held > 0 else 0.0
        fitted = f_logits.argmax(-1) == self.forget.y
        values = {
            "familiarity": familiarity,
            "retain_acc": float((v_logits.argmax(-1) == self.val.y).float().mean()),
            "forget_acc": float(fitted.float().mean()),
            "forget_loss": forget_loss,
            "heldout_loss": held,
        }
        m = self.memorised
        if m is not None and bool(m.rows.any()):
            share, expected = float(fitted[m.rows].float().mean()), m.expected_share()
            calibrated = m.calibrated_share()
            target = {"expected": expected, "calibrated": calibrated}.get(
                self.memorised_target, 0.0
            )
            values["memorised"] = float(m.rows.sum())
            values["memorised_fitted"] = share
            values["memorised_expected"] = expected
            values["memorised_calibrated"] = calibrated
            values["memorised_score"] = max(0.0, share - target) / (1.0 - target)
        floor = self._forget_floor(fitted)
        if floor is not None:
            values["forget_floor"] = floor
        return values

    def _forget_floor(self, fitted: Tensor) -> float | None:
        """The forget accuracy below which the forgotten rows count as over-forgotten: what
        a model that never saw them would get (:meth:`Memorised.unseen_accuracy`) less
        three times its sampling error, never above their accuracy at the first call (None: no
        calibration)."""
        m = self.memorised
        unseen = None if m is None else m.unseen_accuracy()
        if unseen is None:
            return None
        if self._start_acc is None:
            self._start_acc = float(fitted.float().mean())
        noise = 3.0 * math.sqrt(max(unseen * (1.0 - unseen), 0.0) / len(fitted))
        return min(unseen, self._start_acc) - noise

    def _judge(self, model: nn.Module) -> None:
        """Judge the memorised rows once, at the first call's weights (or take them from
        the scorer named by :meth:`share_memorised`)."""
        if self._judged:
            return
        self._judged = True
        if self._memorised_source is not None:
            self._memorised_source._judge(model)
            self.memorised = self._memorised_source.memorised
        elif self.judge_memorised:
            self.memorised = memorised_rows(model, self.forget, self.val, predict_logits)

    def share_memorised(self, source: MembershipScorer) -> None:
        """Use ``source``'s memorised rows (a scorer on a subset of the same validation
        data, e.g. the step search's, then flags the same rows as the report's)."""
        self._memorised_source = source

    @staticmethod
    def _forget_score(v: dict[str, float]) -> float:
        return max(v["familiarity"], v.get("memorised_score", 0.0))

    def _over_forgotten(self, v: dict[str, float]) -> bool:
        return (
            self.guard_over_forgetting
            and "forget_floor" in v
            and v["forget_acc"] < v["forget_floor"]
        )

    def score(self, model: nn.Module) -> Score:
        v = self._values(model)
        return Score(self._forget_score(v), v["retain_acc"], self._over_forgotten(v))

    def metrics(self, model: nn.Module) -> dict[str, float]:
        v = self._values(model)
        v["f1"] = float(forgetting_f1(self._forget_score(v), v["retain_acc"]))
        return v
