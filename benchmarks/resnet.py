"""A user's own model at a real size: what each task costs next to one training epoch.

Set-up (the one a new user tried): torchvision's ``resnet18`` (11 M parameters, ImageNet
stem) on 3,000 Fashion-MNIST training images padded to 32x32x3, 600 validation and 2,000
test images, batch 64, Adam 1e-3, 3 epochs. One base model carries every corruption the
tasks repair: 5 % of the non-T-shirt images stamped with a 3x3 corner patch and labelled
T-shirt (backdoor), 30 pullovers labelled shirt (label change). Tasks, each with the
callback's defaults: class removal (bag), removing 20 random clean samples, the label
change, the backdoor repair by ids (no true labels); and ``li.self_influence`` with
``layers="last"`` and ``"all"``.

Each task runs in its own process (one thread, like the epoch it is compared with) under a
time limit (``--limit``, default 900 s): the wall and CPU seconds of the call, the stage
seconds, the peak resident memory above the level before the call (VmHWM, Linux), the
outcome and the test-set measure of the task. A task that passes the limit is recorded as
such, with its time so far.

Run (Fashion-MNIST from Debian's ``dataset-fashion-mnist``)::

    python -m benchmarks.resnet --resume
    python -m benchmarks.resnet --tasks samples --variant "…" --resume   # a lever
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_influence as li
from benchmarks import markdown as md
from benchmarks.common import RESULTS, machine, write_json
from benchmarks.faithfulness import RELABEL_FROM, RELABEL_TO, TARGET, TRIGGER
from benchmarks.markdown import Goal
from benchmarks.unlearning import PeakRSS, train_epoch

RESULT = "resnet.json"
CACHE = Path(__file__).parent / "cache" / "resnet"
TASKS = ("epoch", "class", "samples", "relabel", "backdoor", "self_last", "self_all")
N_TRAIN, N_VAL, N_TEST, EPOCHS, BATCH = 3000, 600, 2000, 3, 64
FORGET_CLASS, N_RANDOM, N_FLIPPED, POISON = 8, 20, 30, 0.05

#: levers: extra callback arguments by name (``--variant``); ``None``: the defaults
VARIANTS: dict[str | None, dict[str, Any]] = {
    None: {},
    "max_iter 10": {"solve": {"max_iter": 10}},
    "budget 32": {"hessian": {"budget": 32}},
    "budget 32 max_iter 10": {"hessian": {"budget": 32}, "solve": {"max_iter": 10}},
    "rounds 1": {"solve": {"rounds": 1}},
    "no response": {"response": {"steps": 0}},
    "rounds 1 no response": {"solve": {"rounds": 1}, "response": {"steps": 0}},
    # the backdoor descent ends once forgetting is complete and retained accuracy is back
    "stop when repaired": {"response": {"stop_when_repaired": True}},
    # sample removal's descent raises each forgotten row's loss only up to what its
    # validation neighbours say retraining would give it ("spec": attributes of cb.spec)
    "cap expected": {"spec": {"removal_cap": "expected"}},
}
#: levers of the self_last / self_all tasks: extra li.self_influence arguments
SCORE_VARIANTS: dict[str, dict[str, Any]] = {
    # the exact (unprojected) EK-FAC: the default before projection="auto"
    "no projection": {"projection": None},
    "projection 64": {"projection": 64},
    "projection 16": {"projection": 16},
}


def resnet18() -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    return tv_resnet18(num_classes=10)


def data(seed: int = 0) -> dict[str, Any]:
    """Splits and corruptions: train (corrupted), val, test and the ids of each corruption."""
    from lightning_influence.demos.datasets import fashion_mnist_splits

    train, val, test = fashion_mnist_splits(seed=seed, pad_to_32=True, rgb=True,
                                            max_train_samples=N_TRAIN)  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    x, y = (t.clone() for t in train.tensors)
    flips = torch.nonzero(y == RELABEL_FROM).flatten()
    flips = flips[torch.randperm(len(flips), generator=gen)[:N_FLIPPED]]
    victims = torch.nonzero((y != TARGET) & (y != RELABEL_FROM)).flatten()
    poisoned = victims[torch.randperm(len(victims), generator=gen)[: round(POISON * len(y))]]
    clean = torch.ones(len(y), dtype=torch.bool)
    clean[flips], clean[poisoned] = False, False
    pool = torch.nonzero(clean).flatten()
    removed = pool[torch.randperm(len(pool), generator=gen)[:N_RANDOM]]
    true_y = y.clone()
    y[flips] = RELABEL_TO
    x[poisoned], y[poisoned] = TRIGGER(x[poisoned]), TARGET
    vi = torch.randperm(len(val), generator=gen)[:N_VAL]
    ti = torch.randperm(len(test), generator=gen)[:N_TEST]
    return {
        "train": TensorDataset(x, y),
        "val": TensorDataset(*(t[vi] for t in val.tensors)),
        "test": TensorDataset(*(t[ti] for t in test.tensors)),
        "flips": flips,
        "poisoned": poisoned,
        "removed": removed,
        "true_y": true_y,
    }


def base_model(d: dict[str, Any], seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The trained base model (cached) and its epoch seconds (wall and CPU)."""
    path, meta = CACHE / f"base_seed{seed}.pt", CACHE / f"base_seed{seed}.json"
    model = resnet18()
    if path.exists() and meta.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), json.loads(meta.read_text())
    torch.manual_seed(seed)
    model = resnet18()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(d["train"], batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    wall, cpu = [], []
    for _ in range(EPOCHS):
        w, c = time.perf_counter(), time.process_time()
        train_epoch(model, loader, opt)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    info = {"epoch_seconds": wall, "epoch_cpu_seconds": cpu, "epochs": EPOCHS}
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    meta.write_text(json.dumps(info))
    return model.eval(), info


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(c).argmax(-1) for c in x.split(256)])


def _acc(model: nn.Module, ds: TensorDataset, mask: torch.Tensor | None = None) -> float:
    x, y = ds.tensors
    if mask is not None:
        x, y = x[mask], y[mask]
    return float((_predict(model, x) == y).float().mean())


def test_measures(model: nn.Module, task: str, d: dict[str, Any]) -> dict[str, float]:
    """The test-set measure of each task (and test accuracy)."""
    test = d["test"]
    x, y = test.tensors
    out = {"test_acc": _acc(model, test)}
    if task == "class":
        out["class_acc"] = _acc(model, test, y == FORGET_CLASS)
        out["other_acc"] = _acc(model, test, y != FORGET_CLASS)
    elif task == "relabel":
        out["relabel_class_acc"] = _acc(model, test, y == RELABEL_FROM)
    elif task == "backdoor":
        victims = y != TARGET
        pred = _predict(model, TRIGGER(x[victims].clone()))
        out["attack_success"] = float((pred == TARGET).float().mean())
    elif task == "samples":
        tx, ty = d["train"].tensors
        out["forget_acc"] = float(
            (_predict(model, tx[d["removed"]]) == ty[d["removed"]]).float().mean()
        )
    return out


def _callback_args(task: str, d: dict[str, Any]) -> dict[str, Any]:
    if task == "class":
        return {"forget_classes": [FORGET_CLASS]}
    if task == "samples":
        return {"forget_ids": d["removed"].tolist()}
    if task == "relabel":
        return {"relabel": {int(i): RELABEL_FROM for i in d["flips"]}}
    if task == "backdoor":
        return {"forget_ids": d["poisoned"].tolist(), "backdoor_trigger": TRIGGER,
                "backdoor_target": TARGET}  # fmt: skip
    raise ValueError(task)


def one(task: str, variant: str | None, seed: int = 0) -> dict[str, Any]:
    """Run one task in this process; the row (``run`` calls it in a child process)."""
    torch.set_num_threads(1)
    d = data(seed)
    model, _ = base_model(d, seed)
    train = DataLoader(li.IndexedDataset(d["train"]), batch_size=256)
    row: dict[str, Any] = {"task": task, "variant": variant, "seed": seed}
    measured = task not in ("epoch", "self_last", "self_all")
    row["before"] = test_measures(model, task, d) if measured else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with PeakRSS() as mem:
            wall, cpu = time.perf_counter(), time.process_time()
            if task == "epoch":  # one training epoch of the base model, as a user's next one
                opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                gen = torch.Generator().manual_seed(seed)
                train_epoch(model, DataLoader(d["train"], BATCH, shuffle=True, generator=gen), opt)
            elif task.startswith("self"):
                layers = "last" if task == "self_last" else "all"
                args = SCORE_VARIANTS.get(variant or "", {})
                scores = li.self_influence(model, train, layers=layers, **args)
                row["scores"] = int(scores.numel())
            else:
                settings = dict(VARIANTS[variant])
                spec = settings.pop("spec", {})
                cb = li.UnlearnCallback(seed=seed, progress_bar=False,
                                        **_callback_args(task, d), **settings)  # fmt: skip
                for key, value in spec.items():
                    setattr(cb.spec, key, value)
                rep = cb.unlearn_model(model, train, DataLoader(d["val"], batch_size=256))
                row |= {"applied": rep.applied, "reason": rep.reason, "complete": rep.complete,
                        "forget_score": rep.forget_score, "stage_seconds": rep.seconds,
                        "solver": {k: rep.solver.get(k) for k in ("iterations", "hvps", "converged", "residual")},
                        "selected_params": rep.selected_params, "total_params": rep.total_params,
                        "hessian_size": rep.hessian_size}  # fmt: skip
            row["seconds"] = time.perf_counter() - wall
            row["cpu_seconds"] = time.process_time() - cpu
    row["peak_extra_bytes"] = mem.extra_bytes
    if task.startswith("self"):
        row |= _found(scores, d, task, variant, seed)
    if measured:
        row["after"] = test_measures(model, task, d)
    return row


def _found(scores: torch.Tensor, d: dict[str, Any], task: str, variant: str | None, seed: int):
    """How well a self-influence ranking finds the corrupted rows (flipped and poisoned):
    precision in its top k (k = their number), next to the loss-free baseline of chance; the
    scores are cached so that a projected ranking can be compared with the exact
    (unprojected) EK-FAC's, the ``no projection`` variant."""
    corrupted = torch.cat([d["flips"], d["poisoned"]])
    k = len(corrupted)
    top = torch.topk(scores, k).indices
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(scores, CACHE / f"{task}_{(variant or 'default').replace(' ', '_')}_seed{seed}.pt")
    out = {"corrupted_precision": float(torch.isin(top, corrupted).float().mean())}
    exact = CACHE / f"{task}_no_projection_seed{seed}.pt"
    if variant != "no projection" and exact.exists():
        ref = torch.load(exact, weights_only=True)
        rank = lambda t: t.argsort().argsort().double()  # noqa: E731
        out["spearman_to_unprojected"] = float(
            torch.corrcoef(torch.stack([rank(scores), rank(ref)]))[0, 1]
        )
        out["top_k_overlap_with_unprojected"] = float(
            torch.isin(top, torch.topk(ref, k).indices).float().mean()
        )
    return out


def _child(task: str, variant: str | None, seed: int, limit: float) -> dict[str, Any]:
    """``one`` in a child process, stopped after ``limit`` seconds."""
    cmd = [sys.executable, "-m", "benchmarks.resnet", "--one", task, "--seed", str(seed)]
    if variant is not None:
        cmd += ["--variant", variant]
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return {"task": task, "variant": variant, "seed": seed, "timed_out": True,
                "seconds": time.perf_counter() - start}  # fmt: skip
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"task": task, "variant": variant, "seed": seed,
                "error": (out.stderr or out.stdout)[-2000:]}  # fmt: skip
    return json.loads(lines[-1])


def summarise(
    rows: list[dict[str, Any]], commands: list[str], notes: list[str] | None = None
) -> dict[str, Any]:
    """The issue's measures over the default rows (variants are listed, not summarised)."""
    default = {r["task"]: r for r in rows if r.get("variant") is None}
    # the epoch as measured in a child of one thread, like the tasks (the base model's own
    # epochs may have run on more threads)
    timed = default.get("epoch", {})
    epoch, epoch_cpu = timed.get("seconds"), timed.get("cpu_seconds")

    def over(task: str, key: str = "seconds", ref: float | None = epoch) -> float | None:
        r = default.get(task)
        if r is None or ref is None or key not in r:
            return None
        return r[key] / ref

    unlearn = [t for t in ("class", "samples", "relabel", "backdoor") if t in default]
    lever_keys = ("task", "variant", "seconds", "cpu_seconds", "applied", "complete",
                  "forget_score", "timed_out", "after", "peak_extra_bytes", "corrupted_precision",
                  "spearman_to_unprojected", "top_k_overlap_with_unprojected")  # fmt: skip
    levers = [
        {k: r.get(k) for k in lever_keys}
        | {"seconds_over_epoch": r["seconds"] / epoch if epoch and "seconds" in r else None}
        for r in rows
        if r.get("variant") is not None
    ]
    ratios = [over(t) for t in unlearn]
    mem = [r["peak_extra_bytes"] for r in default.values() if r.get("peak_extra_bytes") is not None]
    summary = {
        "epoch_seconds": epoch,
        "epoch_cpu_seconds": epoch_cpu,
        "task_seconds_over_epoch": {t: over(t) for t in unlearn},
        "task_cpu_seconds_over_epoch": {t: over(t, "cpu_seconds", epoch_cpu) for t in unlearn},
        "max_task_seconds_over_epoch": max((r for r in ratios if r is not None), default=None),
        "max_extra_memory_gb": max(mem) / 2**30 if mem else None,
        "self_influence_last_layer_seconds_over_epoch": over("self_last"),
        "self_influence_all_layers_seconds_over_epoch": over("self_all"),
        "self_influence_all_layers_cpu_seconds_over_epoch": over(
            "self_all", "cpu_seconds", epoch_cpu
        ),
        # every layer's EK-FAC by projection (ScoreArguments.projection; the default 'auto'
        # is 64 here): CPU time over the epoch's and rank agreement with the exact EK-FAC
        "self_influence_all_layers_projected": {
            (r.get("variant") or "default (auto)"): {
                "cpu_seconds_over_epoch": r["cpu_seconds"] / epoch_cpu if epoch_cpu else None,
                "peak_extra_gb": r["peak_extra_bytes"] / 2**30
                if r.get("peak_extra_bytes") is not None
                else None,
                "spearman_to_unprojected": r.get("spearman_to_unprojected"),
                "top_k_overlap_with_unprojected": r.get("top_k_overlap_with_unprojected"),
                "corrupted_precision": r.get("corrupted_precision"),
            }
            for r in rows
            if r["task"] == "self_all"
            and (r.get("variant") is None or r["variant"] in SCORE_VARIANTS)
            and "cpu_seconds" in r
        },
        "timed_out": sorted(r["task"] for r in default.values() if r.get("timed_out")),
        "outcomes": {
            t: {
                k: default[t].get(k)
                for k in ("applied", "complete", "forget_score", "before", "after")
            }
            for t in unlearn
        },
        "levers": levers,
    }
    return {
        "benchmark": "resnet",
        "commands": commands,
        "setup": __doc__.split("Run (")[0].strip(),
        "machine": machine(),
        "notes": list(notes or []),
        "summary": summary,
        "rows": rows,
    }


def run(tasks, variant, seed, limit, resume, out, notes=()) -> dict[str, Any]:
    torch.set_num_threads(1)
    path = RESULTS / out
    old = json.loads(path.read_text()) if resume and path.exists() else {}
    rows = [r for r in old.get("rows", []) if "error" not in r]
    commands = old.get("commands", []) + ["python -m benchmarks.resnet " + " ".join(sys.argv[1:])]
    notes = old.get("notes", []) + [n for n in notes if n not in old.get("notes", [])]
    done = {(r["task"], r.get("variant"), r["seed"]) for r in rows}
    base_model(data(seed), seed)  # train (or read) the base model before the timed children
    for task in tasks:
        if (task, variant, seed) in done:
            continue
        row = _child(task, variant, seed, limit)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "reason"}), flush=True)
        write_json(out, summarise(rows, commands, notes))
    result = summarise(rows, commands, notes)
    write_json(out, result)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--variant", default=None,
                   choices=[v for v in VARIANTS if v is not None] + list(SCORE_VARIANTS))  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--limit", type=float, default=900.0, help="seconds per task before it is stopped"
    )
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", default=RESULT)
    p.add_argument("--note", action="append", default=[], help="a note kept in the result")
    p.add_argument("--one", choices=TASKS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.one, a.variant, a.seed)), flush=True)
        return
    run(a.tasks, a.variant, a.seed, a.limit, a.resume, a.out, a.note)


# ----------------------------------------------------------------------------- docs/benchmarks.md


GOALS = [
    Goal(
        "resnet.json",
        ("summary", "max_task_seconds_over_epoch"),
        "<=",
        1.0,
        "ResNet-18, 3,000 Fashion-MNIST images: slowest task default / one training epoch",
    ),
    Goal(
        "resnet.json",
        ("summary", "max_extra_memory_gb"),
        "<=",
        2.0,
        "ResNet-18: peak resident memory above the level before a task (GB)",
    ),
    Goal(
        "resnet.json",
        ("summary", "self_influence_all_layers_seconds_over_epoch"),
        "<=",
        2.0,
        "ResNet-18: li.self_influence(layers='all') / one training epoch",
    ),
    Goal(
        "resnet.json",
        ("summary", "self_influence_all_layers_cpu_seconds_over_epoch"),
        "<=",
        2.0,
        "ResNet-18: the same in CPU seconds / the epoch's (default projection='auto': 64 here)",
    ),
    Goal(
        "resnet.json",
        (
            "summary",
            "self_influence_all_layers_projected",
            "default (auto)",
            "spearman_to_unprojected",
        ),
        ">=",
        0.99,
        "ResNet-18: the default all-layer ranking's Spearman to the exact (unprojected) EK-FAC's",
    ),
]


def resnet_section(d: dict | None) -> list[str]:
    """A user's own model at a real size (benchmarks/resnet.py)."""
    title = "## A user's own model: ResNet-18 on 3,000 Fashion-MNIST images, cost per task"
    if not d:
        return [title, "", "Not run yet: `python -m benchmarks.resnet --resume`.", ""]
    s = d["summary"]
    out = [
        title,
        "",
        " ".join(d["setup"].split()),
        "",
        f"Commands: {md.commands(d)}.",
        "",
        f"One training epoch (one thread, measured as the tasks are): {s['epoch_seconds']:.1f} s "
        f"wall, {s['epoch_cpu_seconds']:.1f} s CPU."
        if s.get("epoch_seconds")
        else "One training epoch: not measured.",
        "",
        "| task | variant | seconds | × epoch | CPU s | peak extra memory | stages (s) | "
        "solve | applied | forget score | test before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    epoch = s.get("epoch_seconds")
    for r in d["rows"]:
        if r["task"] == "epoch":
            continue
        if r.get("timed_out"):
            ratio = f"> {r['seconds'] / epoch:.1f}" if epoch else ""
            out.append(f"| {r['task']} | {r.get('variant') or 'default'} | > {r['seconds']:.0f} "
                       f"(stopped at the limit) | {ratio} | | not measured | | | | | |")  # fmt: skip
            continue
        if "error" in r:
            continue
        stages = ", ".join(
            f"{k} {v:.0f}" for k, v in r.get("stage_seconds", {}).items() if k != "total" and v >= 1
        )
        solver = r.get("solver") or {}
        solve = f"{solver.get('iterations')} it." if solver.get("iterations") is not None else ""
        mem = r.get("peak_extra_bytes")
        before, after = r.get("before") or {}, r.get("after") or {}
        change = ", ".join(
            f"{k} {before[k]:.3f} → {after[k]:.3f}"
            for k in after
            if k in before and k != "test_acc"
        )
        if r["task"].startswith("self"):  # a ranking: its agreement with the default's
            change = ", ".join(
                f"{label} {r[k]:.3f}"
                for k, label in (
                    ("spearman_to_unprojected", "Spearman to unprojected"),
                    ("top_k_overlap_with_unprojected", "top-k shared with unprojected"),
                    ("corrupted_precision", "corrupted rows in top k"),
                )
                if r.get(k) is not None
            )
        score = r.get("forget_score")
        out.append(
            f"| {r['task']} | {r.get('variant') or 'default'} | {r['seconds']:.1f} | "
            f"{r['seconds'] / epoch:.2f} | {r.get('cpu_seconds', 0):.1f} | "
            f"{mem / 2**30:.2f} GB | {stages} | {solve} | {r.get('applied', '')} | "
            f"{'' if score is None else f'{score:.3f}'} | {change} |"
            if epoch
            else f"| {r['task']} | {r.get('variant') or 'default'} | {r['seconds']:.1f} |"
        )
    return out + [""] + [f"- {n}" for n in d.get("notes", [])] + [""]


def render() -> list[str]:
    """This study's part of docs/benchmarks.md."""
    return resnet_section(md.load("resnet.json"))


if __name__ == "__main__":
    main()
