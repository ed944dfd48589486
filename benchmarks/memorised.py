"""Deleting memorised samples on digits: a set-up where the model does fit its flipped labels.

On Fashion-MNIST the benchmarks' CNN never fits the labels flipped before training (it
predicts the true class of 98 % of them, even after 25 epochs), so deleting them cannot test
forgetting: doing nothing is already as far from them as retraining. Here the digits CNN is
trained 40 epochs on data with 3 % of the labels moved to another class at random, and fits
83-100 % of them. A model retrained without them predicts their true class.

For each seed: the base model (40 epochs, the flips at ``seed``), ``retrain`` (the same
recipe without the flipped samples) and ``retrain'`` (another training seed: the noise
floor), then every method of :mod:`benchmarks.faithfulness` from the base model, measured
with the field's measures (UA, MIA-efficacy, RA, TA on the test split; Avg. Gap to
``retrain``). Every method chooses its steps on validation data.

``python -m benchmarks.memorised [--seeds 0 1 2 3 4] [--methods ...] [--resume]`` writes
``benchmarks/results/memorised_digits.json`` and ``memorised_digits.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
from torch.utils.data import TensorDataset

from benchmarks import faithfulness as F
from benchmarks import markdown as md
from benchmarks.common import RESULTS, machine, mean_std, write_json
from benchmarks.markdown import Goal
from lightning_influence.demos.datasets import digits_splits
from lightning_influence.demos.models import train_classifier

NAME = "memorised_digits.json"
FRACTION, EPOCHS = 0.03, 40
#: doing nothing, the default, its memorised-target lever and the faithfulness baselines
METHODS = ("nothing", "default", "gif memorised expected", *F.BASELINES)


def make_task(seed: int) -> F.Task:
    """Digits (split seed 0) with 3 % of the training labels moved to another class."""
    train, val, test = digits_splits(0)
    x, y = train.tensors
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randperm(len(y), generator=gen)[: round(FRACTION * len(y))]
    noisy = y.clone()
    noisy[ids] = (noisy[ids] + torch.randint(1, 10, (len(ids),), generator=gen)) % 10
    return F.Task(
        "memorized",
        seed,
        TensorDataset(x, noisy),
        val,
        test,
        ids,
        {"forget_ids": ids.tolist()},
        true_labels=y,
    )


def _fit(train: TensorDataset, val: TensorDataset, seed: int):
    start, cpu = time.perf_counter(), time.process_time()
    model = train_classifier(train, val, epochs=EPOCHS, seed=seed, num_classes=10)
    return model, {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}


def run_seed(seed: int, methods: tuple[str, ...]) -> list[dict[str, Any]]:
    task = make_task(seed)
    base, _ = _fit(task.train, task.val, 0)
    retrain, r_info = _fit(task.retain, task.val, 0)
    second, s_info = _fit(task.retain, task.val, 1)
    fitted_before = F._acc(base, task.forget)
    rows = [
        {"seed": seed, "method": "retrain", **F.measures(retrain, task), **r_info},
        {"seed": seed, "method": "retrain'", **F.measures(second, task), **s_info},
    ]
    objective = F.validation_objective(task, F._acc(base, task.val))
    for name in methods:
        model, extra = F.run_method(name, base, task, objective)
        rows.append({"seed": seed, "method": name, **F.measures(model, task), **extra})
    for r in rows:
        r["task"] = "memorized"
        r["fitted_before"] = fitted_before
        r["fitted_after"] = 1.0 - r["ua"]
        print(f"seed {seed} {r['method']:20s} UA {r['ua']:.3f} MIA {r['mia_efficacy']:.3f} "
              f"RA {r['ra']:.3f} TA {r['ta']:.3f}", flush=True)  # fmt: skip
    F._with_gaps(rows)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    gap = {m: mean_std([r["avg_gap_pp"] for r in rows if r["method"] == m]) for m in methods}
    baselines = [m for m in F.BASELINES if m in gap]
    best = min(baselines, key=lambda m: gap[m]["mean"]) if baselines else None
    seeds = sorted({r["seed"] for r in rows})
    return {
        "seeds": len(seeds),
        "avg_gap_pp": gap,
        "default_avg_gap_pp": gap.get("default", {}).get("mean"),
        "nothing_avg_gap_pp": gap.get("nothing", {}).get("mean"),
        "retrain_vs_retrain_avg_gap_pp": gap.get("retrain'", {}).get("mean"),
        "best_baseline": best,
        "best_baseline_avg_gap_pp": gap[best]["mean"] if best else None,
        "default_minus_best_baseline_pp": (
            gap["default"]["mean"] - gap[best]["mean"] if best and "default" in gap else None
        ),
        "fitted_before": mean_std([r["fitted_before"] for r in rows if r["method"] == "nothing"]),
        "fitted_after": {
            m: mean_std([r["fitted_after"] for r in rows if r["method"] == m]) for m in methods
        },
        "cpu_seconds": {
            m: mean_std([r["cpu_seconds"] for r in rows if r["method"] == m]) for m in methods
        },
    }


def plot(summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gaps = summary["avg_gap_pp"]
    names = [m for m in gaps if m != "retrain"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(names, [gaps[m]["mean"] for m in names], yerr=[gaps[m]["std"] for m in names])
    ax.set_ylabel("Avg. Gap to retrain (pp)")
    ax.set_title(f"Deleting memorised digits (3 % flipped, {summary['seeds']} seeds)")
    ax.tick_params(axis="x", rotation=35)
    fig.tight_layout()
    fig.savefig(RESULTS / "memorised_digits.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=F.METHODS)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--note", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    path = RESULTS / NAME
    old = json.loads(path.read_text()) if args.resume and path.exists() else None
    rows = list(old["rows"]) if old else []
    done = {r["seed"] for r in rows}
    for seed in args.seeds:
        if seed in done:
            continue
        rows += run_seed(seed, tuple(args.methods))
        result = {
            "benchmark": "memorised_digits",
            "command": "python -m benchmarks.memorised " + " ".join(argv or sys.argv[1:]),
            "setup": {"fraction_flipped": FRACTION, "epochs": EPOCHS, "data": "digits"},
            "machine": machine(),
            "notes": ([args.note] if args.note else []) + (old or {}).get("notes", []),
            "summary": summarise(rows),
            "rows": rows,
        }
        write_json(NAME, result)
    plot(summarise(rows))


# ----------------------------------------------------------------------------- docs/benchmarks.md


GOALS = [
    Goal(
        "memorised_digits.json",
        ("summary", "default_avg_gap_pp"),
        "<=",
        5.0,
        "digits, delete memorised samples (3 % flipped, 40 epochs): Avg. Gap to retrain (pp)",
    ),
    Goal(
        "memorised_digits.json",
        ("summary", "nothing_avg_gap_pp"),
        ">",
        5.0,
        "digits, the same: doing nothing's Avg. Gap (above 5.0: the set-up memorises, so "
        "the goal above is a test)",
    ),
    Goal(
        "memorised_digits.json",
        ("summary", "default_minus_best_baseline_pp"),
        "<=",
        0.0,
        "digits, the same: the default's Avg. Gap − the best baseline's",
    ),
]


def memorised_section(d: dict | None) -> list[str]:
    """Deleting memorised samples on digits (memorised.py)."""
    if not d:
        return []
    s = d["summary"]
    out = [
        "## Deleting memorised samples (digits, 3 % of the labels flipped, 40 epochs)",
        "",
        f"Command: `{d['command']}`. Seeds: {s['seeds']}. The base model fits "
        f"{md.ms(s['fitted_before'], 2)} of its flipped samples; a model retrained without them "
        "fits none (it predicts their true class). Mean ± std over seeds on the test split; "
        "`fitted` = 1 − UA, the share of the forgotten samples still predicted as their "
        "flipped label; every method picks its steps on validation data.",
        "",
        *md.notes(d),
        "| method | Avg. Gap (pp) | UA | MIA-eff. | RA | TA | CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = d["rows"]
    for m in dict.fromkeys(r["method"] for r in rows):
        cells = [mean_std([r[k] for r in rows if r["method"] == m]) for k in
                 ("avg_gap_pp", "ua", "mia_efficacy", "ra", "ta", "cpu_seconds")]  # fmt: skip
        digits = (2, 3, 3, 3, 3, 1)
        out.append(
            f"| {m} | " + " | ".join(md.ms(c, n) for c, n in zip(cells, digits, strict=True)) + " |"
        )
    return [*out, "", "![memorised](../benchmarks/results/memorised_digits.png)", ""]


def render() -> list[str]:
    """This study's part of docs/benchmarks.md."""
    return memorised_section(md.load("memorised_digits.json"))


if __name__ == "__main__":
    main()
