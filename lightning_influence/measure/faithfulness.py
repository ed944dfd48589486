"""The unlearning field's measures of faithfulness to retraining.

An unlearned model is compared with a model retrained without the forgotten data on
(SalUn, Fan et al. ICLR 2024; Jia et al. NeurIPS 2023):

- **UA** (unlearning accuracy): ``1 − accuracy on the forget set``;
- **MIA-efficacy**: the share of the forget set that a membership-inference attack calls
  *non-members* (:class:`ConfidenceAttack`);
- **RA** (remaining accuracy): accuracy on the retained training data;
- **TA** (test accuracy): accuracy on held-out test data;
- **Avg. Gap**: the mean absolute difference of those four to the retrained model's, in
  percentage points (:func:`avg_gap`);
- **relearn accuracy**: accuracy on what was forgotten after ``k`` fine-tuning steps
  (:func:`relearn_accuracy`): a model that only hides a class (a logit offset) gets it back
  within a few steps, a retrained one does not.

The attack follows SalUn's confidence attack: its one feature is the probability the model
gives a sample's label; it is fitted to separate retained training samples (members) from
held-out samples (non-members), equal numbers of each, then applied to the forget set.
SalUn fits an RBF support-vector classifier on that one feature; on one feature the best
classifier is a threshold, and :class:`ConfidenceAttack` fits the threshold of highest
balanced accuracy exactly (deterministic, O(n log n)).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_influence.data._modules import eval_mode, model_device
from lightning_influence.data.batches import parse_batch
from lightning_influence.data.forward import call_model, inputs_to, logits_of

__all__ = [
    "ConfidenceAttack",
    "FAITHFULNESS_KEYS",
    "avg_gap",
    "faithfulness",
    "label_confidence",
    "predictions",
    "relearn_accuracy",
    "reset_output_rows",
]

#: The four measures the Avg. Gap averages over.
FAITHFULNESS_KEYS = ("ua", "mia_efficacy", "ra", "ta")


def label_confidence(logits: Tensor, labels: Tensor) -> Tensor:
    """The probability each row's logits give its label (float64)."""
    probs = F.softmax(logits.double(), -1)
    return probs.gather(-1, labels.long().reshape(-1, 1).to(probs.device)).reshape(-1)


@dataclass
class ConfidenceAttack:
    """A threshold on the label confidence: at or above it, a sample is called a member.

    Attributes:
        threshold: the fitted threshold.
        balanced_accuracy: its balanced accuracy on the data it was fitted on (0.5: the
            attack cannot tell members from non-members).
    """

    threshold: float
    balanced_accuracy: float

    @classmethod
    def fit(cls, members: Tensor, nonmembers: Tensor) -> ConfidenceAttack:
        """Fit on the label confidences of members and non-members (balanced: the larger
        group is subsampled, seeded, to the smaller's size, as SalUn balances its shadow sets).
        """
        members, nonmembers = members.double().cpu(), nonmembers.double().cpu()
        if len(members) == 0 or len(nonmembers) == 0:
            raise ValueError("ConfidenceAttack.fit needs members and non-members.")
        n = min(len(members), len(nonmembers))
        gen = torch.Generator().manual_seed(0)
        members = members[torch.randperm(len(members), generator=gen)[:n]]
        nonmembers = nonmembers[torch.randperm(len(nonmembers), generator=gen)[:n]]
        values = torch.cat([members, nonmembers])
        is_member = torch.cat([torch.ones(n), torch.zeros(n)]).double()
        order = torch.argsort(values, descending=True, stable=True)
        v, m = values[order], is_member[order]
        # Threshold at each distinct value t: members called = (conf >= t).
        tp = torch.cumsum(m, 0)
        fp = torch.cumsum(1 - m, 0)
        last_of_value = torch.ones(len(v), dtype=torch.bool)
        last_of_value[:-1] = v[1:] != v[:-1]
        balanced = 0.5 * (tp / n + (n - fp) / n)
        balanced = torch.where(last_of_value, balanced, torch.full_like(balanced, -1.0))
        best = int(torch.argmax(balanced))
        if float(balanced[best]) <= 0.5:  # no threshold beats calling everyone a non-member
            return cls(float("inf"), 0.5)
        return cls(float(v[best]), float(balanced[best]))

    def member_share(self, confidence: Tensor) -> float:
        """Share of the samples the attack calls members."""
        if len(confidence) == 0:
            return float("nan")
        return float((confidence.double() >= self.threshold).double().mean())

    def efficacy(self, confidence: Tensor) -> float:
        """MIA-efficacy: share of the samples called non-members (higher: more forgotten)."""
        return 1.0 - self.member_share(confidence)


@torch.no_grad()
def predictions(
    model: nn.Module,
    data: Iterable[Any],
    batch_parser: Callable[[Any], Any] = parse_batch,
) -> tuple[Tensor, Tensor]:
    """``(logits, labels)`` of ``model`` (eval mode) over a loader or a list of batches."""
    device = model_device(model)
    logits, labels = [], []
    with eval_mode(model):
        for raw in data:
            b = batch_parser(raw)
            logits.append(logits_of(call_model(model, inputs_to(b.x, device))).float().cpu())
            labels.append(b.y.reshape(-1).long().cpu())
    if not logits:
        raise ValueError("predictions: the data yielded no batch.")
    return torch.cat(logits), torch.cat(labels)


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(-1) == labels).double().mean()) if len(labels) else float("nan")


def faithfulness(
    model: nn.Module,
    forget: Iterable[Any],
    retain: Iterable[Any],
    test: Iterable[Any],
    batch_parser: Callable[[Any], Any] = parse_batch,
) -> dict[str, float]:
    """UA, MIA-efficacy, RA and TA of ``model`` (fractions in [0, 1]).

    The attack is fitted on this model's retained training samples (members) against the
    test samples (non-members), then applied to the forget set, as SalUn measures it.

    Args:
        model: the model to measure.
        forget: the forget set (with the labels it was trained on).
        retain: the retained training data (or a uniform sample of it).
        test: held-out test data.
        batch_parser: turns a loader's batch into a :class:`~lightning_influence.Batch`.
    """
    f_logits, f_y = predictions(model, forget, batch_parser)
    r_logits, r_y = predictions(model, retain, batch_parser)
    t_logits, t_y = predictions(model, test, batch_parser)
    attack = ConfidenceAttack.fit(label_confidence(r_logits, r_y), label_confidence(t_logits, t_y))
    return {
        "ua": 1.0 - _accuracy(f_logits, f_y),
        "mia_efficacy": attack.efficacy(label_confidence(f_logits, f_y)),
        "ra": _accuracy(r_logits, r_y),
        "ta": _accuracy(t_logits, t_y),
    }


def avg_gap(
    measured: Mapping[str, float],
    reference: Mapping[str, float],
    keys: Iterable[str] = FAITHFULNESS_KEYS,
) -> float:
    """Mean absolute difference over ``keys`` in percentage points (measures are fractions)."""
    keys = list(keys)
    return 100.0 * sum(abs(measured[k] - reference[k]) for k in keys) / len(keys)


@torch.no_grad()
def reset_output_rows(model: nn.Module, layer: nn.Linear, classes: Iterable[int]) -> nn.Module:
    """A copy of ``model`` whose output layer's rows (and biases) of ``classes`` are set to
    the mean of the other classes' rows: what a logit offset or an output-row edit hid is
    gone, so a class can only come back from what the features still hold.

    Args:
        model: the model (not changed).
        layer: its output layer (a module of ``model``).
        classes: the rows to reset.
    """
    names = {id(m): n for n, m in model.named_modules()}
    if id(layer) not in names:
        raise ValueError("reset_output_rows: layer is not a module of model.")
    out = copy.deepcopy(model)
    target = out.get_submodule(names[id(layer)])
    rows = sorted({int(c) for c in classes})
    keep = [c for c in range(target.weight.shape[0]) if c not in rows]
    target.weight[rows] = target.weight[keep].mean(0)
    if target.bias is not None:
        target.bias[rows] = target.bias[keep].mean(0)
    return out


def relearn_accuracy(
    model: nn.Module,
    batches: Iterable[Any],
    evaluate_on: Iterable[Any],
    steps: int = 5,
    lr: float = 1e-3,
    batch_parser: Callable[[Any], Any] = parse_batch,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> float:
    """Accuracy on ``evaluate_on`` after ``steps`` Adam steps of a copy of ``model`` on
    ``batches`` (e.g. batches that mix a few forgotten samples into retained ones).

    Args:
        model: the model (not changed).
        batches: the fine-tuning batches (at least ``steps``; the first ``steps`` are used).
        evaluate_on: the data whose accuracy is returned (e.g. the forgotten class's test
            samples).
        steps: fine-tuning steps.
        lr: Adam's learning rate.
        batch_parser: turns a batch into a :class:`~lightning_influence.Batch`.
        loss_fn: the mean-reduced training loss.
    """
    tuned = copy.deepcopy(model)
    device = model_device(tuned)
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    tuned.train()
    done = 0
    with torch.enable_grad():
        for raw in batches:
            if done == steps:
                break
            b = batch_parser(raw)
            opt.zero_grad(set_to_none=True)
            logits = logits_of(call_model(tuned, inputs_to(b.x, device)))
            loss_fn(logits, b.y.to(device).long()).backward()
            opt.step()
            done += 1
    if done < steps:
        raise ValueError(f"relearn_accuracy: {steps} steps asked, the batches gave {done}.")
    logits, labels = predictions(tuned, evaluate_on, batch_parser)
    return _accuracy(logits, labels)
