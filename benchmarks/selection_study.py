"""Parameter-selection study (the GIF paper's selector × ratio table) on digits.

For each selector (``highest_outputs``, ``highest_gradients``, ``lowest_outputs``,
``lowest_gradients``, ``random``) and selection ratio (0.02, 0.05, 0.1, 0.2; and 1.0, where
the selector does not matter and which runs once per seed under the name ``all``), unlearn
one class of a SmallCNN trained on scikit-learn digits with
``UnlearnCallback(forget_classes=[c], selection=sel, ratio=r, seed=s).unlearn_model`` on a
deep copy of the model. The ratio is fixed per run; the damping is the callback's default
grid, chosen on *validation* data by the callback (as is the step). The result is then
scored on *test* data with ``li.evaluate_forgetting`` (F1, forget/retain accuracy, EL, SL).
The seed is the callback's ``seed``: the Hessian subset draw and the ``random`` selector's
draw. Cells report mean ± std over seeds.

Run: ``python -m benchmarks.selection_study --suite small`` (or ``run(suite="small")``).
Writes ``benchmarks/results/selection.json`` and ``selection.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
import traceback
import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader

import lightning_influence as li
from benchmarks import markdown as md
from benchmarks.common import (
    RESULTS,
    machine,
    mean_std,
    trained_digits_cnn,
    unlearn_callback,
    write_json,
)

SELECTORS = ("highest_outputs", "highest_gradients", "lowest_outputs", "lowest_gradients", "random")
RATIOS = (0.02, 0.05, 0.1, 0.2)
ALL = "all"

SUITES: dict[str, dict[str, Any]] = {
    "micro": {"classes": [5], "seeds": [0], "selectors": ["highest_outputs"], "ratios": [0.05]},
    "small": {
        "classes": [5],
        "seeds": [0, 1, 2],
        "selectors": list(SELECTORS),
        "ratios": list(RATIOS),
    },
    "full": {
        "classes": [0, 3, 5, 8],
        "seeds": [0, 1, 2, 3, 4],
        "selectors": list(SELECTORS),
        "ratios": list(RATIOS),
    },
}


def _unlearning_config() -> dict[str, Any]:
    """The rest of the unlearning configuration, fixed around the selector × ratio grid.

    The callback's defaults, written out so that selection.json records what actually ran.
    """
    return {
        "damping": 1e-3,
        "hessian_budget": 128,
        "solver": "krylov",
        "sampler": "logit",
        "estimator": "gif",
        "tol": 1e-2,
        "max_iter": 100,
    }


def _one_run(model, loaders, cls: int, selector: str, ratio: float, seed: int) -> dict[str, Any]:
    train_loader, val_loader, test_loader = loaders
    row: dict[str, Any] = {"selector": selector, "ratio": ratio, "forget_class": cls, "seed": seed}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = copy.deepcopy(model)
            sel = "all" if selector == ALL else selector
            cb = unlearn_callback(
                forget_classes=[cls],
                selection=sel,
                ratio=ratio,
                seed=seed,
                progress_bar=False,
                **_unlearning_config(),
            )
            rep = cb.unlearn_model(m, train_loader, val_loader)
            metrics = li.evaluate_forgetting(m, test_loader, [cls])
        row.update({k: float(v) for k, v in metrics.items()})
        row.update(
            {
                "seconds": float(rep.seconds.get("total", math.nan)),
                "selected_params": int(rep.selected_params),
                "total_params": int(rep.total_params),
                "selected_fraction": (
                    rep.selected_params / rep.total_params if rep.total_params else math.nan
                ),
                "damping": float(rep.damping),
                "applied": bool(rep.applied),
                "reason": str(getattr(rep, "reason", "")),
                "error": None,
            }
        )
    except Exception as exc:  # noqa: BLE001 - one failing run must not sink the study
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=5)
    return row


def _ms(rows: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    vals = [r[key] for r in rows if r.get("error") is None and r.get(key) is not None]
    vals = [v for v in vals if not (isinstance(v, float) and math.isnan(v))]
    return mean_std(vals) if vals else None


def _cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["selector"], r["ratio"], r["forget_class"]), []).append(r)
    cells = []
    for (sel, ratio, cls), rs in groups.items():
        ok = [r for r in rs if r.get("error") is None]
        frac = [r["selected_fraction"] for r in ok if not math.isnan(r["selected_fraction"])]
        cells.append(
            {
                "selector": sel,
                "ratio": ratio,
                "forget_class": cls,
                "test_f1": _ms(rs, "f1"),
                "test_forget_acc": _ms(rs, "forget_acc"),
                "test_retain_acc": _ms(rs, "retain_acc"),
                "test_exclusive_loss": _ms(rs, "exclusive_loss"),
                "test_self_loss": _ms(rs, "self_loss"),
                "seconds": _ms(rs, "seconds"),
                "selected_fraction": statistics.fmean(frac) if frac else None,
                "applied_fraction": (
                    statistics.fmean(float(r["applied"]) for r in ok) if ok else None
                ),
                "runs": len(rs),
                "errors": len(rs) - len(ok),
            }
        )
    return cells


def _f1_mean(rows: list[dict[str, Any]], selector: str, ratio: float) -> float | None:
    vals = [
        r["f1"]
        for r in rows
        if r["selector"] == selector and r["ratio"] == ratio and r.get("error") is None
    ]
    return statistics.fmean(vals) if vals else None


def _summary(rows: list[dict[str, Any]], ratios: list[float]) -> dict[str, Any]:
    keys = sorted({(r["selector"], r["ratio"]) for r in rows})
    best = None
    for sel, ratio in keys:
        f1 = _f1_mean(rows, sel, ratio)
        if f1 is not None and (best is None or f1 > best["f1_mean"]):
            best = {"selector": sel, "ratio": ratio, "f1_mean": f1}
    return {
        "best_cell": best,
        "f1_by_ratio_highest_outputs": {
            str(r): _f1_mean(rows, "highest_outputs", r) for r in [*ratios, 1.0]
        }
        | {"1.0": _f1_mean(rows, ALL, 1.0)},
        "f1_all_parameters": _f1_mean(rows, ALL, 1.0),
        "note": "means over every (forget_class, seed) run; ratio 1.0 is the 'all' run "
        "(the selector does not matter when every parameter is selected)",
    }


def _table(rows: list[dict[str, Any]], selectors: list[str], ratios: list[float]) -> str:
    def cell(sel: str, ratio: float) -> str:
        vals = [
            r["f1"]
            for r in rows
            if r["selector"] == sel and r["ratio"] == ratio and r.get("error") is None
        ]
        if not vals:
            errs = sum(1 for r in rows if r["selector"] == sel and r["ratio"] == ratio)
            return f"{'err' if errs else '-':>15}"
        ms = mean_std(vals)
        return f"{ms['mean']:.3f} ± {ms['std']:.3f}".rjust(15)

    head = f"{'selector':<18}" + "".join(f"{r:>15g}" for r in ratios)
    lines = ["test F1 (mean ± std over runs)", head]
    for sel in selectors:
        lines.append(f"{sel:<18}" + "".join(cell(sel, r) for r in ratios))
    lines.append(f"{ALL + ' (ratio 1.0)':<18}" + cell(ALL, 1.0))
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], selectors: list[str], ratios: list[float], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {
        "highest_outputs": ("o", "-"),
        "highest_gradients": ("s", "-"),
        "lowest_outputs": ("^", "--"),
        "lowest_gradients": ("v", ":"),
        "random": ("D", "-."),
    }
    for sel in selectors:
        xs, ys, es = [], [], []
        for r in ratios:
            vals = [
                x["f1"]
                for x in rows
                if x["selector"] == sel and x["ratio"] == r and x.get("error") is None
            ]
            if vals:
                ms = mean_std(vals)
                xs.append(r)
                ys.append(ms["mean"])
                es.append(ms["std"])
        if xs:
            marker, ls = styles.get(sel, ("o", "-"))
            ax.errorbar(xs, ys, yerr=es, marker=marker, ls=ls, capsize=3, label=sel, alpha=0.85)
    vals = [x["f1"] for x in rows if x["selector"] == ALL and x.get("error") is None]
    if vals:
        ms = mean_std(vals)
        ax.axhline(ms["mean"], color="k", ls="--", label=f"all parameters ({ms['mean']:.3f})")
        if ms["std"] > 0:
            ax.axhspan(ms["mean"] - ms["std"], ms["mean"] + ms["std"], color="k", alpha=0.08)
    ax.set_xscale("log")
    ax.set_xticks(ratios)
    ax.set_xticklabels([f"{r:g}" for r in ratios])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("selection ratio (fraction of parameters)")
    ax.set_ylabel("test F1 (mean ± std)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "selection.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(suite: str = "small") -> dict[str, Any]:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose from {sorted(SUITES)}")
    cfg = SUITES[suite]
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, (train, val, test) = trained_digits_cnn(0)
    loaders = (
        DataLoader(li.IndexedDataset(train), batch_size=64),
        DataLoader(val, batch_size=256),
        DataLoader(test, batch_size=512),
    )
    plan = [
        (c, sel, r, s)
        for c in cfg["classes"]
        for s in cfg["seeds"]
        for sel in cfg["selectors"]
        for r in cfg["ratios"]
    ] + [(c, ALL, 1.0, s) for c in cfg["classes"] for s in cfg["seeds"]]
    rows = []
    for i, (c, sel, r, s) in enumerate(plan, 1):
        row = _one_run(model, loaders, c, sel, r, s)
        rows.append(row)
        status = (
            f"f1={row['f1']:.3f} forget={row['forget_acc']:.3f} retain={row['retain_acc']:.3f} "
            f"λ={row['damping']:g} applied={row['applied']} {row['seconds']:.1f}s"
            if row.get("error") is None
            else f"ERROR {row['error']}"
        )
        print(f"[{i}/{len(plan)}] class {c} {sel} r={r:g} seed {s}: {status}", flush=True)
    wall = time.perf_counter() - t0
    payload = {
        "benchmark": "selection",
        "suite": suite,
        "command": "python -m benchmarks.selection_study --suite " + suite,
        "wall_seconds": wall,
        "machine": machine(),
        "config": {
            "dataset": "sklearn digits (benchmarks.common.trained_digits_cnn(0): SmallCNN, 15 epochs)",
            "classes": cfg["classes"],
            "seeds": cfg["seeds"],
            "selectors": cfg["selectors"],
            "ratios": cfg["ratios"],
            "all_parameters": "ratio 1.0 run once per (class, seed) under the selector name 'all'",
            "loaders": {"train": "IndexedDataset, batch 64, not shuffled", "val": 256, "test": 512},
            "callback_defaults": _unlearning_config(),
            "chosen_on": "validation (damping and step by the callback); metrics on test",
            "seed_meaning": "UnlearnCallback seed: Hessian subset draw and random selection",
        },
        "cells": _cells(rows),
        "rows": rows,
        "summary": _summary(rows, cfg["ratios"]),
    }
    write_json("selection.json", payload)
    _plot(
        rows,
        cfg["selectors"],
        cfg["ratios"],
        f"GIF selection study, digits class {cfg['classes']}, seeds {cfg['seeds']}",
    )
    print(_table(rows, cfg["selectors"], cfg["ratios"]))
    print(f"wall {wall:.1f} s; wrote {RESULTS / 'selection.json'} and selection.png")
    return payload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="small", choices=sorted(SUITES))
    args = parser.parse_args(argv)
    run(args.suite)


# ----------------------------------------------------------------------------- docs/benchmarks.md


def selection_section(d: dict | None) -> list[str]:
    if not d:
        return [
            "## Parameter selection",
            "",
            "Not run yet: `python -m benchmarks run --only selection`.",
            "",
        ]
    out = [
        "## Parameter selection (ratio × selector)",
        "",
        f"Command: `{d.get('command')}` ({d.get('wall_seconds', 0):.0f} s). Test F1 after the validation-picked step; "
        f"the rest of the configuration: `{json.dumps(d.get('config', {}).get('callback_defaults', {}))}`.",
        "",
        "| class | selector | ratio | test F1 | forget acc | retained acc | selected share | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in d.get("cells", []):
        share = c.get("selected_fraction")
        share_s = f"{share:.3f}" if isinstance(share, (int, float)) else md.ms(share)
        out.append(
            f"| {c.get('forget_class')} | {c.get('selector')} | {c.get('ratio')} | {md.ms(c.get('test_f1'))} | {md.ms(c.get('test_forget_acc'))} | "
            f"{md.ms(c.get('test_retain_acc'))} | {share_s} | {md.ms(c.get('seconds'), 2)} |"
        )
    out += [
        "",
        "Summary: `" + json.dumps(d.get("summary", {})) + "`",
        "",
        "![selection](../benchmarks/results/selection.png)",
        "",
    ]
    return out


def render() -> list[str]:
    """This study's part of docs/benchmarks.md."""
    return selection_section(md.load("selection.json"))


if __name__ == "__main__":
    main(sys.argv[1:])
