"""Levers of the callback default on full Fashion-MNIST, one (class, seed) at a time.

Uses the base and retrained models that ``benchmarks.fashion`` cached (same recipe, same
splits), runs ``UnlearnCallback`` variants side by side and writes
``benchmarks/results/fashion_levers.json`` (rows appended, resumable)::

    python -m benchmarks.fashion_levers --classes 6 2 --seeds 0 [--resume]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader

import lightning_influence as li
from benchmarks import markdown as md
from benchmarks.common import RESULTS, machine, write_json
from benchmarks.fashion import cached_fit, splits, without

RESULT = "fashion_levers.json"
HG = {"method": "highest_gradients"}
#: every layer's units (class removal's default before the output-layer change)
ALL = {"layers": "all"}
LEVERS: dict[str, dict[str, Any]] = {
    # the default before the selection study (rows measured with {} then)
    "highest_outputs 20% (old default)": {
        "selection": {"method": "highest_outputs", "ratio": 0.2, **ALL}
    },
    "highest_outputs 5%": {"selection": {"method": "highest_outputs", "ratio": 0.05, **ALL}},
    "highest_gradients 2%": {"selection": {**HG, "ratio": 0.02, **ALL}},
    "highest_gradients 5%": {"selection": {**HG, "ratio": 0.05, **ALL}},
    "highest_gradients 10%": {"selection": {**HG, "ratio": 0.1, **ALL}},
    "highest_gradients 20%": {"selection": {**HG, "ratio": 0.2, **ALL}},
    "all parameters": {"selection": {"method": "all"}},
    "hg 5% + 3 rounds": {"selection": {**HG, "ratio": 0.05, **ALL}, "solve": {"rounds": 3}},
    "hg 5% damping 1e-2": {"selection": {**HG, "ratio": 0.05, **ALL}, "solve": {"damping": 1e-2}},
    "hg 5% damping 1e-4": {"selection": {**HG, "ratio": 0.05, **ALL}, "solve": {"damping": 1e-4}},
    "hg 5% tol 1e-3": {"selection": {**HG, "ratio": 0.05, **ALL}, "solve": {"tol": 1e-3}},
    "hg 5% budget 512": {"selection": {**HG, "ratio": 0.05, **ALL}, "hessian": {"budget": 512}},
    "hg 5% random subset": {
        "selection": {**HG, "ratio": 0.05, **ALL},
        "hessian": {"sampler": "random"},
    },
    "hg 5% gauss_newton": {
        "selection": {**HG, "ratio": 0.05, **ALL},
        "solve": {"curvature": "gauss_newton"},
    },
    "hg 5% full val search": {
        "selection": {**HG, "ratio": 0.05, **ALL},
        "step": {"max_val_samples": None},
    },
    # class removal's default now: the forgotten class's output unit, the output layer's
    # curvature, the step search on all of validation (trials are one layer call)
    "output layer (default)": {},
    "output layer, budget 512": {"hessian": {"budget": 512}},
    "output layer, random subset": {"hessian": {"sampler": "random"}},
    "output layer, fif (block solve)": {"solve": {"estimator": "fif"}},
    "output layer, 2 layers (fc1 + fc2)": {"selection": {"layers": ["net.fc1", "net.fc2"]}},
    "output layer, 30% of its units": {"selection": {"ratio": 0.3}},
    "output layer, all its units": {"selection": {"ratio": 1.0}},
    "output layer, all its units, budget 1024": {
        "selection": {"ratio": 1.0},
        "hessian": {"budget": 1024},
    },
}


def run_lever(name: str, base, data, c: int, seed: int) -> dict[str, Any]:
    train, val, test = data
    m = copy.deepcopy(base).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        cb = li.UnlearnCallback(forget_classes=[c], seed=seed, progress_bar=False, **LEVERS[name])
        rep = cb.unlearn_model(
            m,
            DataLoader(li.IndexedDataset(train), batch_size=256),
            DataLoader(val, batch_size=1024),
        )
        seconds = time.perf_counter() - start
    out = li.evaluate_forgetting(m, DataLoader(test, batch_size=1024), [c])
    return {
        "lever": name,
        "forget_class": c,
        "seed": seed,
        "seconds": seconds,
        "stage_seconds": rep.seconds,
        "applied": rep.applied,
        "solver": {k: rep.solver.get(k) for k in ("iterations", "hvps", "converged", "residual")},
        "val_after": rep.after,
        **{f"test_{k}": v for k, v in out.items()},
    }


def _retrained(data, c: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cached retrained model's test values and training info ({} if not trained yet:
    ``benchmarks.fashion --train-only`` trains it; this study never does)."""
    from benchmarks.fashion import CACHE_DIR

    if not (CACHE_DIR / f"retrain_c{c}_seed{seed}.pt").exists():
        return {}, {}
    ref, info = cached_fit(
        f"retrain_c{c}_seed{seed}", without(data[0], c), without(data[1], c), seed
    )
    return li.evaluate_forgetting(ref, DataLoader(data[2], batch_size=1024), [c]), info


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fashion_levers", description=__doc__)
    p.add_argument("--classes", type=int, nargs="+", default=[6])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--levers", nargs="+", default=list(LEVERS))
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads (rows with more than 1 are named so)"
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    suffix = "" if a.threads == 1 else f" [{a.threads} threads]"
    path = RESULTS / RESULT
    old = json.loads(path.read_text()) if a.resume and path.exists() else {}
    rows, notes = old.get("rows", []), old.get("notes", [])
    done = {(r["lever"], r["forget_class"], r["seed"]) for r in rows}
    commands = old.get("commands", [old["command"]] if "command" in old else [])
    commands.append("python -m benchmarks.fashion_levers " + " ".join(sys.argv[1:]))
    for seed in a.seeds:
        data = splits(seed)
        base, _ = cached_fit(f"base_seed{seed}", data[0], data[1], seed)
        for c in a.classes:
            ret, info = _retrained(data, c, seed)
            for name in a.levers:
                if (name + suffix, c, seed) in done:
                    continue
                row = run_lever(name, base, data, c, seed)
                row["lever"], row["threads"] = name + suffix, a.threads
                row["retrain_f1"], row["retrain_seconds"] = ret.get("f1"), info.get("seconds")
                rows.append(row)
                print(
                    f"class {c} seed {seed} {name:26s} F1 {row['test_f1']:.4f} (retrain "
                    f"{ret.get('f1', float('nan')):.4f}) forget {row['test_forget_acc']:.3f} retain "
                    f"{row['test_retain_acc']:.3f} {row['seconds']:.1f}s "
                    + " ".join(f"{k} {v:.1f}" for k, v in row["stage_seconds"].items()),
                    flush=True,
                )
                write_json(
                    RESULT,
                    {
                        "benchmark": "fashion_levers",
                        "command": commands[-1],
                        "commands": commands,
                        "machine": machine(),
                        "levers": LEVERS,
                        "notes": notes,
                        "rows": rows,
                    },
                )


# ----------------------------------------------------------------------------- docs/benchmarks.md


def levers_section(d: dict | None) -> list[str]:
    """The lever study on full Fashion-MNIST (benchmarks/fashion_levers.py), one row each."""
    if not d:
        return []
    out = [
        "## Levers of the default on full Fashion-MNIST",
        "",
        "Commands: " + md.commands(d) + ": `UnlearnCallback` variants on the same trained model, "
        "test split, seconds measured while other jobs shared the 2 cores (compare them with "
        "each other, not with the table above). The retrained model is the reference.",
        "",
        "| class | seed | lever | F1 | retrain F1 | forget acc | retained acc | seconds | solve | search |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        st = r["stage_seconds"]
        ret = r.get("retrain_f1")
        out.append(
            f"| {r['forget_class']} | {r['seed']} | {r['lever']} | {r['test_f1']:.4f} | "
            f"{'–' if ret is None else f'{ret:.4f}'} | {r['test_forget_acc']:.3f} | "
            f"{r['test_retain_acc']:.3f} | {r['seconds']:.1f} | {st.get('solve', 0):.1f} | "
            f"{st.get('search', 0):.1f} |"
        )
    return out + [""]


def render() -> list[str]:
    """This study's part of docs/benchmarks.md."""
    return levers_section(md.load("fashion_levers.json"))


if __name__ == "__main__":
    main()
