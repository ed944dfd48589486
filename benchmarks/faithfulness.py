"""Faithfulness to retraining on every forget task, measured the way the unlearning field does.

For each seed and task a base model is trained (the demos' 28x28 CNN, one early-stopped Adam
recipe, :func:`benchmarks.fashion.fit`), a model is *retrained* without the forgotten data by
the same recipe, and a second retraining with another seed (``retrain'``) gives the noise
floor. Every method starts from the base model, chooses its steps on VALIDATION data only,
and is reported on the forget set, the retained training data and the TEST data:

- UA (1 - accuracy on the forget set), MIA-efficacy (SalUn's confidence attack), RA, TA and
  the **Avg. Gap** to the retrained model in percentage points
  (:mod:`lightning_influence.measure.faithfulness`);
- class removal: relearn accuracy on the class's test images after 5 Adam steps (lr 1e-3,
  batches of 32 with 4 forgotten images), measured after the class's output row and bias are
  reset to the other rows' mean, so only what the features hold can come back
  (``relearn5``), and without the reset (``relearn5_no_reset``); ``probe50``: after the
  reset, only the output layer trained for 50 steps on the frozen features (do the features
  still hold the class?); TA is measured on the
  retained classes' test images;
- backdoor repair: attack success rate on triggered test images and clean test accuracy;
- label change: share of the flipped class's test accuracy gap recovered, other classes' drop.

Tasks: ``class`` (remove one class), ``random10`` / ``random1`` (delete 10 % / 1 % random
samples), ``memorized`` (delete the 1 % of samples whose labels were flipped before
training; ``memorized25``: the same with base and retrained models trained 25 epochs
without early stopping, so that the base model memorises them), ``backdoor`` /
``backdoor_labels`` (5 % of non-target images stamped with a 3x3
corner patch and labelled 0; repaired by their ids without / with true labels), ``relabel``
(30 % of the pullovers labelled shirt; relabelled back).

Methods: ``retrain``, ``retrain'``, ``nothing``, ``default`` (the ``UnlearnCallback``
defaults), ``fine-tune``, ``random relabel``, ``gradient ascent``, ``salun`` (random relabel
on the half of the weights with the largest forget gradient), ``scrub`` (Kurmanji et al.
2023: teacher-student, forget KL maximised, retain KL + CE minimised), ``ssd`` (Foster et
al. 2024: selective synaptic dampening by the forget/train Fisher ratio) and, for class
removal only, ``logit mask`` (a reference, never a baseline).

Validation objective of the baselines (each picks its round on it): class removal, the
validation F1 of the class; sample deletion, the highest mean forget loss whose validation
accuracy stays within 0.005 of the base model's; backdoor, the F1 of (1 - validation ASR,
clean validation accuracy); relabel, the F1 of (1 - old-label accuracy on the relabelled
rows, validation accuracy).

Run (resumable, rows written after every run)::

    python -m benchmarks.faithfulness --seeds 0 1 2 3 4 [--train-samples N] [--resume]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning_influence as li
from benchmarks import markdown as md
from benchmarks.common import CACHE, RESULTS, machine, mean_std, write_json
from benchmarks.fashion import RECIPE, MaskedLogit, fit
from benchmarks.markdown import Goal
from lightning_influence.demos.corruptions import attack_success_rate, corner_trigger
from lightning_influence.measure.faithfulness import (
    avg_gap,
    faithfulness,
    relearn_accuracy,
    reset_output_rows,
)
from lightning_influence.measure.metrics import forgetting_f1

RESULT = "faithfulness_fashion.json"
TASKS = (
    "class",
    "random10",
    "random1",
    "memorized",
    "memorized25",
    "backdoor",
    "backdoor_labels",
    "relabel",
)
#: tasks whose base model and retrainings train a fixed number of epochs (no early
#: stopping), so that the base model memorises its flipped labels as in the issue's runs
FIXED_EPOCHS = {"memorized25": 25}
METHODS = (
    "nothing",
    "default",
    "fine-tune",
    "random relabel",
    "gradient ascent",
    "salun",
    "scrub",
    "ssd",
    "logit mask",
)
#: levers of the default, run like "default" with these callback arguments and spec
#: attributes (sample removal: forget as much as the retained budget allows, i.e. the forget
#: score is the forgotten rows' mean label confidence; plus response descent)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "gif budget": ({}, {"completion": "budget"}),
    # memorised rows complete once no more are fitted than their validation neighbours say
    # retraining would leave fitted (the default: once none is; "gif memorised zero" was
    # that lever while "expected" was the default, its rows are the default's settings)
    "gif memorised expected": ({}, {"memorised_target": "expected"}),
    "gif memorised zero": ({}, {"memorised_target": "zero"}),
    "gif memorised calibrated": ({}, {"memorised_target": "calibrated"}),
    # the response descent raises a forgotten row's loss only up to what its validation
    # neighbours say retraining would give it (default: up to a uniform guess's)
    "gif cap expected": ({}, {"removal_cap": "expected"}),
    # the response descent runs on to its best F1 past completion (sample removal's default
    # ends it at the first point that completes forgetting)
    "gif no stop": ({"response": {"stop_when_complete": False}}, {}),
    "gif memorised expected, no stop": (
        {"response": {"stop_when_complete": False}},
        {"memorised_target": "expected"},
    ),
    "gif budget+response": ({"response": {"steps": 200}}, {"completion": "budget"}),
    "gif response": ({"response": {"steps": 200}}, {}),
    "gif response 50": ({"response": {"steps": 50}}, {}),
    "gif all added": ({"hessian": {"added_budget": 1_000_000}}, {}),  # the default before 128
    "gif added 128": ({"hessian": {"added_budget": 128}}, {}),
    "gif added 128 rounds 3": ({"hessian": {"added_budget": 128}, "solve": {"rounds": 3}}, {}),
    "gif smallest step": ({"step": {"keep": "smallest"}}, {}),  # class default before
    "gif all layers": ({"selection": {"layers": "all"}}, {}),
    "gif all layers+response": ({"selection": {"layers": "all"}, "response": {"steps": 200}}, {}),
    "gif second choice": ({}, {}),  # class removal: relabel the class to the 2nd choice
    "gif second choice+response": ({"response": {"steps": 200}}, {}),
    "gif keep largest": ({"step": {"keep": "largest"}}, {}),
    "gif rounds 8": ({"solve": {"rounds": 8}}, {}),
    "gif smallest tol 0.005": ({"step": {"f1_tolerance": 0.005}}, {}),
    "gif best step": ({"step": {"f1_tolerance": 0.0}}, {}),
    "gif largest tol 0.005": ({"step": {"keep": "largest", "f1_tolerance": 0.005}}, {}),
    "gif no polish": ({"solve": {"polish": False}}, {}),
    "gif target 0": ({"step": {"forget_target": 0.0}}, {}),
    "gif rounds 2": ({"solve": {"rounds": 2}}, {}),
    "gif every 20": ({"response": {"every": 20}}, {}),
    "gif stop when repaired": ({"response": {"stop_when_repaired": True}}, {}),
    "gif rounds 2 every 20": ({"solve": {"rounds": 2}, "response": {"every": 20}}, {}),
    "gif no old-class floor": ({}, {"old_class_drop": None}),
    "gif skip response": ({"response": {"skip_when_complete": True}}, {}),
    "gif no response": ({"response": {"steps": 0}}, {}),
    "gif no polish no response": ({"solve": {"polish": False}, "response": {"steps": 0}}, {}),
    # the response descent's step size: the backdoor's best point came at step 192 of 200
    "gif response lr 1e-3": ({"response": {"lr": 1e-3}}, {}),
    "gif response lr 1e-3 steps 100": ({"response": {"lr": 1e-3, "steps": 100}}, {}),
    # the Hessian-subset sampler on the tasks whose curvature spans the network
    "gif sampler random": ({"hessian": {"sampler": "random"}}, {}),
    "gif sampler feature": ({"hessian": {"sampler": "feature"}}, {}),
    # cost: fewer solver iterations, a smaller Hessian subset (benchmarks/resnet.py)
    "gif max_iter 10": ({"solve": {"max_iter": 10}}, {}),
    "gif budget 32 max_iter 10": ({"hessian": {"budget": 32}, "solve": {"max_iter": 10}}, {}),
}
METHODS = METHODS + tuple(VARIANTS)
BASELINES = ("fine-tune", "random relabel", "gradient ascent", "salun", "scrub", "ssd")
CLASS_OF_SEED = (6, 2, 4, 0, 6)  # shirt, pullover, coat, T-shirt, shirt; then seed % 5
TRIGGER = corner_trigger(size=3, value=1.0, corner="bottom_right")
TARGET, RELABEL_FROM, RELABEL_TO = 0, 2, 6
SAMPLE_BUDGET = 0.005


# ----------------------------------------------------------------------------- tasks


@dataclass
class Task:
    """One forget task of one seed: the base training data and what is forgotten."""

    name: str
    seed: int
    train: TensorDataset  # what the base model is trained on (corrupted for some tasks)
    val: TensorDataset
    test: TensorDataset
    forget_ids: torch.Tensor
    callback_args: dict[str, Any]
    forget_class: int | None = None
    true_labels: torch.Tensor | None = None  # relabel / backdoor: the clean labels
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def retain_mask(self) -> torch.Tensor:
        keep = torch.ones(len(self.train.tensors[1]), dtype=torch.bool)
        keep[self.forget_ids] = False
        return keep

    def part(self, mask: torch.Tensor) -> TensorDataset:
        return TensorDataset(*(t[mask] for t in self.train.tensors))

    @property
    def retain(self) -> TensorDataset:
        return self.part(self.retain_mask)

    @property
    def forget(self) -> TensorDataset:
        return self.part(~self.retain_mask)

    @property
    def corrected(self) -> TensorDataset:
        """What retraining trains on: the retained data, plus the fixed rows for relabel."""
        if self.name != "relabel":
            return self.retain
        x, y = self.train.tensors
        return TensorDataset(x, self.true_labels)


#: tasks whose data, base model and retraining are another task's: only the methods that
#: read what differs (the callback's arguments: the default and its variants) run again
TWINS = {"backdoor_labels": "backdoor"}


def _ids_where(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask).reshape(-1)


def _draw(pool: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return torch.sort(pool[perm[:k]]).values


def make_task(name: str, seed: int, data) -> Task:
    train, val, test = data
    x, y = train.tensors
    n = len(y)
    if name == "class":
        c = CLASS_OF_SEED[seed % len(CLASS_OF_SEED)]
        ids = _ids_where(y == c)
        return Task(name, seed, train, val, test, ids, {"forget_classes": [c]}, forget_class=c)
    if name in ("random10", "random1"):
        k = round(n * (0.10 if name == "random10" else 0.01))
        ids = _draw(torch.arange(n), k, seed)
        return Task(name, seed, train, val, test, ids, {"forget_ids": ids.tolist()})
    if name in ("memorized", "memorized25"):
        ids = _draw(torch.arange(n), round(0.01 * n), seed)
        noisy = y.clone()
        shift = torch.randint(1, 10, (len(ids),), generator=torch.Generator().manual_seed(seed))
        noisy[ids] = (noisy[ids] + shift) % 10
        data = TensorDataset(x, noisy)
        return Task(name, seed, data, val, test, ids, {"forget_ids": ids.tolist()}, true_labels=y)
    if name in ("backdoor", "backdoor_labels"):
        ids = _draw(_ids_where(y != TARGET), round(0.05 * n), seed)
        px, py = x.clone(), y.clone()
        px[ids] = TRIGGER(px[ids])
        py[ids] = TARGET
        args: dict[str, Any] = {
            "forget_ids": ids.tolist(),
            "backdoor_trigger": TRIGGER,
            "backdoor_target": TARGET,
        }
        if name == "backdoor_labels":
            args["backdoor_true_labels"] = {int(i): int(y[i]) for i in ids}
        return Task(name, seed, TensorDataset(px, py), val, test, ids, args, true_labels=y)
    if name == "relabel":
        pool = _ids_where(y == RELABEL_FROM)
        ids = _draw(pool, round(0.3 * len(pool)), seed)
        noisy = y.clone()
        noisy[ids] = RELABEL_TO
        args = {"relabel": {int(i): RELABEL_FROM for i in ids}}
        return Task(name, seed, TensorDataset(x, noisy), val, test, ids, args, true_labels=y)
    raise ValueError(f"unknown task {name!r}")


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + 1024]) for i in range(0, len(x), 1024)])


def _acc(model: nn.Module, ds: TensorDataset) -> float:
    x, y = ds.tensors
    return float((_logits(model, x).argmax(-1) == y).float().mean())


def validation_objective(task: Task, base_val_acc: float) -> Callable[[nn.Module], float]:
    """Higher is better; every baseline picks its round on it (see the module doc)."""
    vx, vy = task.val.tensors
    if task.name == "class":
        c = task.forget_class

        def class_f1(m):
            ok = _logits(m, vx).argmax(-1) == vy
            return float(forgetting_f1(ok[vy == c].float().mean(), ok[vy != c].float().mean()))

        return class_f1
    if task.name.startswith("backdoor"):
        victims = vx[vy != TARGET]

        def backdoor_f1(m):
            asr = float((_logits(m, TRIGGER(victims)).argmax(-1) == TARGET).float().mean())
            return float(forgetting_f1(asr, _acc(m, task.val)))

        return backdoor_f1
    fx, fy = task.forget.tensors
    if task.name == "relabel":

        def relabel_f1(m):
            old = float((_logits(m, fx).argmax(-1) == fy).float().mean())
            return float(forgetting_f1(old, _acc(m, task.val)))

        return relabel_f1

    def forget_loss_within_budget(m):
        if _acc(m, task.val) < base_val_acc - SAMPLE_BUDGET:
            return -1.0
        return float(F.cross_entropy(_logits(m, fx), fy))

    return forget_loss_within_budget


# ----------------------------------------------------------------------------- baselines


def _rounds(model, rounds: int, step: Callable[[], None], objective) -> int:
    """Run ``step`` ``rounds`` times; keep the weights of the best objective (0: start)."""
    best, best_state, best_k = objective(model), copy.deepcopy(model.state_dict()), 0
    for k in range(1, rounds + 1):
        step()
        s = objective(model)
        if s > best:
            best, best_state, best_k = s, copy.deepcopy(model.state_dict()), k
    model.load_state_dict(best_state)
    return best_k


def _cycle(ds: TensorDataset, batch: int, seed: int):
    loader = DataLoader(
        ds, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    while True:
        yield from loader


def _train_steps(model, batches, opt, steps: int, loss=F.cross_entropy, sign: float = 1.0):
    def step():
        model.train()
        for _ in range(steps):
            x, y = next(batches)
            opt.zero_grad()
            (sign * loss(model(x), y)).backward()
            opt.step()
        model.eval()

    return step


def _chunk(task: Task) -> int:
    """Steps per scored round: a quarter epoch of the retained data at batch 128."""
    return max(1, len(task.retain.tensors[1]) // (4 * 128))


def fine_tune(model, task, objective, seed):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = _train_steps(model, _cycle(task.retain, 128, seed), opt, _chunk(task))
    return _rounds(model, 8, step, objective)


def _relabelled_forget(task: Task, seed: int) -> TensorDataset:
    fx, fy = task.forget.tensors
    if task.name == "relabel":
        return TensorDataset(fx, task.true_labels[task.forget_ids])
    shift = torch.randint(1, 10, (len(fy),), generator=torch.Generator().manual_seed(seed))
    return TensorDataset(fx, (fy + shift) % 10)


def random_relabel(model, task, objective, seed, masks=None):
    forget = _relabelled_forget(task, seed)
    mixed = TensorDataset(
        *(torch.cat([a, b]) for a, b in zip(task.retain.tensors, forget.tensors, strict=True))
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    hooks = [
        p.register_hook(lambda g, m=m: g * m)
        for p, m in zip(model.parameters(), masks or [], strict=False)
    ]
    try:
        step = _train_steps(model, _cycle(mixed, 128, seed), opt, _chunk(task))
        return _rounds(model, 8, step, objective)
    finally:
        for h in hooks:
            h.remove()


def saliency_masks(model, task, share=0.5):
    fx, fy = task.forget.tensors
    model.zero_grad()
    model.eval()
    F.cross_entropy(_logits_grad(model, fx), fy).backward()
    grads = [p.grad.detach().abs() for p in model.parameters()]
    model.zero_grad()
    flat = torch.cat([g.reshape(-1) for g in grads])
    threshold = torch.kthvalue(flat, max(1, int(len(flat) * (1 - share)))).values
    return [(g >= threshold).float() for g in grads]


def _logits_grad(model, x):
    return torch.cat([model(x[i : i + 1024]) for i in range(0, len(x), 1024)])


def gradient_ascent(model, task, objective, seed):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = _train_steps(model, _cycle(task.forget, 32, seed), opt, 5, sign=-1.0)
    return _rounds(model, 10, step, objective)


def scrub(model, task, objective, seed, alpha=1.0):
    """SCRUB: max steps on the forget set (KL(teacher || student) raised), then min steps on
    the retained set (KL + alpha CE), alternating per round as in the reference schedule."""
    teacher = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    forget, retain = _cycle(task.forget, 64, seed), _cycle(task.retain, 128, seed)

    def kl(x, student):
        with torch.no_grad():
            t = F.log_softmax(teacher(x), -1)
        return F.kl_div(F.log_softmax(student, -1), t, log_target=True, reduction="batchmean")

    def step(k=[0]):  # noqa: B006 (a round counter)
        model.train()
        if k[0] < 2:  # max steps in the first rounds only (SCRUB's msteps)
            for _ in range(max(1, len(task.forget.tensors[1]) // 64)):
                x, _ = next(forget)
                opt.zero_grad()
                (-kl(x, model(x))).backward()
                opt.step()
        for _ in range(_chunk(task)):
            x, y = next(retain)
            opt.zero_grad()
            out = model(x)
            (kl(x, out) + alpha * F.cross_entropy(out, y)).backward()
            opt.step()
        k[0] += 1
        model.eval()

    return _rounds(model, 6, step, objective)


def _fisher_diag(model, ds: TensorDataset, limit: int = 4096, seed: int = 0):
    x, y = ds.tensors
    if len(y) > limit:
        pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:limit]
        x, y = x[pick], y[pick]
    out = [torch.zeros_like(p) for p in model.parameters()]
    model.eval()
    for i in range(0, len(y), 64):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 64]), y[i : i + 64], reduction="sum").backward()
        for o, p in zip(out, model.parameters(), strict=True):
            o += p.grad.detach() ** 2
    model.zero_grad()
    return [o / len(y) for o in out]


def ssd(model, task, objective, seed):
    """Selective synaptic dampening: parameters far more important to the forget set than to
    the training data (I_f > alpha I_D) are scaled by min(lambda I_D / I_f, 1); alpha is picked
    on validation from a grid, lambda = 1 as in the paper."""
    i_d = _fisher_diag(model, task.train, seed=seed)
    i_f = _fisher_diag(model, task.forget, seed=seed)
    base = copy.deepcopy(model.state_dict())
    best, best_state = objective(model), base
    for alpha in (1.0, 5.0, 10.0, 50.0):
        model.load_state_dict(base)
        with torch.no_grad():
            for p, d, f in zip(model.parameters(), i_d, i_f, strict=True):
                hit = f > alpha * d
                p[hit] *= torch.clamp(d[hit] / f[hit].clamp_min(1e-30), max=1.0)
        s = objective(model)
        if s > best:
            best, best_state = s, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)


#: methods that exist for class removal only
CLASS_ONLY = ("logit mask", "gif second choice", "gif second choice+response")


def applies(method: str, task: str) -> bool:
    """Whether ``method`` runs on ``task`` (a logit mask or a second choice needs a class)."""
    return task == "class" or method not in CLASS_ONLY


def second_choice_labels(model: nn.Module, task: Task) -> dict[int, int]:
    """{forgotten id: the model's best class other than the forgotten one}: what a model
    retrained without the class mostly predicts for it (class removal only)."""
    x, _ = task.train.tensors
    ids = task.forget_ids
    logits = _logits(model, x[ids])
    logits[:, task.forget_class] = -float("inf")
    return {int(i): int(c) for i, c in zip(ids.tolist(), logits.argmax(-1).tolist(), strict=True)}


def unlearn_default(model, task: Task, variant: str | None = None) -> dict[str, Any]:
    args, attrs = VARIANTS[variant] if variant else ({}, {})
    task_args = task.callback_args
    if variant and variant.startswith(
        "gif second choice"
    ):  # class removal as a label change to the 2nd choice
        task_args = {"relabel": second_choice_labels(model, task)}
    cb = li.UnlearnCallback(seed=task.seed, progress_bar=False, **task_args, **args)
    for key, value in attrs.items():
        if hasattr(cb.spec, key):
            setattr(cb.spec, key, value)
    rep = cb.unlearn_model(
        model,
        DataLoader(li.IndexedDataset(task.train), batch_size=256),
        DataLoader(task.val, batch_size=1024),
    )
    return {
        "applied": rep.applied,
        "reason": rep.reason,
        "stage_seconds": rep.seconds,
        "val_after": rep.after,
    }


def run_method(name: str, base: nn.Module, task: Task, objective) -> tuple[nn.Module, dict]:
    model = copy.deepcopy(base).eval()
    extra: dict[str, Any] = {}
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "default":
            extra = unlearn_default(model, task)
        elif name in VARIANTS:
            extra = unlearn_default(model, task, name)
        elif name == "fine-tune":
            extra["round"] = fine_tune(model, task, objective, task.seed)
        elif name == "random relabel":
            extra["round"] = random_relabel(model, task, objective, task.seed)
        elif name == "salun":
            masks = saliency_masks(model, task)
            extra["round"] = random_relabel(model, task, objective, task.seed, masks=masks)
        elif name == "gradient ascent":
            extra["round"] = gradient_ascent(model, task, objective, task.seed)
        elif name == "scrub":
            extra["round"] = scrub(model, task, objective, task.seed)
        elif name == "ssd":
            ssd(model, task, objective, task.seed)
        elif name == "logit mask":
            model = MaskedLogit(model, task.forget_class)
        elif name != "nothing":
            raise ValueError(name)
    extra["seconds"] = time.perf_counter() - start
    # one thread (torch.set_num_threads(1)): CPU seconds do not grow when other jobs share
    # the cores, wall seconds do
    extra["cpu_seconds"] = time.process_time() - cpu
    return model.eval(), extra


# ----------------------------------------------------------------------------- measures


def _loader(ds: TensorDataset):
    return DataLoader(ds, batch_size=1024)


def measures(model: nn.Module, task: Task) -> dict[str, Any]:
    # TA of class removal is on the retained classes' test images, as the field reports it
    test = task.test if task.name != "class" else _without(task.test, task.forget_class)
    out: dict[str, Any] = faithfulness(
        model, _loader(task.forget), _loader(_sample(task.retain, 10000)), _loader(test)
    )
    if task.name == "class":
        out["relearn5"] = _relearn(model, task)
        out["relearn5_no_reset"] = _relearn(model, task, reset_row=False)
        out["probe50"] = _probe(model, task)
    if task.name.startswith("backdoor"):
        out["asr"] = attack_success_rate(model, task.test, TRIGGER, TARGET)
    if task.name == "relabel":
        x, y = task.test.tensors
        pred = _logits(model, x).argmax(-1)
        per_class = torch.stack([(pred[y == c] == c).float().mean() for c in range(10)])
        out["class_acc"] = per_class.tolist()
    return out


def _sample(ds: TensorDataset, k: int) -> TensorDataset:
    n = len(ds.tensors[1])
    if n <= k:
        return ds
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k]
    return TensorDataset(*(t[pick] for t in ds.tensors))


def _relearn(model: nn.Module, task: Task, reset_row: bool = True) -> float:
    """Class accuracy after 5 fine-tuning steps, the class's output row reset first (or not:
    then a logit mask's model is fine-tuned through its mask)."""
    inner = model.model if isinstance(model, MaskedLogit) else model
    head = [m for m in inner.modules() if isinstance(m, nn.Linear)][-1]
    reset = reset_output_rows(inner, head, [task.forget_class]) if reset_row else model
    gen = torch.Generator().manual_seed(task.seed)
    fx, fy = task.forget.tensors
    rx, ry = task.retain.tensors
    batches = []
    for _ in range(5):
        f = torch.randint(0, len(fy), (4,), generator=gen)
        r = torch.randint(0, len(ry), (28,), generator=gen)
        batches.append((torch.cat([fx[f], rx[r]]), torch.cat([fy[f], ry[r]])))
    tx, ty = task.test.tensors
    keep = ty == task.forget_class
    return relearn_accuracy(reset, batches, [(tx[keep], ty[keep])], steps=5, lr=1e-3)


def _probe(model: nn.Module, task: Task, steps: int = 50, lr: float = 1e-2) -> float:
    """Do the features still hold the class? The class's output row is reset to the mean of
    the others, then only the output layer is trained (features frozen, eval mode) for
    ``steps`` Adam steps on batches of 4 class samples in 32; class test accuracy after."""
    inner = model.model if isinstance(model, MaskedLogit) else model
    head = [m for m in inner.modules() if isinstance(m, nn.Linear)][-1]
    probe = reset_output_rows(inner, head, [task.forget_class]).eval()
    names = {id(m): n for n, m in inner.named_modules()}
    probe_head = probe.get_submodule(names[id(head)])
    for p in probe.parameters():
        p.requires_grad_(False)
    params = [probe_head.weight] + ([probe_head.bias] if probe_head.bias is not None else [])
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(task.seed)
    fx, fy = task.forget.tensors
    rx, ry = task.retain.tensors
    with torch.enable_grad():
        for _ in range(steps):
            f = torch.randint(0, len(fy), (4,), generator=gen)
            r = torch.randint(0, len(ry), (28,), generator=gen)
            loss = F.cross_entropy(probe(torch.cat([fx[f], rx[r]])), torch.cat([fy[f], ry[r]]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    tx, ty = task.test.tensors
    keep = ty == task.forget_class
    with torch.no_grad():
        return float((probe(tx[keep]).argmax(-1) == task.forget_class).float().mean())


# ----------------------------------------------------------------------------- study


def _cache_name(kind: str, task: Task, train_samples: int | None) -> str:
    size = "full" if train_samples is None else f"n{train_samples}"
    return f"faith_{size}_{kind}_seed{task.seed}"


def fit_fixed(train: TensorDataset, val: TensorDataset, seed: int, epochs: int):
    """The recipe's optimiser and batches for ``epochs`` epochs, the last weights kept."""
    from benchmarks.fashion import recipe_start
    from benchmarks.unlearning import train_epoch

    model, opt, loader = recipe_start(train, seed)
    start = time.perf_counter()
    for _ in range(epochs):
        train_epoch(model, loader, opt)
    return model.eval(), {"seconds": time.perf_counter() - start, "epochs": epochs}


def cached(
    name: str, train: TensorDataset, val: TensorDataset, seed: int, epochs: int | None = None
):
    from lightning_influence.demos.models import ImageClassifier

    folder = CACHE / "faithfulness"
    path, meta = folder / f"{name}.pt", folder / f"{name}.json"
    if path.exists() and meta.exists():
        model = ImageClassifier(num_classes=10, image_size=28)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), json.loads(meta.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    model, info = fit(train, val, seed) if epochs is None else fit_fixed(train, val, seed, epochs)
    torch.save(model.state_dict(), path)
    meta.write_text(json.dumps(info))
    return model, info


def _base_kind(task: Task) -> str:
    """Tasks that train on the same data share one base model."""
    if task.name in ("class", "random10", "random1"):
        return "clean"
    return TWINS.get(task.name, task.name)


def _epochs(task: Task) -> int | None:
    return FIXED_EPOCHS.get(task.name)


def _retrain_kind(task: Task) -> str:
    if task.name == "class":
        return f"without_class{task.forget_class}"
    if task.name == "relabel":
        return "clean"  # the corrected set is the clean data
    return f"retain_{TWINS.get(task.name, task.name)}"


def _reference_rows(path: str | None) -> dict[tuple[str, int, str], dict[str, Any]]:
    """The retrain and retrain' rows of an earlier result, keyed by (task, seed, method)."""
    if path is None:
        return {}
    rows = json.loads((RESULTS / path).read_text())["rows"]
    return {
        (r["task"], r["seed"], r["method"]): {**r, "reference_from": path}
        for r in rows
        if r["method"] in ("retrain", "retrain'") and "error" not in r
    }


def run(
    seeds, tasks, methods, train_samples, resume, out, notes=(), references=None
) -> dict[str, Any]:
    """The study; ``references``: a result file whose retrain and retrain' rows stand in for
    retrainings not cached here (a lever study on another machine need not retrain: what a
    retrained model measures does not depend on the base model)."""
    from lightning_influence.demos.datasets import fashion_mnist_splits

    torch.set_num_threads(1)
    path = RESULTS / out
    old = json.loads(path.read_text()) if resume and path.exists() else {}
    rows = [r for r in old.get("rows", []) if "error" not in r]
    commands = old.get("commands", [])
    command = "python -m benchmarks.faithfulness " + " ".join(sys.argv[1:])
    commands.append(command)
    NOTES[:] = old.get("notes", []) + [n for n in notes if n not in old.get("notes", [])]
    done = {(r["task"], r["seed"], r["method"]) for r in rows}
    refs = _reference_rows(references)
    for seed in seeds:
        data = fashion_mnist_splits(seed=seed, max_train_samples=train_samples)
        for name in tasks:
            task = make_task(name, seed, data)
            base, base_info = cached(_cache_name(_base_kind(task), task, train_samples),
                                     task.train, task.val, seed, _epochs(task))  # fmt: skip
            retrains = {}
            for tag, s in (("retrain", seed), ("retrain'", seed + 1000)):
                if (name, seed, tag) in refs:
                    continue  # measured before (``references``): not trained here
                kind = _retrain_kind(task) + ("" if tag == "retrain" else "_second")
                model, info = cached(_cache_name(kind, task, train_samples), task.corrected,
                                     task.val if task.name != "class" else _without(task.val, task.forget_class), s,
                                     _epochs(task))  # fmt: skip
                retrains[tag] = (model, info)
            objective = validation_objective(task, _acc(base, task.val))
            for method in ["retrain", "retrain'", *methods]:
                if (name, seed, method) in done or not applies(method, name):
                    continue
                twin = _twin_row(rows, name, seed, method)
                if twin is not None:
                    rows.append(twin)
                    _print(twin)
                    continue
                if (name, seed, method) in refs:
                    rows.append(dict(refs[(name, seed, method)]))
                    _print(rows[-1])
                    continue
                try:
                    if method in retrains:
                        model, info = retrains[method]
                        extra = {
                            k: info[k] for k in ("seconds", "cpu_seconds", "epochs") if k in info
                        }
                    else:
                        model, extra = run_method(method, base, task, objective)
                    row = {"task": name, "seed": seed, "method": method, **measures(model, task)}
                    row |= extra | {"base_training": base_info}
                except Exception as err:  # one failing run must not sink the study
                    row = {"task": name, "seed": seed, "method": method, "error": repr(err)}
                rows.append(row)
                _print(row)
                write_json(out, summarise(rows, commands, train_samples))
    result = summarise(rows, commands, train_samples)
    write_json(out, result)
    return result


def _twin_row(rows: list[dict[str, Any]], task: str, seed: int, method: str):
    """The twin task's row of ``method`` on ``seed``, renamed to ``task`` (None when the
    method reads the callback's arguments or the twin has not run it)."""
    if task not in TWINS or method == "default" or method in VARIANTS:
        return None
    for r in rows:
        if (r["task"], r["seed"], r["method"]) == (TWINS[task], seed, method):
            return {**r, "task": task, "same_as": TWINS[task]}
    return None


#: notes carried in the result file (``--note``)
NOTES: list[str] = []


def _without(ds: TensorDataset, c: int) -> TensorDataset:
    keep = ds.tensors[1] != c
    return TensorDataset(*(t[keep] for t in ds.tensors))


def _print(r: dict[str, Any]) -> None:
    head = f"{r['task']:16s} seed {r['seed']} {r['method']:16s}"
    if "error" in r:
        print(head, r["error"], flush=True)
        return
    cells = " ".join(f"{k} {r[k]:.4f}" for k in ("ua", "mia_efficacy", "ra", "ta"))
    more = " ".join(
        f"{k} {r[k]:.4f}" for k in ("relearn5", "relearn5_no_reset", "probe50", "asr") if k in r
    )
    print(f"{head} {cells} {more} {r.get('seconds', 0):.1f}s", flush=True)


# ----------------------------------------------------------------------------- summary


def _with_gaps(rows: list[dict[str, Any]]) -> None:
    ref = {(r["task"], r["seed"]): r for r in rows if r["method"] == "retrain"}
    for r in rows:
        k = (r["task"], r["seed"])
        if k in ref:
            r["avg_gap_pp"] = avg_gap(r, ref[k])
            r["seconds_over_retrain"] = r.get("seconds", 0.0) / ref[k]["seconds"]
            if "cpu_seconds" in r and "cpu_seconds" in ref[k]:
                r["cpu_seconds_over_retrain"] = r["cpu_seconds"] / ref[k]["cpu_seconds"]


def _task_goals(rows: list[dict[str, Any]], task: str, seed: int) -> dict[str, float] | None:
    """The issue's per-task measures of the default on one seed (None if not run)."""
    by = {r["method"]: r for r in rows if r["task"] == task and r["seed"] == seed}
    d, ref, nothing = by.get("default"), by.get("retrain"), by.get("nothing")
    if d is None or ref is None:
        return None
    out = {"avg_gap_pp": d["avg_gap_pp"], "seconds_over_retrain": d["seconds_over_retrain"]}
    if nothing is not None:  # what doing nothing reaches on the same measure
        out["nothing_avg_gap_pp"] = nothing["avg_gap_pp"]
    if "cpu_seconds_over_retrain" in d:
        out["cpu_seconds_over_retrain"] = d["cpu_seconds_over_retrain"]
    if task == "class":
        out["relearn5_minus_retrain"] = d["relearn5"] - ref["relearn5"]
        out["relearn5_no_reset_minus_retrain"] = d["relearn5_no_reset"] - ref["relearn5_no_reset"]
        if nothing is not None:  # a measure that doing nothing also passes proves nothing
            out["relearn5_nothing_minus_retrain"] = nothing["relearn5"] - ref["relearn5"]
    if task.startswith("backdoor") and nothing is not None:
        out["asr_minus_retrain"] = d["asr"] - ref["asr"]
        out["clean_acc_drop"] = nothing["ta"] - d["ta"]
    if task == "relabel" and nothing is not None:
        before, after, clean = (torch.tensor(r["class_acc"]) for r in (nothing, d, ref))
        gap = float(clean[RELABEL_FROM] - before[RELABEL_FROM])
        out["recovered_share"] = float(after[RELABEL_FROM] - before[RELABEL_FROM]) / gap
        others = torch.arange(10) != RELABEL_FROM
        out["other_classes_drop"] = float(before[others].mean() - after[others].mean())
    return out


PASS = {
    "random10": lambda g: g["avg_gap_pp"] <= 1.0,
    "memorized": lambda g: g["avg_gap_pp"] <= 5.0,
    "memorized25": lambda g: g["avg_gap_pp"] <= 5.0,
    # relearning passes only where the measure separates doing nothing from retraining
    "class": lambda g: (
        g["avg_gap_pp"] <= 0.5
        and g["relearn5_minus_retrain"] <= 0.25
        and g.get("relearn5_nothing_minus_retrain", 0.0) > 0.25
    ),
    "backdoor": lambda g: g["asr_minus_retrain"] <= 0.02 and g["clean_acc_drop"] <= 0.01,
    "relabel": lambda g: g["recovered_share"] >= 0.8 and g["other_classes_drop"] <= 0.01,
}


def _max_by_task(goals: dict[str, list[dict[str, float]]], key: str) -> dict[str, float | None]:
    """The largest ``key`` over each task's seeds (None where no seed has it)."""
    return {t: max((g[key] for g in gs if key in g), default=None) for t, gs in goals.items()}


def summarise(rows, commands, train_samples) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    _with_gaps(ok)
    seeds = sorted({r["seed"] for r in ok})
    tasks = sorted({r["task"] for r in ok})
    cells: dict[str, dict[str, Any]] = {}
    for t in tasks:
        for m in sorted({r["method"] for r in ok if r["task"] == t}):
            rs = [r for r in ok if r["task"] == t and r["method"] == m]
            keys = (
                "avg_gap_pp", "ua", "mia_efficacy", "ra", "ta",
                "relearn5", "relearn5_no_reset", "probe50", "asr", "seconds", "cpu_seconds",
            )  # fmt: skip
            cells.setdefault(t, {})[m] = {
                k: mean_std([r[k] for r in rs if k in r]) for k in keys if any(k in r for r in rs)
            }
    goals = {t: [g for s in seeds if (g := _task_goals(ok, t, s))] for t in tasks}

    def mean(task: str, key: str) -> float | None:
        vals = [g[key] for g in goals.get(task, []) if key in g]
        return statistics.fmean(vals) if vals else None

    passing = [
        s
        for s in seeds
        if all(
            (g := _task_goals(ok, t, s)) is not None and PASS.get(t, lambda _: True)(g)
            for t in tasks
        )
    ]
    retrain2 = [r["avg_gap_pp"] for r in ok if r["method"] == "retrain'" and "avg_gap_pp" in r]
    ratios = [g["seconds_over_retrain"] for gs in goals.values() for g in gs]
    cpu_ratios = [g["cpu_seconds_over_retrain"] for gs in goals.values() for g in gs
                  if "cpu_seconds_over_retrain" in g]  # fmt: skip
    summary = {
        "train_samples": train_samples or "full (54000)",
        "seeds": len(seeds),
        "tasks": tasks,
        # the acceptance asks for 5 seeds of every task; seeds counts any task's
        "seeds_per_task": {t: len({r["seed"] for r in ok if r["task"] == t}) for t in tasks},
        "class_avg_gap_pp": mean("class", "avg_gap_pp"),
        "class_relearn5_minus_retrain": mean("class", "relearn5_minus_retrain"),
        "class_relearn5_no_reset_minus_retrain": mean("class", "relearn5_no_reset_minus_retrain"),
        "class_relearn5_nothing_minus_retrain": mean("class", "relearn5_nothing_minus_retrain"),
        "random10_avg_gap_pp": mean("random10", "avg_gap_pp"),
        "random1_avg_gap_pp": mean("random1", "avg_gap_pp"),
        "memorized_avg_gap_pp": mean("memorized", "avg_gap_pp"),
        "memorized25_avg_gap_pp": mean("memorized25", "avg_gap_pp"),
        # doing nothing on the same seeds: a goal that it also meets proves nothing
        "nothing_avg_gap_pp": {
            t: mean(t, "nothing_avg_gap_pp")
            for t in ("random10", "random1", "memorized", "memorized25")
            if mean(t, "nothing_avg_gap_pp") is not None
        },
        "backdoor_asr_no_labels_minus_retrain": mean("backdoor", "asr_minus_retrain"),
        "backdoor_clean_acc_drop": mean("backdoor", "clean_acc_drop"),
        "backdoor_labels_asr_minus_retrain": mean("backdoor_labels", "asr_minus_retrain"),
        "relabel_recovered_share": mean("relabel", "recovered_share"),
        "relabel_other_classes_drop": mean("relabel", "other_classes_drop"),
        "max_seconds_over_retrain": max(ratios) if ratios else None,
        # the same in CPU seconds (rows run since the 2026-12-07 session), immune to other jobs
        "max_cpu_seconds_over_retrain": max(cpu_ratios) if cpu_ratios else None,
        # per task, the slowest seed's default: which task misses the time goal, and whether
        # its CPU ratio is known (rows before the 2026-12-07 session have wall seconds only)
        "seconds_over_retrain_by_task": _max_by_task(goals, "seconds_over_retrain"),
        "cpu_seconds_over_retrain_by_task": _max_by_task(goals, "cpu_seconds_over_retrain"),
        "seeds_passing_every_task": len(passing),
        "retrain_vs_retrain_avg_gap_pp": statistics.fmean(retrain2) if retrain2 else None,
        "best_baseline_avg_gap_pp": {
            t: min(
                ((m, c["avg_gap_pp"]["mean"]) for m, c in cells[t].items() if m in BASELINES),
                key=lambda mc: mc[1],
                default=None,
            )
            for t in tasks
        },
    }
    return {
        "benchmark": "faithfulness_fashion",
        "commands": commands,
        "setup": __doc__.split("\n\n")[1],
        "recipe": RECIPE,
        "machine": machine(),
        "notes": NOTES,
        "summary": summary,
        "cells": cells,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=[m for m in METHODS if m not in VARIANTS],
        help="the default, the baselines and the references; levers of the default: "
        + ", ".join(VARIANTS),
    )
    p.add_argument("--train-samples", type=int, default=None, help="stratified subset (None: all)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", default=RESULT)
    p.add_argument("--note", action="append", default=[], help="a note kept in the result")
    p.add_argument(
        "--reference-rows",
        default=None,
        help="a result file under benchmarks/results whose retrain and retrain' rows are used "
        "instead of training those models (lever studies on seeds not cached here)",
    )
    a = p.parse_args(argv)
    result = run(
        a.seeds, a.tasks, a.methods, a.train_samples, a.resume, a.out, a.note, a.reference_rows
    )
    print(json.dumps(result["summary"], indent=1))


# ----------------------------------------------------------------------------- docs/benchmarks.md


#: the issue's acceptance on this study's summary (key, comparison, goal, what)
GOAL_ROWS = [
    ("random10_avg_gap_pp", "<=", 1.0, "delete 10 % random samples: Avg. Gap to retrain (pp)"),
    ("memorized_avg_gap_pp", "<=", 5.0, "delete memorised samples: Avg. Gap to retrain (pp)"),
    (
        "nothing_avg_gap_pp.memorized",
        ">",
        5.0,
        "delete memorised samples: doing nothing's Avg. Gap (at most 5.0: the goal above proves "
        "nothing, the model never fitted the flipped labels)",
    ),
    ("class_avg_gap_pp", "<=", 0.5, "class removal: Avg. Gap to retrain (pp)"),
    (
        "class_relearn5_minus_retrain",
        "<=",
        0.25,
        "class removal: relearn accuracy after 5 steps (rows reset), unlearned − retrained",
    ),
    ("backdoor_asr_no_labels_minus_retrain", "<=", 0.02, "backdoor, no labels: ASR − retrain's"),
    ("backdoor_clean_acc_drop", "<=", 0.01, "backdoor, no labels: clean test accuracy lost"),
    ("relabel_recovered_share", ">=", 0.8, "label change: share of the class's gap recovered"),
    ("relabel_other_classes_drop", "<=", 0.01, "label change: other classes' accuracy lost"),
    ("max_seconds_over_retrain", "<=", 0.05, "slowest task default: time / retraining's"),
]


GOALS = [
    Goal(
        "faithfulness_fashion.json",
        ("summary", *key.split(".")),
        op,
        goal,
        f"full Fashion-MNIST, {what}",
    )
    for key, op, goal, what in GOAL_ROWS
]


#: this study's result files on the page, in order: (result file, section title; None: the
#: main study's)
LEVER_STUDIES: list[tuple[str, str | None]] = [
    ("faithfulness_fashion.json", None),
    (
        "faithfulness_fashion10k.json",
        "Faithfulness on a 10,000-image Fashion-MNIST subset (a partial run, not the acceptance setting)",
    ),
    (
        "faithfulness_fashion10k_levers.json",
        "Levers of the default on the same subset (response descent, sample removal's budget rule)",
    ),
    (
        "faithfulness_fashion_class_keep2.json",
        "Class removal, full Fashion-MNIST: the largest step within the F1 tolerance, up to 2x the smallest that forgets (the default), vs the smallest",
    ),
    ("faithfulness_fashion10k_class_keep2.json", "The same on the 10,000-image subset"),
    (
        "faithfulness_fashion_class_keep.json",
        "Superseded: the unbounded extension (to max_radius), full Fashion-MNIST",
    ),
    ("faithfulness_fashion10k_class_keep.json", "Superseded: the same on the 10,000-image subset"),
    (
        "faithfulness_fashion10k_class_probe.json",
        "Do the features still hold a removed class? A linear probe on the frozen features",
    ),
    (
        "faithfulness_fashion10k_class_levers.json",
        "Class removal as a label change to the second choice (a lever that did not work)",
    ),
    (
        "faithfulness_fashion10k_backdoor_cost.json",
        "Backdoor cost on the same subset: how many added rows enter the Hessian subset",
    ),
    (
        "faithfulness_fashion_relabel_keep.json",
        "Label change, full Fashion-MNIST: which step is kept",
    ),
    (
        "faithfulness_fashion_relabel_tol.json",
        "Label change, full Fashion-MNIST: the F1 tolerance (0.005, the default since; 0.02 before), seeds 1 and 4",
    ),
    ("faithfulness_fashion_relabel_tol9.json", "The same on seeds 0, 2 and 3"),
    (
        "faithfulness_fashion_backdoor_lr.json",
        "Backdoor repair, full Fashion-MNIST: the response descent's learning rate (1e-3, the default since; 3e-4 before)",
    ),
    ("faithfulness_fashion_backdoor_labels_lr.json", "The same with true labels"),
    (
        "faithfulness_fashion_random10_lr.json",
        "Deleting 10 % random samples, full Fashion-MNIST: the response descent at learning rate 1e-3 (a lever; sample removal's default stays 3e-4)",
    ),
    (
        "faithfulness_fashion_backdoor_levers.json",
        "Backdoor repair, full Fashion-MNIST: what the time goes to (response descent, rounds)",
    ),
    (
        "faithfulness_fashion_samplers.json",
        "The Hessian-subset sampler on the tasks whose curvature spans the network (full Fashion-MNIST)",
    ),
    (
        "faithfulness_fashion_cost.json",
        "Cost levers on full Fashion-MNIST: fewer solver iterations, a smaller Hessian subset",
    ),
    (
        "faithfulness_fashion_random10_response.json",
        "Sample removal with response descent (full Fashion-MNIST, random10)",
    ),
    (
        "faithfulness_fashion_samples_levers.json",
        "Sample removal with memorised rows scored and the response descent (full Fashion-MNIST)",
    ),
    (
        "faithfulness_fashion_memorized25.json",
        "Memorised samples on full Fashion-MNIST, 25 fixed epochs (the flips fitted)",
    ),
]


FAITHFULNESS_COLUMNS = [
    ("avg_gap_pp", "Avg. Gap (pp)", 2),
    ("ua", "UA", 3),
    ("mia_efficacy", "MIA-eff.", 3),
    ("ra", "RA", 3),
    ("ta", "TA", 3),
    ("relearn5", "relearn@5", 3),
    ("relearn5_no_reset", "relearn@5 (no reset)", 3),
    ("probe50", "probe@50", 3),
    ("asr", "ASR", 3),
    ("seconds", "seconds", 1),
    ("cpu_seconds", "CPU s", 1),
]


def _time_by_task(s: dict) -> list[str]:
    """One line: each task's default time over retraining's, slowest seed, wall and CPU."""
    wall, cpu = s.get("seconds_over_retrain_by_task"), s.get("cpu_seconds_over_retrain_by_task")
    if not wall:
        return []
    parts = [
        f"{t} {w:.3f}x" + (f" ({cpu[t]:.3f}x CPU)" if cpu and cpu.get(t) is not None else "")
        for t, w in wall.items()
        if w is not None
    ]
    return [f"Default's time / retraining's, slowest seed, wall (CPU): {', '.join(parts)}.", ""]


def faithfulness_section(
    d: dict | None, title: str = "Faithfulness to retraining: the field's measures"
) -> list[str]:
    """Every forget task against retraining with the field's measures (faithfulness.py)."""
    if not d:
        return []
    s = d["summary"]
    out = [
        f"## {title}",
        "",
        f"Commands: {md.commands(d)}. Training samples: "
        f"{s['train_samples']}; seeds: {s['seeds']}; seeds passing every task's acceptance: "
        f"{s['seeds_passing_every_task']}; retrain′ vs retrain (the noise floor): "
        f"{s['retrain_vs_retrain_avg_gap_pp'] or float('nan'):.2f} pp. Mean ± std over seeds, "
        "every number on test data (UA, MIA-efficacy on the forget set, RA on retained "
        "training data); every method picks its steps on validation data.",
        "",
        *md.notes(d),
        *_time_by_task(s),
    ]
    for task, methods in d["cells"].items():
        cols = [c for c in FAITHFULNESS_COLUMNS if any(c[0] in m for m in methods.values())]
        out += [
            f"**{task}**",
            "",
            "| method | " + " | ".join(label for _, label, _ in cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for name, cell in methods.items():
            vals = " | ".join(md.ms(cell.get(k), digits) for k, _, digits in cols)
            out.append(f"| {name} | {vals} |")
        out.append("")
    return out


def render() -> list[str]:
    """This study's part of docs/benchmarks.md."""
    out: list[str] = []
    for name, title in LEVER_STUDIES:
        out += faithfulness_section(md.load(name), *([title] if title else []))
    return out


if __name__ == "__main__":
    main()
