"""Response descent: a few optimiser steps on the objective that influence functions approximate.

An influence step is the Newton step of the corrected objective, linearised at the trained
weights θ₀. Bae et al. (NeurIPS 2022) show that what influence functions approximate is the
*proximal Bregman response function* (PBRF): the minimiser of

    J(θ) = (1/|R|) Σ_{z∈R} D(f_θ(x), f_θ₀(x))  +  mean_{z∈A} ℓ(z; θ)  −  w_U · mean_{z∈U} ℓ̄(z; θ)

with D the Bregman divergence of the loss in output space (for softmax cross-entropy the KL
divergence KL(p_θ₀ ‖ p_θ), whatever the label), R the retained samples, A the rows a
correction adds (a changed label, triggered clean samples with their labels) and U the rows
it removes. ``ℓ̄ = min(ℓ, log C)`` is the removed rows' loss capped at the loss of a uniform
guess over the C classes, so that the removal term is bounded: a removed row need not be
pushed past "never seen".

Where the linearisation is poor (a backdoor whose trigger features the Hessian subset barely
sees; memorised samples) the line search along the influence direction stops early, and a
few steps on J finish the job. :func:`response_descent` runs Adam on J, one mini-batch of
each group per step (R from the weighted Hessian subset, so no other pass over the training
data), scores the model on validation data every ``every`` steps and keeps the best-scoring
point as the step search does (forgetting F1, never below the retained-accuracy floor); the
unchanged start is a candidate, so nothing is kept unless it improves. Only the parameters
the selection lets move are updated (gradients are masked); buffers (BatchNorm statistics)
are not touched because the model runs in eval mode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_influence.data._modules import eval_mode
from lightning_influence.data.batches import Batch
from lightning_influence.data.forward import LossFn, call_model, logits_of
from lightning_influence.unlearn.step import (
    ScoreFn,
    StepOutcome,
    StepResult,
    StepTrial,
    restore_weights,
    weights_snapshot,
)

__all__ = ["ResponseData", "response_descent"]


@dataclass
class ResponseData:
    """The three groups of J (see the module doc).

    Args:
        retained: batches of retained rows (the in-memory pool of retained candidates, a
            uniform random draw of the retained set), optionally weighted.
        add: batches of rows the correction adds, or ``None``.
        remove: batches of rows it removes.
        remove_weight: w_U, the weight of the (capped) removal term (0: none).
        remove_caps: per removed row, the loss above which its removal term stops pushing,
            one tensor per batch of ``remove`` (None: every row at ``log C``, a uniform
            guess). Sample removal with ``removal_cap='expected'`` sets it from what held-out
            data says a model that never saw the row would give its label
            (:mod:`lightning_influence.unlearn.memorised`).
    """

    retained: list[Batch]
    add: list[Batch] | None
    remove: list[Batch]
    remove_weight: float
    retain_weight: float = 0.0
    remove_caps: list[Tensor] | None = None


def _logits(model: nn.Module, batch: Batch) -> Tensor:
    return logits_of(call_model(model, batch.x))


def _kl_to_anchor(logits: Tensor, anchor: Tensor, weights: Tensor | None) -> Tensor:
    log_p = F.log_softmax(logits, -1)
    per_row = (anchor.exp() * (anchor - log_p)).sum(-1)
    if weights is None:
        return per_row.mean()
    return (weights * per_row).sum() / weights.sum().clamp_min(1e-12)


def _objective(
    model: nn.Module,
    data: ResponseData,
    anchors: list[Tensor],
    loss_fn: LossFn,
    k: int,
) -> Tensor:
    i = k % len(data.retained)
    b = data.retained[i]
    logits = _logits(model, b)
    total = _kl_to_anchor(logits, anchors[i], b.weights)
    if data.retain_weight > 0:
        total = total + data.retain_weight * loss_fn(logits, b.y)
    if data.add:
        a = data.add[k % len(data.add)]
        total = total + loss_fn(_logits(model, a), a.y)
    if data.remove_weight > 0 and data.remove:
        j = k % len(data.remove)
        u = data.remove[j]
        u_logits = _logits(model, u)
        per_row = F.cross_entropy(u_logits, u.y, reduction="none")
        if data.remove_caps is None:
            per_row = per_row.clamp(max=math.log(u_logits.shape[-1]))
        else:
            per_row = torch.minimum(per_row, data.remove_caps[j].to(per_row))
        total = total - data.remove_weight * per_row.mean()
    return total


def response_descent(
    model: nn.Module,
    data: ResponseData,
    anchor_model_logits: list[Tensor],
    score_fn: ScoreFn,
    loss_fn: LossFn,
    *,
    steps: int,
    lr: float,
    every: int,
    max_retain_drop: float,
    retain_reference: float | None = None,
    masks: Mapping[str, Tensor] | None = None,
    progress: Callable[[int, StepTrial], None] | None = None,
    patience: int | None = None,
    stop_at: float | None = None,
    repaired_at: float | None = None,
    backtracks: int = 0,
) -> StepResult:
    """Run ``steps`` Adam steps on J from the current weights; keep the best scored point.

    On return the model holds the best point (``result.applied``) or its weights at the
    call, bit for bit; exceptions restore them and propagate. A point that breaks the
    scorer's own floor (a :class:`~lightning_influence.unlearn.step.Score` with ``guard_broken``,
    e.g. sample removal forgetting past what unseen data gets) is never kept and ends the
    descent: the removal term would only push further.

    Args:
        model: the model (changed in place).
        data: the groups of J.
        anchor_model_logits: log-probabilities of the trained model on ``data.retained``
            (from :func:`response_anchors`).
        score_fn: ``(forget score, retained accuracy)`` on validation data.
        loss_fn: the mean-reduced loss of the added rows.
        steps: optimiser steps (> 0).
        lr: Adam's learning rate.
        every: score every this many steps (and after the last).
        max_retain_drop: points whose retained accuracy falls more than this below the
            reference (the larger of the start's and ``retain_reference``) are never kept,
            and with ``patience`` the descent stops at the ``patience``-th such point in a row.
        retain_reference: the retained accuracy before unlearning began.
        masks: bool masks of the entries that may move, keyed by parameter name (None: every
            trainable parameter).
        progress: called with (trial number, trial) after every scored point.
        patience: scored points below the floor in a row that end the descent (None: it
            runs all ``steps``). The retained rows' own loss can repair a dip of the first
            steps: digits backdoor, poison seed 5, a dip of 10 scored points (40 steps), after
            which the attack success fell from 0.38 to 0.004 at a higher retained accuracy.
        stop_at: a forget score at which the descent ends, at the first point above the
            floor that reaches it (None: all steps run). Past that point the best F1 is the
            highest retained accuracy, while the removal term keeps raising the forgotten
            rows' loss beyond what forgetting asked.
        repaired_at: a forget score at which the descent ends once retained accuracy is
            back at its reference too (the first point that completes forgetting and has
            nothing left to repair; None: no such stop). ``stop_at`` stops at completion
            whatever retained accuracy did.
        backtracks: times the descent starts again from its start weights at a quarter of
            the learning rate when a point breaks the scorer's own floor before any point was
            kept: the step was too large for this model (ResNet-18, 20 random samples: the
            first 4 steps at 3e-4 took their accuracy from 0.75 below what held-out data
            gets). The steps are counted across restarts (at most ``steps`` in all); the
            trials of every start are kept in ``result.trials``.
    """
    start_time = time.perf_counter()
    snapshot = weights_snapshot(model)
    named = {k: p for k, p in model.named_parameters() if p.requires_grad}
    if masks is not None:
        named = {k: p for k, p in named.items() if k in masks}
    start = {k: p.detach().clone() for k, p in named.items()}
    size = math.sqrt(sum(float(s.double().pow(2).sum()) for s in start.values())) or 1.0
    result = StepResult(applied=False)
    try:
        with eval_mode(model):
            result.before = StepTrial.scored(0.0, 0.0, score_fn(model))
            r0 = result.before.retain_acc
            reference = max(r0, retain_reference if retain_reference is not None else -math.inf)
            best_f1, best_state, best_trial = result.before.f1, None, None
            opt = torch.optim.Adam(list(named.values()), lr=lr)
            below = 0  # scored points below the floor in a row
            stopped = None  # the step at which forgetting completed (with ``stop_at``)
            repaired = False  # ... and retained accuracy was back (with ``repaired_at``)
            restarts = []  # the steps after which the descent started again, smaller
            k = 0
            while k < steps:
                opt.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    _objective(model, data, anchor_model_logits, loss_fn, k).backward()
                if masks is not None:
                    for name, p in named.items():
                        if p.grad is not None:
                            p.grad.mul_(masks[name].to(p.grad.dtype))
                opt.step()
                k += 1
                if k % every and k != steps:
                    continue
                trial = _scored(model, score_fn, named, start, size, k)
                result.trials.append(trial)
                if progress is not None:
                    progress(len(result.trials), trial)
                if trial.f1 < 0:
                    break
                if trial.guard_broken:
                    if best_trial is None and len(restarts) < backtracks:
                        # overshot before any point was kept: start again, smaller steps
                        restore_weights(model, snapshot)
                        lr, below = lr / 4, 0
                        opt = torch.optim.Adam(list(named.values()), lr=lr)
                        restarts.append(k)
                        continue
                    # the scorer's own floor (e.g. forgetting past what unseen data gets):
                    # the removal term only pushes further, so the descent ends here
                    result.outcome = StepOutcome.FLOOR
                    result.reason = (
                        f"the descent stopped after {k} steps, where the validation "
                        "scorer's own floor broke"
                    )
                    break
                if trial.below(reference - max_retain_drop):
                    below += 1
                    if patience is not None and below >= patience:
                        result.outcome = StepOutcome.FLOOR
                        result.reason = (
                            f"the descent stopped after {k} steps, where retained accuracy "
                            f"fell below the floor ({below} scored point(s) in a row)"
                        )
                        break
                    continue  # never kept; the next points may recover
                below = 0
                if trial.f1 > best_f1:
                    best_f1, best_trial = trial.f1, trial
                    best_state = {n: p.detach().clone() for n, p in named.items()}
                if stop_at is not None and trial.forget_acc <= stop_at:
                    stopped = k
                    break
                if (
                    repaired_at is not None
                    and trial.forget_acc <= repaired_at
                    and trial.retain_acc >= reference
                ):
                    stopped, repaired = k, True
                    break
        restarted = f"; {_restarted(restarts, lr)}" if restarts else ""
        # a point below the floor ends the descent before it can become the best
        if best_trial is None or best_state is None:
            restore_weights(model, snapshot)
            result.outcome = StepOutcome.NO_IMPROVEMENT
            result.reason = (
                f"no response step improved the validation F1 over its start "
                f"({result.before.f1:.4f}); {result.reason}".rstrip("; ")
            ) + restarted
            return result
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(best_state[n])
        result.applied, result.best = True, best_trial
        result.radius, result.step_norm = best_trial.radius, best_trial.step_norm
        result.outcome = StepOutcome.RESPONSE_KEPT
        result.reason = f"response descent kept step {int(best_trial.radius_steps)} of {steps}"
        if stopped is not None:
            done = "forgetting complete" + (
                ", retained accuracy back at its reference" if repaired else ""
            )
            result.reason += f" ({done} at step {stopped}: the descent stopped)"
        result.reason += restarted
        return result
    except BaseException:
        restore_weights(model, snapshot)
        raise
    finally:
        result.seconds = time.perf_counter() - start_time


def _restarted(restarts: list[int], lr: float) -> str:
    at = ", ".join(str(k) for k in restarts)
    return (
        f"it overshot the scorer's own floor before any point was kept and started again "
        f"{len(restarts)} time(s) (after step {at}), at learning rate {lr:.3g}"
    )


def _scored(
    model: nn.Module,
    score_fn: ScoreFn,
    named: Mapping[str, Tensor],
    start: Mapping[str, Tensor],
    size: float,
    taken: int,
) -> StepTrial:
    """The current point as a trial: radius = ‖θ − θ_start‖ / ``size`` (‖θ_start‖ over the
    moving parameters, as the line search measures radii), step_norm = ‖θ − θ_start‖."""
    with torch.no_grad():
        moved = math.sqrt(
            sum(float((p - start[n]).double().pow(2).sum()) for n, p in named.items())
        )
    trial = _ResponseTrial.scored(moved / size, moved, score_fn(model), radius_steps=taken)
    if not (math.isfinite(trial.forget_acc) and math.isfinite(trial.retain_acc)):
        trial.f1 = -1.0
    return trial


@dataclass
class _ResponseTrial(StepTrial):
    """A scored point of the descent; ``radius_steps``: optimiser steps taken."""

    radius_steps: int = 0


@torch.no_grad()
def response_anchors(model: nn.Module, batches: list[Batch]) -> list[Tensor]:
    """log p_θ₀ on the retained batches (the Bregman term's reference), at the model's
    current (trained) weights."""
    with eval_mode(model):
        return [F.log_softmax(_logits(model, b).double(), -1).to(torch.float32) for b in batches]
