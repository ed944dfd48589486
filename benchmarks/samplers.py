"""Hessian-subset samplers (random vs feature vs logit k-means): consistency, F1, cost.

The advanced-sampling paper's study on a SmallCNN trained on
scikit-learn digits (and, in the ``full`` suite, on Fashion-MNIST when the Debian
``dataset-fashion-mnist`` files are present). For each forgotten class, sampler, budget and
seed (the seed is the Hessian-subset draw):

1. **Direction.** The GIF direction (20 % highest-output units, fixed across runs; damped
   CGLS, λ = 1e-3, the callback's ``tol``/``max_iter``; ``forget_weight = m/(n−m)``) with H on the
   sampled, weighted subset, and its cosine to the *reference* direction: the same solve with
   H on the whole retained training pool (weight 1 each). One ``capture_pool`` per model; the
   sampler's ``select`` per seed.
2. **Class removal.** ``UnlearnCallback(forget_classes=[c], sampler=s, hessian_budget=b,
   seed=k).unlearn_model`` on a deep copy of the trained model (step chosen on *validation*
   data by the callback), then ``li.evaluate_forgetting`` on *test* data: F1, EL, SL, and
   |EL − EL_retrain|, |SL − SL_retrain| against a model retrained without the class (cached).
   Wall time: the callback's ``report.seconds``.
3. **Memory** (see ``memory_definition`` in the JSON): the bytes the Hessian part holds per
   HVP, ``budget × (input bytes + every module's output bytes per sample)``, with the
   per-sample activation bytes measured by forward hooks on one pass. The process RSS that
   the callback reports on CPU is a process-wide high-water mark and is kept only as a raw
   field. The capture the cluster samplers need is reported separately (``capture_bytes``).

Run: ``python -m benchmarks.samplers --suite small`` (or ``run(suite="small")``). Writes
``benchmarks/results/samplers.json`` and ``samplers.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

import lightning_influence as li
from benchmarks import markdown as md
from benchmarks.common import (
    CACHE,
    RESULTS,
    geometric_mean_or_none,
    machine,
    mean_or_none,
    mean_std,
    trained_digits_cnn,
    unlearn_callback,
    write_json,
)
from benchmarks.markdown import Goal

SAMPLERS = ("random", "feature", "logit")

SUITES: dict[str, dict[str, Any]] = {
    "small": {
        "datasets": {"digits": [3]},
        "budgets": [16, 32, 64, 128, 256],
        "seeds": 10,
    },
    "full": {
        "datasets": {"digits": [0, 3, 8], "fashion_mnist": [0, 6]},
        "budgets": [16, 32, 64, 128, 256],
        "seeds": 10,
    },
}

F1_TARGET_FRACTION = 0.98
FASHION_TRAIN_SAMPLES = 10_000
FASHION_EPOCHS = 5


# ---------------------------------------------------------------------------- data & models


def _xy(ds) -> tuple[Tensor, Tensor]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return torch.stack(xs), torch.tensor([int(v) for v in ys])


# One fixed unlearning configuration for every sampler, so that samplers are compared at
# equal hyper-parameters: the callback's solver tolerance, the larger ratio of its default
# grid and the middle of its damping grid (a converged, damped CGLS solve, so the spread
# across seeds is sampling noise, not early-stopping noise).
# One fixed unlearning configuration for every sampler and budget (what samplers.json holds).
FIXED = {"ratio": 0.2, "damping": 1e-3}
SOLVE = {"tol": 1e-4, "max_iter": 100, "selection": "highest_outputs"}


def _unlearning_config() -> dict[str, Any]:
    return {**SOLVE, **FIXED}


def _fashion_available() -> tuple[bool, str]:
    from lightning_influence.demos.datasets import FASHION_MNIST_DEBIAN_DIR, _find_fashion_dir

    folder, _ = _find_fashion_dir(None)
    if folder is None:
        return False, (
            f"Fashion-MNIST not found in {FASHION_MNIST_DEBIAN_DIR}: install it offline with "
            "`sudo apt-get install dataset-fashion-mnist`; skipped."
        )
    return True, f"Fashion-MNIST read from {folder}"


def _trained(dataset: str) -> tuple[nn.Module, tuple[Any, Any, Any], dict[str, Any]]:
    """The trained model and (train, val, test) for ``dataset`` (cached under benchmarks/cache)."""
    from lightning_influence.demos.models import ImageClassifier, train_classifier

    if dataset == "digits":
        model, splits = trained_digits_cnn(seed=0)
        return model, splits, {"epochs": 15, "seed": 0, "cache": "digits_cnn_seed0_ep15.pt"}
    from lightning_influence.demos.datasets import fashion_mnist_splits

    splits = fashion_mnist_splits(seed=0, max_train_samples=FASHION_TRAIN_SAMPLES)
    name = f"fashion_cnn_seed0_n{FASHION_TRAIN_SAMPLES}_ep{FASHION_EPOCHS}.pt"
    path = CACHE / name
    if path.exists():
        model = ImageClassifier(num_classes=10, image_size=28)
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    else:
        CACHE.mkdir(parents=True, exist_ok=True)
        model = train_classifier(splits[0], splits[1], epochs=FASHION_EPOCHS, seed=0)
        torch.save(model.state_dict(), path)
    info = {"epochs": FASHION_EPOCHS, "seed": 0, "max_train_samples": FASHION_TRAIN_SAMPLES}
    return model, splits, {**info, "cache": name}


def _retrained(dataset: str, cls: int, splits, image_size: int, epochs: int) -> nn.Module:
    """A model trained from scratch without class ``cls`` (cached): the EL/SL reference."""
    from lightning_influence.demos.models import ImageClassifier, train_classifier

    train, val, _ = splits
    path = CACHE / f"{dataset}_retrain_without{cls}_seed0_ep{epochs}.pt"
    if path.exists():
        model = ImageClassifier(num_classes=10, image_size=image_size)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    keep_tr = [i for i in range(len(train)) if int(train[i][1]) != cls]
    keep_va = [i for i in range(len(val)) if int(val[i][1]) != cls]
    model = train_classifier(
        Subset(train, keep_tr), Subset(val, keep_va), epochs=epochs, seed=0, num_classes=10
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def _activation_bytes_per_sample(model: nn.Module, x: Tensor) -> int:
    """Input bytes + the bytes of every leaf module's output, per sample (forward hooks)."""
    total = [0]

    def hook(_m, _i, out):
        if isinstance(out, Tensor):
            total[0] += out[0].numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return int(total[0] + x[0].numel() * x.element_size())


# ---------------------------------------------------------------------------- measurement


def _flat(delta: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
    return torch.cat([delta[k][masks[k]].reshape(-1).double() for k in sorted(masks)])


def _cos(a: Tensor, b: Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))


def _solve(model, hessian, forget, masks, fw, tol, max_iter, damping=FIXED["damping"]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        delta, rep = li.influence(
            model,
            None,
            hessian,
            forget,
            selection=masks,
            estimator="gif",
            solver="krylov",
            forget_weight=fw,
            tol=tol,
            max_iter=max_iter,
            damping=damping,
        )
    return delta, rep


def _chunks(x: Tensor, y: Tensor, w: Tensor | None, size: int = 256) -> list[li.Batch]:
    """Weighted batches (``w=None``: unweighted)."""
    return [
        li.Batch(x[i : i + size], y[i : i + size], weights=None if w is None else w[i : i + size])
        for i in range(0, len(y), size)
    ]


def measure_task(
    dataset: str,
    cls: int,
    model: nn.Module,
    splits,
    retrained: nn.Module | None,
    budgets: list[int],
    seeds: list[int],
    samplers: tuple[str, ...] = SAMPLERS,
    log=print,
    reference_rows: int | None = None,
) -> list[dict[str, Any]]:
    """All per-run rows for one (dataset, forgotten class). The reference direction solves
    on every retained sample, or on the first ``reference_rows`` of them (a smoke test)."""
    defaults = _unlearning_config()
    tol, max_iter = float(defaults["tol"]), int(defaults["max_iter"])
    train, val, test = splits
    x, y = _xy(train)
    itrain = li.IndexedDataset(train)
    train_loader = DataLoader(itrain, batch_size=256, shuffle=False)
    val_loader = DataLoader(val, batch_size=256)
    test_loader = DataLoader(test, batch_size=512)

    forget_rows = (y == cls).nonzero().squeeze(1)
    retained_rows = (y != cls).nonzero().squeeze(1)[:reference_rows]
    n, m = len(y), len(forget_rows)
    fw = m / (n - m)
    forget = _chunks(x[forget_rows], y[forget_rows], None)
    masks = li.select_parameters(
        model, forget, method=defaults["selection"], ratio=float(defaults["ratio"])
    )

    # Reference: H on the whole retained pool (or its first reference_rows).
    clock = time.perf_counter()
    ref_delta, ref_rep = _solve(
        model,
        _chunks(x[retained_rows], y[retained_rows], torch.ones(len(retained_rows))),
        forget,
        masks,
        fw,
        tol,
        max_iter,
    )
    ref = _flat(ref_delta, masks)
    log(
        f"[{dataset} class {cls}] reference solve on {len(retained_rows)} retained samples: "
        f"{time.perf_counter() - clock:.2f} s, residual {ref_rep.residual:.3g}"
    )

    pool = li.capture_pool(model, train_loader)
    per_sample = _activation_bytes_per_sample(model, x)
    capture_bytes = {
        "random": int(pool.ids.nbytes + pool.labels.nbytes),
        "logit": int(pool.ids.nbytes + pool.labels.nbytes + pool.logits.nbytes),
        "feature": int(pool.nbytes),
    }
    ref_test = li.evaluate_forgetting(retrained, test_loader, [cls]) if retrained else None
    before_test = li.evaluate_forgetting(model, test_loader, [cls])

    rows: list[dict[str, Any]] = []
    # One discarded warm-up run, then samplers interleaved per (budget, seed), so that
    # warm-up costs and drifting machine load do not fall on one sampler.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unlearn_callback(
            forget_classes=[cls],
            sampler="random",
            hessian_budget=budgets[0],
            progress_bar=False,
            **FIXED,
        ).unlearn_model(copy.deepcopy(model), train_loader, val_loader, progress_bar=False)
    samplers_by_name = {s: li.get_sampler(s) for s in samplers}
    for b in budgets:
        for k in seeds:
            for s in samplers:
                sampler = samplers_by_name[s]
                row: dict[str, Any] = {
                    "dataset": dataset,
                    "forget_class": cls,
                    "sampler": s,
                    "budget": b,
                    "seed": k,
                }
                # 1. direction vs reference.
                clock = time.perf_counter()
                sel = sampler.select(
                    pool, b, exclude_classes=[cls], exclude_ids=forget_rows, seed=k
                )
                row["select_seconds"] = time.perf_counter() - clock
                rows_b = sel.ids.long()  # ids are dataset indices (IndexedDataset)
                hess = _chunks(x[rows_b], y[rows_b], sel.weights.to(torch.float32))
                delta, rep = _solve(model, hess, forget, masks, fw, tol, max_iter)
                row["cosine_to_reference"] = _cos(_flat(delta, masks), ref)
                row["direction_solve_seconds"] = float(rep.seconds)
                row["unique_picks"] = int(len(set(rows_b.tolist())))

                # 2. the callback pipeline on a copy; test metrics.
                work = copy.deepcopy(model)
                cb = unlearn_callback(
                    forget_classes=[cls],
                    sampler=s,
                    hessian_budget=b,
                    seed=k,
                    progress_bar=False,
                    tol=tol,
                    max_iter=max_iter,
                    **FIXED,
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    report = cb.unlearn_model(work, train_loader, val_loader, progress_bar=False)
                t = li.evaluate_forgetting(work, test_loader, [cls])
                row.update(
                    {
                        "applied": bool(report.applied),
                        "radius": float(report.radius),
                        "val_f1": float(report.after.get("f1", math.nan)),
                        "test_forget_acc": t["forget_acc"],
                        "test_retain_acc": t["retain_acc"],
                        "test_f1": t["f1"],
                        "test_el": t["exclusive_loss"],
                        "test_sl": t["self_loss"],
                        "seconds_total": float(report.seconds.get("total", math.nan)),
                        "seconds": {k2: float(v) for k2, v in report.seconds.items()},
                        "hessian_bytes": int(b * per_sample),
                        "capture_bytes": capture_bytes[s],
                        "process_max_rss_bytes": int(report.peak_memory_bytes),
                        "memory_kind_callback": report.memory_kind,
                    }
                )
                if ref_test is not None:
                    row["el_gap"] = abs(t["exclusive_loss"] - ref_test["exclusive_loss"])
                    row["sl_gap"] = abs(t["self_loss"] - ref_test["self_loss"])
                rows.append(row)
        for s in samplers:
            cell = [r for r in rows if r["sampler"] == s and r["budget"] == b]
            log(
                f"  {s:7s} b={b:4d}: cos {_fmt([r['cosine_to_reference'] for r in cell])}  "
                f"test F1 {_fmt([r['test_f1'] for r in cell])}  "
                f"{statistics.fmean(r['seconds_total'] for r in cell):.2f} s/run"
            )
    for r in rows:
        r["_task_info"] = {
            "reference_residual": float(ref_rep.residual),
            "retained_pool": n - m,
            "forget_size": m,
            "activation_bytes_per_sample": per_sample,
            "before_test": before_test,
            "retrain_test": ref_test,
        }
    return rows


def _fmt(vals: list[float]) -> str:
    ms = mean_std(vals)
    return f"{ms['mean']:.4f} ± {ms['std']:.4f}"


# ---------------------------------------------------------------------------- aggregation


def aggregate(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-cell mean ± std and the summary object."""
    keys = (
        "cosine_to_reference",
        "test_f1",
        "test_forget_acc",
        "test_retain_acc",
        "test_el",
        "test_sl",
        "el_gap",
        "sl_gap",
        "seconds_total",
        "hessian_bytes",
        "capture_bytes",
    )
    tasks = sorted({(r["dataset"], r["forget_class"]) for r in rows})
    cells: list[dict[str, Any]] = []
    for d, c in tasks:
        for s in SAMPLERS:
            for b in sorted({r["budget"] for r in rows}):
                sub = [
                    r
                    for r in rows
                    if (r["dataset"], r["forget_class"], r["sampler"], r["budget"]) == (d, c, s, b)
                ]
                if not sub:
                    continue
                cell = {"dataset": d, "forget_class": c, "sampler": s, "budget": b}
                for k in keys:
                    if k in sub[0]:
                        cell[k] = mean_std([r[k] for r in sub])
                cell["applied_fraction"] = statistics.fmean(float(r["applied"]) for r in sub)
                cells.append(cell)

    def get(d, c, s, b):
        for cell in cells:
            if (cell["dataset"], cell["forget_class"], cell["sampler"], cell["budget"]) == (
                d,
                c,
                s,
                b,
            ):
                return cell
        return None

    std_ratio: dict[str, list[float]] = {"logit": [], "feature": []}
    std_ratio_f1: dict[str, list[float]] = {"logit": [], "feature": []}
    gain: dict[str, list[float]] = {"logit": [], "feature": []}
    equal_f1: list[dict[str, Any]] = []
    notes: list[str] = []
    for d, c in tasks:
        budgets = sorted({cell["budget"] for cell in cells if cell["dataset"] == d})
        for b in budgets:
            rnd = get(d, c, "random", b)
            for s in ("logit", "feature"):
                other = get(d, c, s, b)
                if rnd is None or other is None:
                    continue
                rs = rnd["cosine_to_reference"]["std"]
                if rs > 0:
                    std_ratio[s].append(other["cosine_to_reference"]["std"] / rs)
                rf = rnd["test_f1"]["std"]
                if rf > 0:
                    std_ratio_f1[s].append(other["test_f1"]["std"] / rf)
                gain[s].append(other["test_f1"]["mean"] - rnd["test_f1"]["mean"])
        best = max(
            cell["test_f1"]["mean"]
            for cell in cells
            if (cell["dataset"], cell["forget_class"]) == (d, c)
        )
        target = F1_TARGET_FRACTION * best
        reached: dict[str, Any] = {}
        for s in SAMPLERS:
            hit = [
                get(d, c, s, b)
                for b in budgets
                if get(d, c, s, b) and get(d, c, s, b)["test_f1"]["mean"] >= target
            ]
            reached[s] = hit[0] if hit else None
        entry: dict[str, Any] = {
            "dataset": d,
            "forget_class": c,
            "target_f1": target,
            "budget_reaching_target": {
                s: (None if reached[s] is None else reached[s]["budget"]) for s in SAMPLERS
            },
        }
        if reached["logit"] is not None and reached["random"] is not None:
            lg, rd = reached["logit"], reached["random"]
            entry["time_ratio"] = lg["seconds_total"]["mean"] / rd["seconds_total"]["mean"]
            entry["memory_ratio"] = lg["hessian_bytes"]["mean"] / rd["hessian_bytes"]["mean"]
            entry["memory_ratio_with_capture"] = (
                lg["hessian_bytes"]["mean"] + lg["capture_bytes"]["mean"]
            ) / (rd["hessian_bytes"]["mean"] + rd["capture_bytes"]["mean"])
        else:
            missing = [s for s in ("logit", "random") if reached[s] is None]
            notes.append(
                f"{d} class {c}: {', '.join(missing)} never reached the target F1 {target:.4f} "
                f"at the budgets tried; no equal-F1 ratio."
            )
        equal_f1.append(entry)

    summary = {
        "std_ratio_logit": mean_or_none(std_ratio["logit"]),
        "std_ratio_feature": mean_or_none(std_ratio["feature"]),
        "f1_gain_at_equal_budget": mean_or_none(gain["logit"]),
        "f1_gain_feature_at_equal_budget": mean_or_none(gain["feature"]),
        "time_ratio_at_equal_f1": geometric_mean_or_none(
            [e["time_ratio"] for e in equal_f1 if "time_ratio" in e]
        ),
        "memory_ratio_at_equal_f1": geometric_mean_or_none(
            [e["memory_ratio"] for e in equal_f1 if "memory_ratio" in e]
        ),
        "std_ratio_f1_logit": mean_or_none(std_ratio_f1["logit"]),
        "std_ratio_f1_feature": mean_or_none(std_ratio_f1["feature"]),
        "equal_f1": equal_f1,
        "goals": {
            "std_ratio_logit": "<= 0.5",
            "std_ratio_feature": "<= 0.5",
            "f1_gain_at_equal_budget": ">= +0.025",
            "time_ratio_at_equal_f1": "<= 0.5",
            "memory_ratio_at_equal_f1": "<= 0.5",
        },
        "definitions": {
            "std_ratio_*": (
                "PRIMARY metric = cosine of the GIF direction (H on the sampled subset) to the "
                "reference direction (H on the whole retained pool). std across seeds of the "
                "sampler divided by random's std at the same budget, averaged over budgets (and "
                "tasks). Lower is better. std_ratio_f1_* is the same with test F1."
            ),
            "f1_gain_at_equal_budget": (
                "mean test F1 of the logit sampler minus random's at the same budget, averaged "
                "over budgets (and tasks); f1_gain_feature_* the same for the feature sampler."
            ),
            "*_ratio_at_equal_f1": (
                f"target = {F1_TARGET_FRACTION} x the best mean test F1 any (sampler, budget) "
                "reached for the task; per sampler the smallest budget whose mean test F1 "
                "reaches the target; logit's mean value at its budget / random's at its budget; "
                "geometric mean over tasks where both reach it (null if none)."
            ),
        },
        "notes": notes,
    }
    return cells, summary


# ---------------------------------------------------------------------------- plot & table


def plot(cells: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({(c["dataset"], c["forget_class"]) for c in cells})
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.6 * len(tasks)), squeeze=False)
    colors = {"random": "tab:gray", "feature": "tab:blue", "logit": "tab:orange"}
    for row, (d, c) in enumerate(tasks):
        for col, (key, label) in enumerate(
            (("cosine_to_reference", "cosine to full-pool direction"), ("test_f1", "test F1"))
        ):
            ax = axes[row][col]
            for s in SAMPLERS:
                sub = sorted(
                    (
                        x
                        for x in cells
                        if (x["dataset"], x["forget_class"], x["sampler"]) == (d, c, s)
                    ),
                    key=lambda x: x["budget"],
                )
                if not sub:
                    continue
                bs = [x["budget"] for x in sub]
                mu = [x[key]["mean"] for x in sub]
                sd = [x[key]["std"] for x in sub]
                ax.plot(bs, mu, "o-", color=colors[s], label=s)
                ax.fill_between(
                    bs,
                    [a - e for a, e in zip(mu, sd, strict=True)],
                    [a + e for a, e in zip(mu, sd, strict=True)],
                    color=colors[s],
                    alpha=0.2,
                )
            ax.set_xscale("log", base=2)
            ax.set_xlabel("Hessian budget |B|")
            ax.set_ylabel(label)
            ax.set_title(f"{d}, forget class {c}: {label} (mean ± std over seeds)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(cells: list[dict[str, Any]]) -> str:
    head = (
        f"{'task':14s} {'sampler':8s} {'B':>4s}  {'cosine to ref':>17s}  {'test F1':>17s}  "
        f"{'|EL-ELr|':>8s} {'|SL-SLr|':>8s} {'s/run':>6s} {'H bytes':>9s}"
    )
    lines = [head, "-" * len(head)]
    for c in cells:
        el = c.get("el_gap", {}).get("mean", math.nan)
        sl = c.get("sl_gap", {}).get("mean", math.nan)
        lines.append(
            f"{c['dataset'] + ':' + str(c['forget_class']):14s} {c['sampler']:8s} {c['budget']:4d}  "
            f"{c['cosine_to_reference']['mean']:.4f} ± {c['cosine_to_reference']['std']:.4f}  "
            f"{c['test_f1']['mean']:.4f} ± {c['test_f1']['std']:.4f}  "
            f"{el:8.4f} {sl:8.4f} {c['seconds_total']['mean']:6.2f} "
            f"{int(c['hessian_bytes']['mean']):9d}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- entry point


def run(
    suite: str = "small",
    budgets: list[int] | None = None,
    seeds: int | None = None,
    datasets: dict[str, list[int]] | None = None,
    out_json: str | None = "samplers.json",
    out_png: str | None = "samplers.png",
    log=print,
) -> dict[str, Any]:
    """Run the sampler benchmark; write JSON (+ PNG) under benchmarks/results; return the payload."""
    if suite not in SUITES:
        raise ValueError(f"Unknown suite {suite!r}: choose one of {sorted(SUITES)}.")
    torch.set_num_threads(1)
    start = time.perf_counter()
    cfg = dict(SUITES[suite])
    budgets = list(budgets or cfg["budgets"])
    seed_list = list(range(seeds if seeds is not None else cfg["seeds"]))
    wanted = dict(datasets or cfg["datasets"])
    skipped: dict[str, str] = {}
    if "fashion_mnist" in wanted:
        ok, msg = _fashion_available()
        if not ok:
            skipped["fashion_mnist"] = msg
            log(msg)
            wanted.pop("fashion_mnist")
    rows: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for dataset, classes in wanted.items():
        model, splits, info = _trained(dataset)
        models[dataset] = info
        image_size = int(splits[0][0][0].shape[-1])
        for cls in classes:
            retrained = _retrained(dataset, cls, splits, image_size, info["epochs"])
            rows += measure_task(
                dataset, cls, model, splits, retrained, budgets, seed_list, log=log
            )
    task_info = {}
    for r in rows:
        task_info[f"{r['dataset']}:{r['forget_class']}"] = r.pop("_task_info")
    cells, summary = aggregate(rows)
    log(table(cells))
    log(
        "summary: "
        + ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in summary.items()
            if k.endswith(("logit", "feature", "budget", "equal_f1"))
        )
    )
    defaults = _unlearning_config()
    payload = {
        "benchmark": "samplers",
        "suite": suite,
        "command": "python -m benchmarks.samplers " + " ".join(sys.argv[1:])
        if Path(sys.argv[0]).stem == "samplers"
        else f"benchmarks.samplers.run(suite={suite!r})",
        "wall_seconds": time.perf_counter() - start,
        "machine": machine(),
        "config": {
            "fixed_unlearning_config": FIXED,
            "datasets": wanted,
            "skipped": skipped,
            "budgets": budgets,
            "seeds": seed_list,
            "samplers": list(SAMPLERS),
            "models": models,
            "estimator": "gif",
            "solver": "krylov",
            "solver_options": {"tol": defaults["tol"], "max_iter": defaults["max_iter"]},
            "selection": {"method": defaults["selection"], "ratio": defaults["ratio"]},
            "forget_weight": "m / (n - m)",
            "reference": "same solve with H on every retained training sample, weight 1",
            "step": "chosen by UnlearnCallback on validation data; metrics on test data",
            "retrain_reference": "train_classifier on retained train/val data, num_classes=10, "
            "same epochs and seed as the model (cached)",
            "f1_target_fraction": F1_TARGET_FRACTION,
        },
        "memory_definition": (
            "hessian_bytes = budget x (input bytes + sum of every leaf module's output bytes) per "
            "sample, measured with forward hooks: the activations one HVP over the Hessian subset "
            "holds (autograd keeps a fixed multiple of them). It depends on the budget only, so at "
            "equal budget all samplers use the same; the equal-F1 memory ratio is a budget ratio. "
            "capture_bytes = what the sampler needs from the pool capture (ids+labels for random, "
            "+logits for logit, +features for feature); memory_ratio_with_capture adds it. "
            "process_max_rss_bytes (raw rows only) is the callback's CPU figure: a process-wide "
            "high-water mark, not the unlearning step's memory."
        ),
        "time_definition": "seconds_total = UnlearnCallback report.seconds['total'] (capture, "
        "sample, gather, select, solve, step search); per-stage seconds in each row.",
        "summary": summary,
        "tasks": task_info,
        "cells": cells,
        "rows": rows,
    }
    if out_json:
        write_json(out_json, payload)
    if out_png:
        plot(cells, RESULTS / out_png)
    log(f"wall time {payload['wall_seconds']:.1f} s")
    return payload


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=sorted(SUITES), default="small")
    ap.add_argument("--budgets", type=int, nargs="*", default=None)
    ap.add_argument("--seeds", type=int, default=None)
    args = ap.parse_args(argv)
    run(suite=args.suite, budgets=args.budgets, seeds=args.seeds)


# ----------------------------------------------------------------------------- docs/benchmarks.md


GOALS = [
    Goal(
        "samplers.json",
        ("summary", "time_ratio_at_equal_f1"),
        "<=",
        0.5,
        "logit / random time at equal F1",
    ),
    Goal(
        "samplers.json",
        ("summary", "memory_ratio_at_equal_f1"),
        "<=",
        0.5,
        "logit / random Hessian memory at equal F1",
    ),
    Goal(
        "samplers.json",
        ("summary", "f1_gain_at_equal_budget"),
        ">=",
        0.025,
        "logit − random F1 at equal budget",
    ),
    Goal(
        "samplers.json",
        ("summary", "std_ratio_logit"),
        "<=",
        0.5,
        "logit / random std across seeds",
    ),
    Goal(
        "samplers.json",
        ("summary", "std_ratio_feature"),
        "<=",
        0.5,
        "feature / random std across seeds",
    ),
]


def samplers_section(d: dict | None) -> list[str]:
    if not d:
        return ["## Samplers", "", "Not run yet: `python -m benchmarks run --only samplers`.", ""]
    cfg = d.get("config", {})
    out = [
        "## Samplers (random vs feature vs logit)",
        "",
        f"Command: `{d['command']}` ({d['wall_seconds']:.0f} s). Datasets/classes: {cfg.get('datasets')}; seeds: "
        f"{len(cfg.get('seeds', []))}; fixed unlearning configuration: {cfg.get('fixed_unlearning_config', 'callback defaults at the time of the run')}. "
        "Cosine: the GIF direction with H on the sampled subset against H on the whole retained pool. "
        "F1/EL/SL on the test split after the step picked on validation.",
        "",
        "| dataset | class | sampler | budget | cosine to full-pool direction | test F1 | |EL−EL_retrain| | |SL−SL_retrain| | seconds | Hessian bytes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in d["cells"]:
        out.append(
            f"| {c['dataset']} | {c['forget_class']} | {c['sampler']} | {c['budget']} | {md.ms(c.get('cosine_to_reference'))} | "
            f"{md.ms(c.get('test_f1'))} | {md.ms(c.get('el_gap'))} | {md.ms(c.get('sl_gap'), 2)} | {md.ms(c.get('seconds_total'), 2)} | "
            f"{int(c['hessian_bytes']['mean']) if c.get('hessian_bytes') else '–'} |"
        )
    out += [
        "",
        f"Memory: {d.get('memory_definition', '')}",
        "",
        "Summary: `"
        + json.dumps({k: v for k, v in d["summary"].items() if not isinstance(v, (dict, list))})
        + "`",
        "",
    ]
    out += ["![samplers](../benchmarks/results/samplers.png)", ""]
    return out


def render() -> list[str]:
    """This study's part of docs/benchmarks.md."""
    return samplers_section(md.load("samplers.json"))


if __name__ == "__main__":
    main()
