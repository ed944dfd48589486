"""What would a retrained model predict on the forgotten rows? Held-out estimates against retraining.

Sample removal needs to know how far forgetting should go: a model that never saw a row
still predicts most rows right (those it can learn from other data) and few of those the
trained model memorised. :mod:`lightning_influence.unlearn.memorised` estimates this from the
validation rows: each forgotten row's *neighbour estimate* (its 10 nearest validation rows'
mean probability of its label, in the output layer's input space) and its *calibrated rate*
(the share of validation rows with a like estimate that the model predicts right). This
study sets both against what the retrained model of the benchmarks does, per row set:

- all forgotten rows: the retrained model's accuracy on them, the neighbour estimate's mean
  (``raw``), the calibrated rate's mean (``calibrated``) and ``unseen`` (memorised rows at 0,
  the others calibrated: the over-forgetting floor's estimate before its noise margin);
- the memorised rows: the share the retrained model still predicts as their labels, and
  the two estimates.

Set-ups: full Fashion-MNIST, 1 % and 10 % random deletions (:mod:`benchmarks.faithfulness`,
its cached base and retrained models; seeds with both cached); digits with 3 % of the labels
flipped and a 40-epoch model that fits them (:mod:`benchmarks.memorised`, seeds 0-4).

``python -m benchmarks.calibration`` writes ``benchmarks/results/calibration.json`` and
``calibration.png``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from benchmarks import faithfulness as F
from benchmarks import markdown as md
from benchmarks import memorised as M
from benchmarks.common import RESULTS, machine, mean_std, write_json
from lightning_influence.data.pool import Rows
from lightning_influence.unlearn.memorised import memorised_rows
from lightning_influence.unlearn.scoring import predict_logits

NAME = "calibration.json"
#: (task, seed) of full Fashion-MNIST whose base and retrained models are cached
FASHION = (("random1", 0), ("random1", 1), ("random10", 0), ("random10", 1), ("random10", 2))


def _rows(ds) -> Rows:
    x, y = ds.tensors
    return Rows(x, y, torch.arange(len(y)))


def measure(setup: str, seed: int, base, retrained, task: F.Task) -> dict[str, Any]:
    """The estimates on ``task``'s forgotten rows against ``retrained``'s predictions."""
    found = memorised_rows(base, _rows(task.forget), _rows(task.val), predict_logits)
    if found is None or found.calibrated is None:
        raise RuntimeError(f"{setup} seed {seed}: no calibration (output layer or validation)")
    fx, fy = task.forget.tensors
    right = (F._logits(retrained, fx).argmax(-1) == fy).double()
    base_right = (F._logits(base, fx).argmax(-1) == fy).double()
    mem = found.rows
    row: dict[str, Any] = {
        "setup": setup,
        "seed": seed,
        "forgotten": len(fy),
        "base_acc": float(base_right.mean()),
        "retrain_acc": float(right.mean()),
        "raw": float(found.expected.mean()),
        "calibrated": float(found.calibrated.mean()),
        "unseen": found.unseen_accuracy(),
        "memorised": int(mem.sum()),
    }
    if bool(mem.any()):
        row |= {
            "memorised_retrain_fit": float(right[mem].mean()),
            "memorised_raw": found.expected_share(),
            "memorised_calibrated": found.calibrated_share(),
        }
    return row


def fashion_rows() -> list[dict[str, Any]]:
    from lightning_influence.demos.datasets import fashion_mnist_splits

    rows = []
    for seed in sorted({s for _, s in FASHION}):
        data = fashion_mnist_splits(seed=seed, max_train_samples=None)
        for name in [t for t, s in FASHION if s == seed]:
            task = F.make_task(name, seed, data)
            base, _ = F.cached(F._cache_name(F._base_kind(task), task, None),
                               task.train, task.val, seed, F._epochs(task))  # fmt: skip
            kind = F._retrain_kind(task)
            retrained, _ = F.cached(F._cache_name(kind, task, None), task.corrected,
                                    task.val, seed, F._epochs(task))  # fmt: skip
            rows.append(measure(f"fashion {name}", seed, base, retrained, task))
            _print(rows[-1])
    return rows


def digits_rows(seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for seed in seeds:
        task = M.make_task(seed)
        base, _ = M._fit(task.train, task.val, 0)
        retrained, _ = M._fit(task.retain, task.val, 0)
        rows.append(measure("digits memorised", seed, base, retrained, task))
        _print(rows[-1])
    return rows


def _print(r: dict[str, Any]) -> None:
    mem = (
        f" | memorised {r['memorised']}: retrain fits {r['memorised_retrain_fit']:.3f}, raw "
        f"{r['memorised_raw']:.3f}, calibrated {r['memorised_calibrated']:.3f}"
        if r["memorised"]
        else ""
    )
    print(f"{r['setup']} seed {r['seed']}: retrain acc {r['retrain_acc']:.3f}, raw {r['raw']:.3f}, "
          f"calibrated {r['calibrated']:.3f}, unseen {r['unseen']:.3f}{mem}", flush=True)  # fmt: skip


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for setup in dict.fromkeys(r["setup"] for r in rows):
        rs = [r for r in rows if r["setup"] == setup]
        cell = {"seeds": len(rs)}
        for est in ("raw", "calibrated", "unseen"):
            cell[f"{est}_minus_retrain_acc"] = mean_std([r[est] - r["retrain_acc"] for r in rs])
        mem = [r for r in rs if r["memorised"]]
        for est in ("raw", "calibrated") if mem else ():
            cell[f"memorised_{est}_minus_retrain_fit"] = mean_std(
                [r[f"memorised_{est}"] - r["memorised_retrain_fit"] for r in mem]
            )
        out[setup] = cell
    return out


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    marks = {"raw": "o", "calibrated": "s"}
    for ax, (prefix, truth, title) in zip(axes, (
        ("", "retrain_acc", "all forgotten rows: accuracy"),
        ("memorised_", "memorised_retrain_fit", "memorised rows: share fitted"),
    ), strict=True):  # fmt: skip
        for est, mark in marks.items():
            for setup in dict.fromkeys(r["setup"] for r in rows):
                rs = [r for r in rows if r["setup"] == setup and truth in r]
                ax.scatter([r[truth] for r in rs], [r[prefix + est] for r in rs], marker=mark,
                           label=f"{setup}, {est}")  # fmt: skip
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.set_xlabel("retrained model")
        ax.set_ylabel("held-out estimate")
        ax.set_title(title, fontsize=10)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "calibration.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--digits-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--no-fashion", action="store_true", help="digits only")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = digits_rows(a.digits_seeds) + ([] if a.no_fashion else fashion_rows())
    write_json(NAME, {
        "benchmark": "calibration",
        "command": "python -m benchmarks.calibration " + " ".join(sys.argv[1:]),
        "setup": __doc__.split("\n\n")[1],
        "machine": machine(),
        "summary": summarise(rows),
        "rows": rows,
    })  # fmt: skip
    plot(rows)


# ----------------------------------------------------------------------------- docs/benchmarks.md


def calibration_section(d: dict | None) -> list[str]:
    """Held-out estimates of what retraining predicts on the forgotten rows (calibration.py)."""
    if not d:
        return []
    out = [
        "## What would retraining predict on the forgotten rows? Held-out estimates",
        "",
        f"Command: `{d['command']}`. Sample removal's over-forgetting floor and its "
        "memorised-row targets rest on estimates from validation rows "
        "(`lightning_influence.unlearn.memorised`): `raw`, the 10 nearest validation rows' mean "
        "probability of a row's label; `calibrated`, the share of validation rows with a like "
        "raw value that the model predicts right; `unseen`, the floor's estimate (memorised "
        "rows at 0, the others calibrated; the floor is 3 standard errors below it). Against "
        "the retrained model of the benchmarks, per seed:",
        "",
        "| set-up | seed | rows | base acc | retrain acc | raw | calibrated | unseen | "
        "memorised | retrain fits them | raw | calibrated |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        mem = (
            f"{r['memorised_retrain_fit']:.3f} | {r['memorised_raw']:.3f} | "
            f"{r['memorised_calibrated']:.3f}"
            if r["memorised"]
            else "- | - | -"
        )
        out.append(
            f"| {r['setup']} | {r['seed']} | {r['forgotten']} | {r['base_acc']:.3f} | "
            f"{r['retrain_acc']:.3f} | {r['raw']:.3f} | {r['calibrated']:.3f} | "
            f"{r['unseen']:.3f} | {r['memorised']} | {mem} |"
        )
    out += [
        "",
        "- Read: on random deletions the calibrated mean follows retraining's accuracy and "
        "the raw one runs low; where the model memorised flipped labels (digits) every "
        "neighbour estimate runs high for the memorised rows (the trained features carry "
        "the memorisation), so sample removal makes memorised rows unfitted by default "
        "(`memorised_target='zero'`) and uses the calibrated rates only for the floor. On "
        "digits the floor's estimate is itself high (the flips the detector does not flag "
        "keep high calibrated rates); over 35 rows the 3-standard-error margin puts the "
        "floor at or below 0.14, under the default's kept points there.",
        "",
        "![calibration](../benchmarks/results/calibration.png)",
        "",
    ]
    return out


def render() -> list[str]:
    """This study's part of docs/benchmarks.md."""
    return calibration_section(md.load("calibration.json"))


if __name__ == "__main__":
    main()
