"""Label change, find-then-fix and backdoor repair on digits: each task's defaults against the
settings they replaced and each lever alone, side by side over corruption seeds.

The callback sees the training and validation splits; every number reported is on the TEST
split. One model per corruption seed (trained 12 epochs, seed 0, as the tests'; 15 epochs for
find-then-fix), deep-copied before each variant.

- ``relabel``: 50 % of the 3s labelled 8; relabel them back. ``recovered``: share of the
  class-3 accuracy gap to the clean model won back; ``other_drop``: mean accuracy of the nine
  other classes lost (the corrupted model's class 8 is inflated by the flips).
- ``find_fix``: 5 % of the labels flipped at random; the top 5 % by self-influence are
  reviewed and the wrong ones relabelled. ``gain``: true-label accuracy won on them;
  ``test_drop``: test accuracy lost.
- ``backdoor_true_labels`` / ``backdoor_no_labels``: 5 % of the non-zero samples stamped with
  a corner trigger and labelled 0. ``asr``: attack success rate after; ``acc_drop``: clean
  test accuracy lost.

``meets`` applies the acceptance of ``tests/unlearn/test_forget_tasks.py`` and ``tests/attribution/test_explain.py``
to each seed. Run: ``python -m benchmarks.corrections [--seeds 0 1 2 3]``.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_influence as li
from benchmarks import markdown as md
from benchmarks.common import RESULTS, machine, mean_std, write_json
from lightning_influence.demos.corruptions import (
    accuracy,
    attack_success_rate,
    class_accuracies,
    corner_trigger,
    flip_labels,
    flip_uniform,
    poison,
)
from lightning_influence.demos.datasets import digits_splits
from lightning_influence.demos.models import train_classifier

RESULT = "corrections.json"
SOURCE, DEST, TARGET = 3, 8, 0
TRIGGER = corner_trigger(size=4, value=1.0, corner="bottom_right")
PREVIOUS_RELABEL = {
    "step": {"max_retain_drop": 0.03, "f1_tolerance": 0.0},
    "solve": {"curvature": "hessian"},
}
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "relabel": {
        "default": {},
        "previous (hessian, budget 0.03, tolerance 0)": PREVIOUS_RELABEL,
        "previous + gauss_newton": {**PREVIOUS_RELABEL, "solve": {"curvature": "gauss_newton"}},
        "previous + budget 0.005": {
            **PREVIOUS_RELABEL,
            "step": {"max_retain_drop": 0.005, "f1_tolerance": 0.0},
        },
        "previous + tolerance 0.02": {
            **PREVIOUS_RELABEL,
            "step": {"max_retain_drop": 0.03, "f1_tolerance": 0.02},
        },
        "no old-class floor": {"spec": {"old_class_drop": None}},
        # the tolerance is both the gain a step must show and the window of the kept step;
        # full Fashion-MNIST seed 4 kept nothing under 0.02 (best gain +0.013)
        "tolerance 0.005": {"step": {"f1_tolerance": 0.005}},
        "smallest step, no old-class floor": {
            "step": {"keep": "smallest"},
            "spec": {"old_class_drop": None},
        },
    },
    "backdoor": {
        "default": {},
        "previous (budget 0.01, no repair rows, no response)": {
            "step": {"max_retain_drop": 0.01},
            "backdoor_repair_rows": 0,
            "response": {"steps": 0},
        },
        "budget 0.01": {"step": {"max_retain_drop": 0.01}},
        "no repair rows": {"backdoor_repair_rows": 0},
        "no response descent": {"response": {"steps": 0}},
        "response lr 1e-4": {"response": {"lr": 1e-4}},
        # full Fashion-MNIST seed 4: the descent at 3e-4 was still repairing at step 192 of 200
        "response lr 1e-3": {"response": {"lr": 1e-3}},
        # end the descent once forgetting is complete and retained accuracy is back
        "stop when repaired": {"response": {"stop_when_repaired": True}},
    },
}


def _unlearn(model, train, val, spec=None, **task) -> tuple[torch.nn.Module, float]:
    """A copy of ``model`` unlearned with ``UnlearnCallback(**task)`` (``spec``: task
    attributes set on ``callback.spec``, e.g. ``old_class_drop``), and the seconds."""
    model = copy.deepcopy(model)
    cb = li.UnlearnCallback(progress_bar=False, **task)
    for key, value in (spec or {}).items():
        setattr(cb.spec, key, value)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cb.unlearn_model(
            model,
            DataLoader(li.IndexedDataset(train), batch_size=64),
            DataLoader(val, batch_size=256),
        )
    return model.eval(), time.perf_counter() - start


def _fit(train, val, epochs: int = 12):
    return train_classifier(train, val, epochs=epochs, seed=0, num_classes=10)


def _row(task: str, variant: str, seed: int, seconds: float, meets: bool, **measures) -> dict:
    """One result row: its task, variant and seed, the measures, seconds, the tests' verdict."""
    return {"task": task, "variant": variant, "seed": seed, **measures, "seconds": seconds,
            "meets": meets}  # fmt: skip


def relabel_rows(seed: int, variants: dict[str, dict], splits, clean) -> list[dict]:
    train, val, test = splits
    noisy, relabel = flip_labels(train, SOURCE, DEST, 0.5, seed=seed)
    corrupted = _fit(noisy, val)
    ref, before = class_accuracies(clean, test), class_accuracies(corrupted, test)
    others = torch.arange(10) != SOURCE
    rows = []
    for name, settings in variants.items():
        model, seconds = _unlearn(corrupted, noisy, val, relabel=relabel, **settings)
        after = class_accuracies(model, test)
        gap = float(ref[SOURCE] - before[SOURCE])
        recovered = float(after[SOURCE] - before[SOURCE]) / gap
        other_drop = float(before[others].mean() - after[others].mean())
        meets = recovered >= 0.5 and other_drop <= 0.02
        rows.append(
            _row("relabel", name, seed, seconds, meets, recovered=recovered, other_drop=other_drop)
        )
    return rows


def find_fix_rows(seed: int, variants: dict[str, dict], splits) -> list[dict]:
    train, val, test = splits
    x, y = train.tensors
    noisy, flipped = flip_uniform(y, 0.05, seed)
    k = len(flipped)
    data = TensorDataset(x, noisy)
    model = _fit(data, val, epochs=15)
    top = torch.topk(li.self_influence(model, (x, noisy)), k).indices
    wrong = top[noisy[top] != y[top]]
    reviewed = TensorDataset(x[wrong], y[wrong])
    relabel = {int(i): int(y[i]) for i in wrong}
    rows = []
    for name, settings in variants.items():
        fixed, seconds = _unlearn(model, data, val, relabel=relabel, **settings)
        gain = accuracy(fixed, reviewed) - accuracy(model, reviewed)
        test_drop = accuracy(model, test) - accuracy(fixed, test)
        meets = gain >= 0.2 and test_drop <= 0.01
        measures = {"relabelled": len(relabel), "gain": gain, "test_drop": test_drop}
        rows.append(_row("find_fix", name, seed, seconds, meets, **measures))
    return rows


def backdoor_rows(seed: int, variants: dict[str, dict], splits) -> list[dict]:
    train, val, test = splits
    data, ids, true_labels = poison(train, TRIGGER, TARGET, 0.05, seed=seed)
    model = _fit(data, val)
    acc = accuracy(model, test)
    rows = []
    for labels in (True, False):
        task = "backdoor_true_labels" if labels else "backdoor_no_labels"
        extra = {"backdoor_true_labels": true_labels} if labels else {}
        for name, settings in variants.items():
            fixed, seconds = _unlearn(
                model, data, val, backdoor_trigger=TRIGGER, backdoor_target=TARGET,
                forget_ids=ids, **extra, **settings,
            )  # fmt: skip
            asr = attack_success_rate(fixed, test, TRIGGER, TARGET)
            acc_drop = acc - accuracy(fixed, test)
            meets = acc_drop <= 0.03 and asr <= 0.10
            rows.append(_row(task, name, seed, seconds, meets, asr=asr, acc_drop=acc_drop))
    return rows


def summarise(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per task and variant: mean ± std of every measure, and the seeds that meet the tests."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r["task"], {}).setdefault(r["variant"], []).append(r)
    skip = {"task", "variant", "seed", "meets"}
    return {
        task: {
            name: {
                **{k: mean_std([r[k] for r in rs]) for k in rs[0] if k not in skip},
                "meets": f"{sum(r['meets'] for r in rs)}/{len(rs)}",
            }
            for name, rs in variants.items()
        }
        for task, variants in out.items()
    }


def plot(summary: dict[str, dict[str, Any]], name: str = "corrections.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("relabel", "other_drop", "relabel 3->8: other classes' test acc lost"),
        ("find_fix", "test_drop", "find then fix: test acc lost"),
        ("backdoor_true_labels", "asr", "backdoor (true labels): test ASR"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    for ax, (task, key, title) in zip(axes, panels, strict=True):
        names = list(summary.get(task, {}))
        if not names:
            ax.set_visible(False)
            continue
        means = [summary[task][n][key]["mean"] for n in names]
        stds = [summary[task][n][key]["std"] for n in names]
        ax.barh(range(len(names)), means, xerr=stds, color="tab:blue")
        ax.set_yticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / name, dpi=120)


TASKS = ("relabel", "find_fix", "backdoor")


def run(
    seeds: list[int], tasks: tuple[str, ...] = TASKS, only: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Every task's variants on every seed (``only``: just the variants of these names)."""
    torch.set_num_threads(1)
    splits = digits_splits(0)
    clean = _fit(splits[0], splits[1])
    variants = {
        task: {n: v for n, v in named.items() if only is None or n in only}
        for task, named in VARIANTS.items()
    }
    rows: list[dict] = []
    for seed in seeds:
        relabel = variants["relabel"]
        if "relabel" in tasks:
            rows += relabel_rows(seed, relabel, splits, clean)
        if "find_fix" in tasks:
            rows += find_fix_rows(seed, relabel, splits)
        if "backdoor" in tasks:
            rows += backdoor_rows(seed, variants["backdoor"], splits)
        print(f"seed {seed}: {len(rows)} rows", flush=True)
    summary = summarise(rows)
    return {
        "command": "python -m benchmarks.corrections --seeds "
        + " ".join(map(str, seeds))
        + ("" if tasks == TASKS else " --tasks " + " ".join(tasks))
        + ("" if only is None else " --variants " + " ".join(repr(n) for n in only)),
        "machine": machine(),
        "variants": variants,
        "summary": summary,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument(
        "--out",
        default=RESULT,
        help="result file under benchmarks/results (a task subset is best written to its own file)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=sorted({n for named in VARIANTS.values() for n in named}),
        help="run only these variants (default: all)",
    )
    a = p.parse_args(argv)
    result = run(a.seeds, tuple(a.tasks), None if a.variants is None else tuple(a.variants))
    write_json(a.out, result)
    plot(result["summary"], a.out.replace(".json", ".png"))
    for task, variants in result["summary"].items():
        for name, s in variants.items():
            cells = ", ".join(
                f"{k} {v['mean']:.4f} ± {v['std']:.4f}" for k, v in s.items() if k != "meets"
            )
            print(f"{task:22s} {name:45s} meets {s['meets']}: {cells}")


# ----------------------------------------------------------------------------- docs/benchmarks.md


CORRECTION_MEASURES = {
    "relabel": [("recovered", "class-3 gap recovered"), ("other_drop", "other classes' acc lost")],
    "find_fix": [
        ("gain", "relabelled rows' true-label acc gained"),
        ("test_drop", "test acc lost"),
    ],
    "backdoor_true_labels": [("asr", "ASR after"), ("acc_drop", "clean acc lost")],
    "backdoor_no_labels": [("asr", "ASR after"), ("acc_drop", "clean acc lost")],
}


def corrections_section(
    d: dict | None,
    title: str = "Label change and backdoor repair on digits",
    image: str = "corrections.png",
    lead: str = "",
) -> list[str]:
    """Label change, find-then-fix and backdoor repair on digits (benchmarks/corrections.py)."""
    if not d:
        return []
    seeds = sorted({r["seed"] for r in d["rows"]})
    out = [
        f"## {title}",
        "",
        *([lead, ""] if lead else []),
        f"Command: `{d['command']}`. One model per corruption seed ({len(seeds)} seeds), every "
        "variant on the same model, test split; `meets`: seeds passing the acceptance of the "
        "task's test (relabel: ≥ half the gap recovered and ≤ 0.02 lost on the other "
        "classes; find-then-fix: ≥ 0.2 gained, ≤ 0.01 test accuracy lost; backdoor with true "
        "labels: ASR ≤ 0.10; backdoor: ≤ 0.03 clean accuracy lost). `previous` is the task's "
        "earlier default, run with the current step search (whose floor follows the best "
        "retained accuracy seen).",
        *[f"Note: {n}" for n in d.get("notes", [])],
        "",
        f"![corrections](../benchmarks/results/{image})",
        "",
    ]
    for task, variants in d["summary"].items():
        measures = CORRECTION_MEASURES.get(task, [])
        out += [
            f"**{task}**",
            "",
            "| variant | " + " | ".join(label for _, label in measures) + " | seconds | meets |",
            "|---|" + "---|" * (len(measures) + 2),
        ]
        for name, cell in variants.items():
            vals = " | ".join(md.ms(cell[k]) for k, _ in measures)
            out.append(f"| {name} | {vals} | {md.ms(cell['seconds'], 1)} | {cell['meets']} |")
        out.append("")
    return out


def render() -> list[str]:
    """This study's part of docs/benchmarks.md."""
    out = corrections_section(
        md.load("corrections_backdoor.json"),
        "Backdoor repair on digits: the current defaults and their levers",
        "corrections_backdoor.png",
        "The backdoor rows of the next section are the defaults before this study "
        "(damping 0.1, budget 0.01, no repair rows, no response descent).",
    )
    out += corrections_section(
        md.load("corrections_relabel_keep.json"),
        "Label change on digits, 5 flip seeds: the old classes' floor and which step is kept",
        "corrections_relabel_keep.png",
        "'default' keeps the largest step within the F1 tolerance and floors the old labels' "
        "classes' validation accuracy (0.05 below before); the 'previous' rows change only "
        "the settings they name, so they keep both; the last two rows drop the floor.",
    )
    out += corrections_section(
        md.load("corrections_backdoor_lr.json"),
        "Backdoor repair on digits: the response descent's learning rate",
        "corrections_backdoor_lr.png",
        "'default' is the learning rate 3e-4 of the time; 1e-3 became the default after "
        "these rows and the full Fashion-MNIST ones (faithfulness_fashion_backdoor_lr.json).",
    )
    return out + corrections_section(md.load("corrections.json"))


if __name__ == "__main__":
    main()
