"""Hessian-subset samplers on full Fashion-MNIST: logit / feature k-means vs random.

The sampling paper's claims (direction consistency, F1 at equal budget, time and memory at
equal F1) measured on the realistic setup of ``benchmarks.fashion`` (54,000 training images,
the CNN trained to convergence; its cached seed-0 model and retrained references), with the
callback's *default* configuration (class removal: the forgotten class's output unit, with
the curvature of the output layer's parameters). For each forgotten class, sampler, budget
and seed (the seed is the subset draw):

1. **Direction.** The GIF direction with H on the sampled, weighted subset, and its cosine
   to the *reference*: the same solve with H on every retained training image (weight 1).
   The output layer's inputs are fixed, so both solves run on the layer with the recorded
   features as inputs (exact for this curvature, and cheap for 48,600 images). The subsets
   are drawn from the capture of the whole training set.
2. **Memory, measured.** The same subset solve through the full model, as the callback runs
   it (``li.influence(..., params=output layer)``, g formed beforehand, so the block holds the
   Hessian-vector products' work): the process's peak resident memory above its level before
   the solve (Linux ``VmHWM`` after resetting it via ``clear_refs``, with
   ``malloc_trim`` before and glibc's mmap threshold pinned at 64 KiB, so freed memory is
   returned and every large allocation of the solve shows up).
3. **Class removal.** ``UnlearnCallback(forget_classes=[c], hessian={sampler, budget},
   seed=k).unlearn_model`` on a copy (its own 4096-image candidate pool; step chosen on
   validation data), test F1 on test data, wall time ``report.seconds['total']``.

Equal F1: per class, the target is the best cell's mean test F1 minus ``F1_TOLERANCE``; each
sampler's smallest budget whose mean test F1 reaches it is compared (time and measured solve
memory, logit over random).

Run (resumable; rows are written after every run)::

    python -m benchmarks.samplers_fashion --classes 6 0 --budgets 32 128 512 --seeds 0 1 2 --resume
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import sys
import time
import warnings
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

import lightning_influence as li
from benchmarks import markdown as md
from benchmarks.common import (
    RESULTS,
    geometric_mean_or_none,
    machine,
    mean_or_none,
    mean_std,
    write_json,
)
from benchmarks.fashion import cached_fit, splits, without
from benchmarks.markdown import Goal
from benchmarks.unlearning import PeakRSS
from lightning_influence.data._modules import eval_mode
from lightning_influence.solve.curvature import default_loss
from lightning_influence.solve.influence import influence_gradient
from lightning_influence.unlearn.selection import output_layer

RESULT = "samplers_fashion.json"
SAMPLERS = ("random", "feature", "logit")
SOLVE = {"damping": 1e-3, "tol": 1e-4, "max_iter": 200}
F1_TOLERANCE = 0.002
MMAP_THRESHOLD = "65536"


def _trim() -> None:
    """Return freed heap memory to the OS (glibc), so a later peak is the block's own."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _batches(x: Tensor, y: Tensor, w: Tensor | None, size: int = 256) -> list[li.Batch]:
    return [
        li.Batch(x[i : i + size], y[i : i + size], weights=None if w is None else w[i : i + size])
        for i in range(0, len(y), size)
    ]


def _solve(model, hessian, forget, masks, params=None, gradient=None) -> tuple[Any, Any]:
    """The GIF solve; with ``gradient`` given, g is not formed again (only H's work runs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return li.influence(
            model,
            None,
            hessian,
            None if gradient is not None else forget,
            selection=masks,
            params=params,
            gradient=gradient,
            **SOLVE,
        )


def _flat(delta: dict[str, Tensor], keys: list[str]) -> Tensor:
    return torch.cat([delta[k].reshape(-1).double() for k in keys])


def _cos(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


class Task:
    """Everything one (class, seed-0 model) shares: data, pool capture, head, reference."""

    def __init__(self, c: int) -> None:
        self.c = c
        self.train, self.val, self.test = splits(0)
        self.model, _ = cached_fit("base_seed0", self.train, self.val, 0)
        x, y = self.train.tensors
        self.x, self.y = x, y
        forget = (y == c).nonzero().flatten()
        self.forget = _batches(x[forget], y[forget], None)
        self.head_name = output_layer(self.model, self.forget)
        self.head = dict(self.model.named_modules())[self.head_name]
        self.masks = li.select_parameters(
            self.model, self.forget, method="highest_gradients", layers="output", ratio=0.05
        )
        self.params = list(self.masks)
        with eval_mode(self.model):  # g once: the measured solves hold only H's work
            self.gradient = influence_gradient(self.model, default_loss, self.forget)
        self.pool = li.capture_pool(
            self.model, DataLoader(li.IndexedDataset(self.train), batch_size=1024)
        )
        self.forget_ids = forget
        keep = self.pool.labels != c
        feats, labels = self.pool.features, self.pool.labels
        self.head_masks = {k.removeprefix(self.head_name + "."): m for k, m in self.masks.items()}
        self.head_keys = list(self.head_masks)
        fmask = self.pool.labels == c
        self.head_forget = _batches(feats[fmask], labels[fmask], None, 4096)
        start = time.perf_counter()
        ref, rep = _solve(
            self.head,
            _batches(feats[keep], labels[keep], torch.ones(int(keep.sum())), 4096),
            self.head_forget,
            self.head_masks,
        )
        self.reference = _flat(ref, self.head_keys)
        self.reference_info = {
            "retained_images": int(keep.sum()),
            "seconds": time.perf_counter() - start,
            "residual": float(rep.residual),
            "converged": bool(rep.converged),
        }
        self.retrain_test = li.evaluate_forgetting(
            cached_fit(f"retrain_c{c}_seed0", without(self.train, c), without(self.val, c), 0)[0],
            DataLoader(self.test, batch_size=1024),
            [c],
        )

    def row(self, sampler: str, budget: int, seed: int) -> dict[str, Any]:
        row: dict[str, Any] = {"forget_class": self.c, "sampler": sampler, "budget": budget}
        row["seed"] = seed
        sel = li.get_sampler(sampler).select(
            self.pool, budget, exclude_classes=[self.c], exclude_ids=self.forget_ids, seed=seed
        )
        pos = torch.searchsorted(self.pool.ids, sel.ids)
        w = sel.weights.to(torch.float32)
        # 1. direction, on the output layer with its recorded inputs
        head_h = _batches(self.pool.features[pos], self.pool.labels[pos], w)
        delta, _ = _solve(self.head, head_h, self.head_forget, self.head_masks)
        row["cosine_to_reference"] = _cos(_flat(delta, self.head_keys), self.reference)
        # 2. the same solve through the model, as the callback runs it: measured memory
        ids = sel.ids.long()
        hess = _batches(self.x[ids], self.y[ids], w)
        _trim()
        with PeakRSS() as mem:
            start = time.perf_counter()
            full, rep = _solve(
                self.model, hess, None, self.masks, self.params, gradient=self.gradient
            )
            row["solve_seconds"] = time.perf_counter() - start
        row["solve_peak_bytes"] = mem.extra_bytes
        row["solve_hvps"] = int(rep.hvps)
        row["cosine_full_vs_head"] = _cos(_flat(full, self.params), _flat(delta, self.head_keys))
        # 3. the callback's class removal; test metrics
        work = copy.deepcopy(self.model)
        cb = li.UnlearnCallback(
            forget_classes=[self.c],
            seed=seed,
            progress_bar=False,
            hessian={"sampler": sampler, "budget": budget},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = cb.unlearn_model(
                work,
                DataLoader(li.IndexedDataset(self.train), batch_size=256),
                DataLoader(self.val, batch_size=1024),
            )
        t = li.evaluate_forgetting(work, DataLoader(self.test, batch_size=1024), [self.c])
        row.update({f"test_{k}": v for k, v in t.items()})
        row["applied"] = bool(report.applied)
        row["seconds_total"] = float(report.seconds["total"])
        row["stage_seconds"] = {k: float(v) for k, v in report.seconds.items()}
        return row


def summarise(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    keys = ("cosine_to_reference", "test_f1", "seconds_total", "solve_peak_bytes", "solve_seconds")
    cells: dict[tuple[int, str, int], dict[str, Any]] = {}
    for c, s, b in sorted({(r["forget_class"], r["sampler"], r["budget"]) for r in rows}):
        sub = [r for r in rows if (r["forget_class"], r["sampler"], r["budget"]) == (c, s, b)]
        cells[c, s, b] = {"forget_class": c, "sampler": s, "budget": b} | {
            k: mean_std([r[k] for r in sub if r.get(k) is not None]) for k in keys
        }
    std_ratio: dict[str, list[float]] = {"logit": [], "feature": []}
    gain: dict[str, list[float]] = {"logit": [], "feature": []}
    equal: list[dict[str, Any]] = []
    for c in sorted({k[0] for k in cells}):
        budgets = sorted({k[2] for k in cells if k[0] == c})
        for b in budgets:
            rnd = cells.get((c, "random", b))
            for s in ("logit", "feature"):
                other = cells.get((c, s, b))
                if rnd is None or other is None:
                    continue
                if rnd["cosine_to_reference"]["std"] > 0:
                    std_ratio[s].append(
                        other["cosine_to_reference"]["std"] / rnd["cosine_to_reference"]["std"]
                    )
                gain[s].append(other["test_f1"]["mean"] - rnd["test_f1"]["mean"])
        target = max(v["test_f1"]["mean"] for k, v in cells.items() if k[0] == c) - F1_TOLERANCE
        first = {
            s: next(
                (
                    cells[c, s, b]
                    for b in budgets
                    if (c, s, b) in cells and cells[c, s, b]["test_f1"]["mean"] >= target
                ),
                None,
            )
            for s in SAMPLERS
        }
        entry: dict[str, Any] = {
            "forget_class": c,
            "target_f1": target,
            "budget_reaching_target": {s: v and v["budget"] for s, v in first.items()},
        }
        lg, rd = first["logit"], first["random"]
        if lg and rd:
            entry["time_ratio"] = lg["seconds_total"]["mean"] / rd["seconds_total"]["mean"]
            entry["memory_ratio_measured"] = (
                lg["solve_peak_bytes"]["mean"] / rd["solve_peak_bytes"]["mean"]
            )
        equal.append(entry)

    summary = {
        "train_samples": 54000,
        "std_ratio_logit": mean_or_none(std_ratio["logit"]),
        "std_ratio_feature": mean_or_none(std_ratio["feature"]),
        "f1_gain_at_equal_budget": mean_or_none(gain["logit"]),
        "f1_gain_feature_at_equal_budget": mean_or_none(gain["feature"]),
        "time_ratio_at_equal_f1": geometric_mean_or_none(
            [e["time_ratio"] for e in equal if "time_ratio" in e]
        ),
        "memory_ratio_at_equal_f1_measured": geometric_mean_or_none(
            [e["memory_ratio_measured"] for e in equal if "memory_ratio_measured" in e]
        ),
        "equal_f1": equal,
        "paper": {"time": "-30.1 %", "memory": "-42.2 %", "f1": "+2.5 %"},
        "definitions": {
            "std_ratio_*": "std over seeds of the cosine to the reference direction, sampler "
            "over random, averaged over budgets and classes (lower: more consistent)",
            "f1_gain_*_at_equal_budget": "mean test F1 of the sampler minus random's, averaged "
            "over budgets and classes",
            "*_at_equal_f1": f"per class, each sampler's smallest budget whose mean test F1 is "
            f"within {F1_TOLERANCE} of the best cell; logit over random, geometric mean over "
            "classes (time: the callback's total seconds; memory: the measured solve peak)",
        },
    }
    return list(cells.values()), summary


def plot(cells: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted({c["forget_class"] for c in cells})
    fig, axes = plt.subplots(len(classes), 3, figsize=(12, 3.2 * len(classes)), squeeze=False)
    for row, c in zip(axes, classes, strict=True):
        for ax, key, label in zip(
            row,
            ("cosine_to_reference", "test_f1", "solve_peak_bytes"),
            ("cosine to reference", "test F1", "measured solve peak (MiB)"),
            strict=True,
        ):
            for s in SAMPLERS:
                cs = [x for x in cells if x["forget_class"] == c and x["sampler"] == s]
                scale = 2**20 if key == "solve_peak_bytes" else 1
                ax.errorbar(
                    [x["budget"] for x in cs],
                    [x[key]["mean"] / scale for x in cs],
                    yerr=[x[key]["std"] / scale for x in cs],
                    label=s,
                    marker="o",
                    capsize=3,
                )
            ax.set_xscale("log", base=2)
            ax.set_xlabel("Hessian subset size")
            ax.set_title(f"class {c}: {label}", fontsize=9)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "samplers_fashion.png", dpi=110)


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:  # glibc reads it at start
        os.environ["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
        os.execv(
            sys.executable, [sys.executable, "-m", "benchmarks.samplers_fashion", *sys.argv[1:]]
        )
    p = argparse.ArgumentParser(prog="python -m benchmarks.samplers_fashion", description=__doc__)
    p.add_argument("--classes", type=int, nargs="+", default=[6, 0])
    p.add_argument("--budgets", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    path = RESULTS / RESULT
    old = json.loads(path.read_text()) if a.resume and path.exists() else {}
    rows = old.get("rows", [])
    tasks_info = old.get("tasks", {})
    done = {(r["forget_class"], r["sampler"], r["budget"], r["seed"]) for r in rows}
    command = "python -m benchmarks.samplers_fashion " + " ".join(sys.argv[1:])
    commands = [*old.get("commands", []), command]
    for c in a.classes:
        todo = [
            (s, b, k)
            for b in a.budgets
            for k in a.seeds
            for s in SAMPLERS  # interleaved, so drifting load does not fall on one sampler
            if (c, s, b, k) not in done
        ]
        if not todo:
            continue
        task = Task(c)
        tasks_info[str(c)] = {"reference": task.reference_info, "retrain_test": task.retrain_test}
        for s, b, k in todo:
            row = task.row(s, b, k)
            rows.append(row)
            print(
                f"class {c} {s:7s} b={b:4d} seed {k}: cos {row['cosine_to_reference']:.4f} "
                f"F1 {row['test_f1']:.4f} {row['seconds_total']:.1f}s "
                f"solve peak {row['solve_peak_bytes'] / 2**20:.1f} MiB",
                flush=True,
            )
            cells, summary = summarise(rows)
            write_json(
                RESULT,
                {
                    "benchmark": "samplers_fashion",
                    "commands": commands,
                    "setup": __doc__.split("\n\n")[1],
                    "machine": machine(),
                    "solve": SOLVE,
                    "summary": summary,
                    "tasks": tasks_info,
                    "cells": cells,
                    "rows": rows,
                },
            )
    cells, _ = summarise(rows)
    plot(cells)
    print(json.dumps(summarise(rows)[1], indent=2))


# ----------------------------------------------------------------------------- docs/benchmarks.md


GOALS = [
    Goal(
        "samplers_fashion.json",
        ("summary", "time_ratio_at_equal_f1"),
        "<=",
        0.5,
        "full Fashion-MNIST: logit / random time at equal F1",
    ),
    Goal(
        "samplers_fashion.json",
        ("summary", "memory_ratio_at_equal_f1_measured"),
        "<=",
        0.5,
        "full Fashion-MNIST: logit / random measured solve memory at equal F1",
    ),
    Goal(
        "samplers_fashion.json",
        ("summary", "f1_gain_at_equal_budget"),
        ">=",
        0.025,
        "full Fashion-MNIST: logit − random F1 at equal budget",
    ),
    Goal(
        "samplers_fashion.json",
        ("summary", "std_ratio_logit"),
        "<=",
        0.5,
        "full Fashion-MNIST: logit / random std across seeds",
    ),
]


def samplers_fashion_section(d: dict | None) -> list[str]:
    """Samplers on full Fashion-MNIST with measured solve memory (benchmarks/samplers_fashion.py)."""
    title = "## Samplers on full Fashion-MNIST (measured memory)"
    if not d:
        return [title, "", "Not run yet: `python -m benchmarks.samplers_fashion --resume`.", ""]
    s = d["summary"]
    out = [
        title,
        "",
        "Commands: " + md.commands(d) + ". " + d["setup"].replace("\n", " "),
        "",
        "| class | sampler | budget | cosine to full-pool direction | test F1 | callback seconds | solve peak MiB (measured) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in d["cells"]:
        mem = c["solve_peak_bytes"]
        out.append(
            f"| {c['forget_class']} | {c['sampler']} | {c['budget']} | {md.ms(c['cosine_to_reference'])} | "
            f"{md.ms(c['test_f1'])} | {md.ms(c['seconds_total'], 1)} | "
            f"{mem['mean'] / 2**20:.1f} ± {mem['std'] / 2**20:.1f} |"
        )

    def fmt(v: Any) -> str:
        return "–" if v is None else f"{v:+.4f}" if isinstance(v, float) else str(v)

    out += ["", "| summary key | value | the paper |", "|---|---|---|"]
    paper = {
        "time_ratio_at_equal_f1": "0.699 (−30.1 %)",
        "memory_ratio_at_equal_f1_measured": "0.578 (−42.2 %)",
        "f1_gain_at_equal_budget": "+0.025",
    }
    for k in (
        "std_ratio_logit",
        "std_ratio_feature",
        "f1_gain_at_equal_budget",
        "f1_gain_feature_at_equal_budget",
        "time_ratio_at_equal_f1",
        "memory_ratio_at_equal_f1_measured",
    ):
        out.append(f"| `{k}` | {fmt(s.get(k))} | {paper.get(k, '')} |")
    out += [
        "",
        "Equal-F1 budgets: "
        + "; ".join(
            f"class {e['forget_class']} (target {e['target_f1']:.4f}): {e['budget_reaching_target']}"
            for e in s["equal_f1"]
        )
        + ".",
    ]
    out += [f"Definitions: {k}: {v}." for k, v in s.get("definitions", {}).items()]
    out += [""] + [f"Note: {n}" for n in d.get("notes", [])]
    out += ["", "![samplers on Fashion-MNIST](../benchmarks/results/samplers_fashion.png)", ""]
    return out


def render() -> list[str]:
    """This study's part of docs/benchmarks.md."""
    return samplers_fashion_section(md.load("samplers_fashion.json"))


if __name__ == "__main__":
    main()
