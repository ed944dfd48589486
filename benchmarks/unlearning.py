"""Class removal: GIF and its variants against the unlearning baselines users would run.

Every method picks its own step / epochs / learning-rate on VALIDATION F1; every number
reported is on the TEST split. Influence methods run through ``UnlearnCallback`` (the
product path). Baselines: retraining from scratch without the class, fine-tuning on the
retained data, gradient ascent on the forget set, random relabelling + fine-tuning.
Run: ``python -m benchmarks.unlearning --suite small``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import lightning_influence as li
from benchmarks import markdown as md
from benchmarks.common import (
    CACHE,
    RESULTS,
    machine,
    mean_std,
    trained_digits_cnn,
    unlearn_callback,
    write_json,
)
from benchmarks.markdown import Goal
from lightning_influence.demos.models import train_classifier

GRID = "gif (grid: ratio [.05,.2] × λ [1e-4,1e-3,1e-2], tol 1e-4, budget 256)"
INFLUENCE_METHODS: dict[str, dict[str, Any]] = {
    "gif (default)": {},
    "gif highest_gradients": {"selection": "highest_gradients"},
    "fif": {"estimator": "fif"},
    "pif": {"estimator": "pif"},
    "if (all parameters)": {"estimator": "if", "selection": "all"},
    # The earlier default: a validation grid over ratio and damping, a tight solve on 256
    # samples. Kept side by side to show what the search and the tolerance buy and cost.
    GRID: {
        "ratio": [0.05, 0.2],
        "damping": [1e-4, 1e-3, 1e-2],
        "tol": 1e-4,
        "hessian_budget": 256,
    },
}
BASELINES = ["fine-tune", "gradient ascent", "random relabel"]
SUITES = {
    "small": {"datasets": ["digits"], "classes": [0, 3, 5], "seeds": [0, 1, 2, 3, 4]},
    "full": {
        "datasets": ["digits", "fashion-mnist"],
        "classes": [0, 3, 5, 8],
        "seeds": [0, 1, 2, 3, 4],
        "method_seeds": {GRID: [0, 1]},  # the grid costs ~12 min a run on Fashion-MNIST
    },
    # Fashion-MNIST (10,000 training images, validation cut to 2,000) where a 28x28 CNN costs
    # ~50 s to retrain on this CPU: two classes, the default GIF against the baselines; the
    # grid (~12 min a run) on two seeds only.
    "fashion10k": {
        "datasets": ["fashion-mnist"],
        "classes": [0, 7],
        "seeds": [0, 1, 2, 3, 4],
        "methods": ["retrain", "gif (default)", GRID, *BASELINES],
        "method_seeds": {GRID: [0, 1]},
        "val_samples": 2000,
    },
}


def result_name(suite: str) -> str:
    """unlearning.json for small/full (the summary keys external checks read), else by suite."""
    return "unlearning.json" if suite in ("small", "full") else f"unlearning_{suite}.json"


# ----------------------------------------------------------------------------- memory


class PeakRSS:
    """Peak resident memory of this process during a block, above its level at the start.

    Linux only: writing 5 to /proc/self/clear_refs resets the VmHWM high-water mark, so each
    method's peak is its own (the whole process's memory, model and data included, minus
    what was resident before the block). Elsewhere ``extra_bytes`` stays None.
    """

    def __enter__(self) -> PeakRSS:
        self.extra_bytes: int | None = None
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.start = self._read("VmRSS")
        except OSError:
            self.start = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.start is not None:
            self.extra_bytes = max(0, self._read("VmHWM") - self.start)

    @staticmethod
    def _read(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(key)


# ----------------------------------------------------------------------------- data


def load(dataset: str, seed: int = 0):
    """(trained model, (train, val, test), retrain epochs) for a dataset, model cached."""
    if dataset == "digits":
        model, splits = trained_digits_cnn(seed=seed)
        return model, splits, 15
    from lightning_influence.demos.datasets import fashion_mnist_splits
    from lightning_influence.demos.models import ImageClassifier

    try:
        splits = fashion_mnist_splits(seed=seed, max_train_samples=10_000)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}\n(As root: apt-get install -y dataset-fashion-mnist.)"
        ) from err
    path = CACHE / f"fmnist_cnn_seed{seed}.pt"
    CACHE.mkdir(parents=True, exist_ok=True)
    if path.exists():
        model = ImageClassifier(num_classes=10, image_size=28)
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        model = train_classifier(splits[0], splits[1], epochs=5, seed=seed)
        torch.save(model.state_dict(), path)
    return model.eval(), splits, 5


def labels_of(ds) -> torch.Tensor:
    return (
        ds.tensors[1]
        if isinstance(ds, TensorDataset)
        else torch.tensor([int(ds[i][1]) for i in range(len(ds))])
    )


def stratified_subset(ds, n: int, seed: int = 0):
    """About ``n`` samples with the class proportions of ``ds`` (deterministic for a seed)."""
    labels = labels_of(ds)
    gen = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().squeeze(1)
        k = round(n * len(idx) / len(labels))
        keep += idx[torch.randperm(len(idx), generator=gen)[:k]].tolist()
    return Subset(ds, sorted(keep))


def without(ds, c: int):
    return Subset(ds, (labels_of(ds) != c).nonzero().squeeze(1).tolist())


def only(ds, c: int):
    return Subset(ds, (labels_of(ds) == c).nonzero().squeeze(1).tolist())


# ----------------------------------------------------------------------------- baselines


def val_f1(model: nn.Module, val_loader, c: int) -> float:
    return li.evaluate_forgetting(model, val_loader, [c])["f1"]


def train_epoch(model: nn.Module, loader, opt) -> None:
    """One epoch of cross-entropy training; the model is left in eval mode."""
    model.train()
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def best_by_validation(
    model: nn.Module, rounds: int, step: Callable[[], None], score: Callable[[], float]
):
    """Run ``step`` ``rounds`` times, keep the weights with the best validation score."""
    best, best_state = score(), copy.deepcopy(model.state_dict())
    for _ in range(rounds):
        step()
        s = score()
        if s > best:
            best, best_state = s, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return best


def finetune(model, train, val_loader, c, seed, epochs=10, lrs=(1e-3, 1e-2)):
    """Fine-tune on the retained data (Adam); learning rate and epochs picked on validation F1."""
    start = copy.deepcopy(model.state_dict())
    best, best_state = -1.0, start
    for lr in lrs:
        model.load_state_dict(start)
        loader = DataLoader(
            without(train, c),
            batch_size=64,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        score = best_by_validation(
            model,
            epochs,
            lambda loader=loader, opt=opt: train_epoch(model, loader, opt),
            lambda: val_f1(model, val_loader, c),
        )
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return best


def gradient_ascent(model, train, val_loader, c, seed, steps=40, lr=1e-3):
    """Ascend the loss on the forget set (Adam, one batch per step); steps picked on validation."""
    loader = DataLoader(
        only(train, c), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    it = iter(())

    def step():
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        model.train()
        opt.zero_grad()
        (-nn.functional.cross_entropy(model(x), y)).backward()
        opt.step()
        model.eval()

    return best_by_validation(model, steps, step, lambda: val_f1(model, val_loader, c))


def random_relabel(model, train, val_loader, c, seed, epochs=3, lr=1e-3):
    """Give the forget samples random wrong labels and fine-tune on them plus the retained data."""
    gen = torch.Generator().manual_seed(seed)
    labels = labels_of(train).clone()
    idx = (labels == c).nonzero().squeeze(1)
    shift = torch.randint(1, 10, (len(idx),), generator=gen)
    labels[idx] = (c + shift) % 10
    xs = torch.stack([train[i][0] for i in range(len(train))])
    loader = DataLoader(TensorDataset(xs, labels), batch_size=64, shuffle=True, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return best_by_validation(
        model, epochs, lambda: train_epoch(model, loader, opt), lambda: val_f1(model, val_loader, c)
    )


# ----------------------------------------------------------------------------- one run


def run_method(name: str, model, splits, c: int, seed: int, retrain_epochs: int) -> dict[str, Any]:
    train, val, test = splits
    val_loader, test_loader = DataLoader(val, batch_size=256), DataLoader(test, batch_size=512)
    m = copy.deepcopy(model).eval()
    extra: dict[str, Any] = {}
    with PeakRSS() as mem, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        if name in INFLUENCE_METHODS:
            cb = unlearn_callback(
                forget_classes=[c], seed=seed, progress_bar=False, **INFLUENCE_METHODS[name]
            )
            rep = cb.unlearn_model(
                m, DataLoader(li.IndexedDataset(train), batch_size=64), val_loader
            )
            extra = {
                "applied": rep.applied,
                "ratio": rep.ratio,
                "damping": rep.damping,
                "selected_fraction": rep.selected_params / max(1, rep.total_params),
                "solver_converged": rep.solver.get("converged"),
            }
        elif name == "retrain":
            m = train_classifier(
                without(train, c), without(val, c), epochs=retrain_epochs, seed=seed, num_classes=10
            )
        elif name == "fine-tune":
            finetune(m, train, val_loader, c, seed)
        elif name == "gradient ascent":
            gradient_ascent(m, train, val_loader, c, seed)
        elif name == "random relabel":
            random_relabel(m, train, val_loader, c, seed)
        else:
            raise ValueError(name)
        seconds = time.perf_counter() - start
    out = li.evaluate_forgetting(m, test_loader, [c])
    return {
        "method": name,
        "forget_class": c,
        "seed": seed,
        "seconds": seconds,
        "peak_extra_rss_bytes": mem.extra_bytes,
        **{f"test_{k}": v for k, v in out.items()},
        **extra,
    }


def run(suite: str = "small", resume: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run a suite; ``resume``: rows of an earlier run of the same suite, kept and not rerun."""
    torch.set_num_threads(1)
    cfg = SUITES[suite]
    default_methods = ["retrain", *INFLUENCE_METHODS, *BASELINES]
    methods = cfg.get("methods", default_methods)
    method_seeds = cfg.get("method_seeds", {})
    rows = [r for r in resume or [] if "error" not in r]
    done = {(r["dataset"], r["forget_class"], r["seed"], r["method"]) for r in rows}
    notes, t0 = [], time.perf_counter()
    for dataset in cfg["datasets"]:
        try:
            model, splits, epochs = load(dataset)
        except FileNotFoundError as err:
            notes.append(f"{dataset} skipped: {err}")
            print(notes[-1], flush=True)
            continue
        if cfg.get("val_samples") and len(splits[1]) > cfg["val_samples"]:
            splits = (splits[0], stratified_subset(splits[1], cfg["val_samples"]), splits[2])
            notes.append(f"{dataset}: validation cut to {len(splits[1])} samples (stratified)")
        for c in cfg["classes"]:
            for seed in cfg["seeds"]:
                for name in methods:
                    if (dataset, c, seed, name) in done or seed not in method_seeds.get(
                        name, [seed]
                    ):
                        continue
                    try:
                        row = run_method(name, model, splits, c, seed, epochs)
                    except Exception as err:  # one failing run must not sink the study
                        row = {"method": name, "forget_class": c, "seed": seed, "error": repr(err)}
                    row["dataset"] = dataset
                    rows.append(row)
                    print(
                        f"{dataset} class {c} seed {seed} {name:22s} "
                        + (
                            f"F1 {row['test_f1']:.4f} forget {row['test_forget_acc']:.3f} retain {row['test_retain_acc']:.3f} {row['seconds']:.1f}s"
                            if "error" not in row
                            else row["error"]
                        ),
                        flush=True,
                    )
    return summarise(rows, methods, suite, notes, time.perf_counter() - t0)


def summarise(rows, methods, suite, notes, wall) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    # retrained reference per (dataset, class, seed) for the EL/SL gaps
    ref = {(r["dataset"], r["forget_class"], r["seed"]): r for r in ok if r["method"] == "retrain"}
    for r in ok:
        k = (r["dataset"], r["forget_class"], r["seed"])
        if k in ref:
            r["el_gap"] = abs(r["test_exclusive_loss"] - ref[k]["test_exclusive_loss"])
            r["sl_gap"] = abs(r["test_self_loss"] - ref[k]["test_self_loss"])
            r["f1_gap_to_retrain"] = ref[k]["test_f1"] - r["test_f1"]
    cells = []
    for ds in sorted({r["dataset"] for r in ok}):
        for name in methods:
            rs = [r for r in ok if r["dataset"] == ds and r["method"] == name]
            if not rs:
                continue
            cell = {"dataset": ds, "method": name, "runs": len(rs)}
            for key in (
                "test_forget_acc",
                "test_retain_acc",
                "test_f1",
                "test_exclusive_loss",
                "test_self_loss",
                "el_gap",
                "sl_gap",
                "seconds",
                "peak_extra_rss_bytes",
            ):
                vals = [r[key] for r in rs if r.get(key) is not None]
                if vals:
                    cell[key] = mean_std(vals)
            cells.append(cell)
    gif = [r for r in ok if r["method"] == "gif (default)"]
    ret = [r for r in ok if r["method"] == "retrain"]
    summary = {
        "unlearn_over_retrain_seconds": statistics.fmean(r["seconds"] for r in gif)
        / statistics.fmean(r["seconds"] for r in ret)
        if gif and ret
        else None,
        "f1_gap_to_retrain": statistics.fmean(
            r["f1_gap_to_retrain"] for r in gif if "f1_gap_to_retrain" in r
        )
        if gif
        else None,
        "gif_f1": mean_std([r["test_f1"] for r in gif]) if gif else None,
        "retrain_f1": mean_std([r["test_f1"] for r in ret]) if ret else None,
        "goals": {"unlearn_over_retrain_seconds": "<= 0.05", "f1_gap_to_retrain": "<= 0.01"},
    }
    return {
        "benchmark": "unlearning",
        "suite": suite,
        "command": f"python -m benchmarks.unlearning --suite {suite}",
        "result_file": result_name(suite),
        "wall_seconds": wall,
        "machine": machine(),
        "config": SUITES[suite],
        "methods": methods,
        "memory_definition": "peak_extra_rss_bytes: the process's resident-memory high-water mark during the method (reset per method via /proc/self/clear_refs) minus its resident memory at the start; whole-process, CPU.",
        "notes": notes,
        "summary": summary,
        "cells": cells,
        "rows": rows,
    }


def run_suite(suite: str = "small") -> dict[str, Any]:
    """Run a suite, write its JSON and plot, print its table (``python -m benchmarks run``)."""
    result = run(suite)
    write_json(result_name(suite), result)
    plot(result)
    print_table(result)
    return result


def plot(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in result["cells"] if c["dataset"] == "digits"] or result["cells"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [c["method"] for c in cells]
    for ax, key, label in (
        (axes[0], "test_f1", "test F1 (higher is better)"),
        (axes[1], "seconds", "seconds (log)"),
    ):
        means = [c[key]["mean"] for c in cells]
        stds = [c[key]["std"] for c in cells]
        ax.barh(
            names,
            means,
            xerr=stds,
            color=["#888" if n == "retrain" else "#3a7" if "gif" in n else "#48c" for n in names],
        )
        ax.set_xlabel(label)
        if key == "seconds":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.set_xlim(min(means) - 0.05 if min(means) > 0.5 else 0, 1.0)
    axes[1].set_yticklabels([])
    fig.suptitle(
        f"Class removal on {cells[0]['dataset']} (mean ± std over classes and seeds; test split)"
    )
    fig.tight_layout()
    fig.savefig(RESULTS / result["result_file"].replace(".json", ".png"), dpi=120)


def print_table(result: dict[str, Any]) -> None:
    print(
        f"{'dataset':8s} {'method':24s} {'forget acc':>16s} {'retain acc':>16s} {'F1':>16s} {'|EL-EL_r|':>14s} {'|SL-SL_r|':>14s} {'seconds':>14s}"
    )
    for c in result["cells"]:

        def f(k: str, c: dict = c) -> str:
            return f"{c[k]['mean']:.3f}±{c[k]['std']:.3f}" if k in c else "-"

        print(
            f"{c['dataset']:8s} {c['method']:24s} {f('test_forget_acc'):>16s} {f('test_retain_acc'):>16s} {f('test_f1'):>16s} {f('el_gap'):>14s} {f('sl_gap'):>14s} {f('seconds'):>14s}"
        )
    s = result["summary"]
    print(
        f"unlearn_over_retrain_seconds = {s['unlearn_over_retrain_seconds']:.3f} (goal <= 0.05); f1_gap_to_retrain = {s['f1_gap_to_retrain']:.4f} (goal <= 0.01)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--suite", choices=sorted(SUITES), default="small")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in this suite's JSON and run only the missing ones",
    )
    a = p.parse_args()
    resume = None
    if a.resume and (RESULTS / result_name(a.suite)).exists():
        previous = json.loads((RESULTS / result_name(a.suite)).read_text())
        resume = previous["rows"]
    result = run(a.suite, resume)
    if resume is not None:
        result["notes"] = list(dict.fromkeys([*previous.get("notes", []), *result["notes"]]))
        result["notes"].append(
            f"resumed: {len(resume)} rows kept from the earlier run(s); wall_seconds is this run's"
        )
    write_json(result_name(a.suite), result)
    plot(result)
    print_table(result)


# ----------------------------------------------------------------------------- docs/benchmarks.md


GOALS = [
    Goal(
        "unlearning.json",
        ("summary", "unlearn_over_retrain_seconds"),
        "<=",
        0.05,
        "GIF time / retraining time",
    ),
    Goal("unlearning.json", ("summary", "f1_gap_to_retrain"), "<=", 0.01, "retrain F1 − GIF F1"),
]


def unlearning_section(d: dict | None, suite: str = "small") -> list[str]:
    if not d and suite != "small":
        return []
    if not d:
        return [
            "## Unlearning vs baselines",
            "",
            "Not run yet: `python -m benchmarks run --only unlearning`.",
            "",
        ]
    cfg = d["config"]
    title = "## Unlearning: GIF and its variants vs the baselines"
    out = [
        title
        if suite == "small"
        else f"{title} ({', '.join(cfg['datasets'])}, 10,000 training images: the earlier study)"
        if suite == "fashion10k"
        else f"{title} ({', '.join(cfg['datasets'])})",
        "",
        f"Command: `{d['command']}` ({d['wall_seconds'] / 60:.1f} min). Datasets {cfg['datasets']}, classes {cfg['classes']}, "
        f"seeds {cfg['seeds']} (Hessian subset / training seed). Every method picks its step, epochs or learning rate on "
        "validation F1; every number is on the test split, mean ± std over classes and seeds.",
        "",
        "| dataset | method | runs | forget acc | retained acc | F1 | |EL−EL_retrain| | |SL−SL_retrain| | seconds | × retrain time | peak extra RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    retrain_s = {c["dataset"]: c["seconds"]["mean"] for c in d["cells"] if c["method"] == "retrain"}
    for c in d["cells"]:
        mem = c.get("peak_extra_rss_bytes")
        mem_s = f"{mem['mean'] / 2**20:.1f} ± {mem['std'] / 2**20:.1f}" if mem else "–"
        ref = retrain_s.get(c["dataset"])
        rel = f"{c['seconds']['mean'] / ref:.2f}" if ref and "seconds" in c else "–"
        out.append(
            f"| {c['dataset']} | {c['method']} | {c.get('runs', '–')} | {md.ms(c.get('test_forget_acc'))} | {md.ms(c.get('test_retain_acc'))} | {md.ms(c.get('test_f1'))} | "
            f"{md.ms(c.get('el_gap'))} | {md.ms(c.get('sl_gap'), 2)} | {md.ms(c.get('seconds'), 2)} | {rel} | {mem_s} |"
        )
    s = d["summary"]
    out += [
        "",
        f"`unlearn_over_retrain_seconds` = {s['unlearn_over_retrain_seconds']:.3f}, `f1_gap_to_retrain` = {s['f1_gap_to_retrain']:.4f} "
        f"(GIF {md.ms(s['gif_f1'], 4)} vs retrain {md.ms(s['retrain_f1'], 4)}).",
        "",
        f"Memory: {d['memory_definition']}",
        "",
    ]
    if d.get("notes"):
        out += ["Notes: " + "; ".join(d["notes"]), ""]
    png = d.get("result_file", "unlearning.json").replace(".json", ".png")
    out += [f"![unlearning](../benchmarks/results/{png})", ""]
    return out


def render() -> list[str]:
    """This study's part of docs/benchmarks.md."""
    return unlearning_section(md.load("unlearning.json")) + unlearning_section(
        md.load("unlearning_fashion10k.json"), suite="fashion10k"
    )


if __name__ == "__main__":
    main()
