"""Mislabel detection: rank the training samples, count the flipped labels among the top k.

``python -m benchmarks.influence [--datasets digits fashion] [--seeds 0 1 2]``

For each dataset and flip seed, 5 % of the training labels are changed to another class
(uniformly), a SmallCNN is trained on the noisy labels with the demo recipe
(``train_classifier``: Adam, lr 1e-2, 15 epochs for digits, 8 for Fashion-MNIST; cached under
benchmarks/cache), and every method ranks the training samples. The score is the precision
of the top k, k = the number of flipped labels (= recall at k). Methods:

- ``li_ekfac``: ``li.self_influence`` with its defaults (EK-FAC of the output layer alone,
  ``layers="last"``, on 1024 logit-sampled samples, sampled-label Fisher, damping 0.1 × the
  layer's mean eigenvalue); the layer set was chosen on the validation flip seeds of
  :mod:`benchmarks.influence_levers` (100-109 on digits, 100-102 on Fashion-MNIST, disjoint
  from the reported seeds 0, 1, 2);
- ``li_ekfac_all``: the same with ``layers="all"`` (every Linear/Conv2d layer, the earlier
  default);
- ``li_kfac``: the same with K-FAC's eigenvalues;
- ``loss``: the training loss on the (noisy) label;
- ``random``: a seeded random order;
- ``aum``: the area under the margin (``li.MarginCallback``: the mean over every training
  step of the sample's labelled logit minus the largest other), recorded during a second fit
  with the same recipe and seed; its "seconds" are the time spent in the recording's hooks,
  ``recording_overhead`` that over the fit's seconds (``ab_overhead``: the recording fit's
  seconds over a plain fit's, minus 1, which on a shared machine is mostly noise);
- ``kronfluence_ekfac``: kronfluence's EK-FAC self-influence (its defaults: factors on the
  whole training set, sampled-label Fisher, damping 0.1 × mean eigenvalue), if installed
  (``pip install kronfluence``, the ``compare`` extra).

The exact curvature (``curvature="exact"``) is not run: the SmallCNN has 21,578 parameters,
too many for the dense solve, and self-influence needs one MINRES solve per training sample.

Time is wall-clock seconds of the ranking alone (the model is trained before). Memory is the
process's peak resident memory during the ranking above its level before
(``benchmarks.unlearning.PeakRSS``: VmHWM reset through /proc/self/clear_refs).
Fashion-MNIST uses a stratified 10,000-image subset of the training split (the time budget
of a 2-core CPU); it needs the Debian files (``dataset-fashion-mnist``) and is skipped
without them.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import lightning_influence as li
from benchmarks import markdown as md
from benchmarks.common import CACHE, RESULTS, machine, mean_std, write_json
from benchmarks.markdown import Goal
from benchmarks.unlearning import PeakRSS
from lightning_influence.demos.corruptions import flip_uniform
from lightning_influence.demos.models import ImageClassifier, train_classifier

FLIP_SHARE = 0.05
FASHION_TRAIN = 10_000  # 0: the whole training split (--fashion-train 0)
EPOCHS = {"digits": 15, "fashion": 8}
METHODS = ("aum", "li_ekfac", "li_ekfac_all", "li_kfac", "loss", "random", "kronfluence_ekfac")
#: The lever study's outputs (validation flip seeds), copied into influence.json.
LEVER_FILES = ("influence_levers_digits.json", "influence_levers_fashion.json")


def splits(dataset: str, fashion_train: int = FASHION_TRAIN) -> tuple[TensorDataset, TensorDataset]:
    """(train, val) of the dataset (Fashion-MNIST: a ``fashion_train``-image stratified
    training subset, 0: the whole split)."""
    if dataset == "digits":
        from lightning_influence.demos.datasets import digits_splits

        train, val, _ = digits_splits(0)
        return train, val
    from lightning_influence.demos.datasets import fashion_mnist_splits

    train, val, _ = fashion_mnist_splits(seed=0, max_train_samples=fashion_train or None)
    return train, val


def flip_labels(y: torch.Tensor, seed: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy labels, flipped positions): ``FLIP_SHARE`` of them moved to another class."""
    return flip_uniform(y, FLIP_SHARE, seed, classes)


def trained(
    dataset: str,
    train: TensorDataset,
    val: TensorDataset,
    seed: int,
    epochs: int | None = None,
    fashion_train: int = FASHION_TRAIN,
) -> ImageClassifier:
    """The model trained on the noisy labels (cached); ``epochs`` None: ``EPOCHS[dataset]``;
    ``fashion_train``: the training images ``train`` was cut to (names the cache file)."""
    epochs = epochs or EPOCHS[dataset]
    CACHE.mkdir(parents=True, exist_ok=True)
    size_tag = "" if dataset == "digits" or fashion_train == 10_000 else f"_n{fashion_train}"
    path = CACHE / f"influence_{dataset}{size_tag}_flip{seed}_ep{epochs}.pt"
    size = int(train.tensors[0].shape[-1])
    if path.exists():
        model = ImageClassifier(num_classes=10, image_size=size)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = train_classifier(train, val, epochs=epochs, seed=seed, num_classes=10)
    torch.save(model.state_dict(), path)
    return model.eval()


def rank_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [
                F.cross_entropy(model(x[i : i + 1024]), y[i : i + 1024], reduction="none")
                for i in range(0, len(y), 1024)
            ]
        )


def rank_kronfluence(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """kronfluence's EK-FAC self-influence with its default arguments (CPU)."""
    import copy

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            inputs, labels = batch
            logits = model(inputs)
            if sample:
                with torch.no_grad():
                    p = torch.softmax(logits.detach(), dim=-1)
                    labels = torch.multinomial(p, 1).flatten()
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

    task = Classification()
    net = prepare_model(copy.deepcopy(model).eval(), task)
    out = tempfile.mkdtemp(dir=CACHE)
    try:
        analyzer = Analyzer(
            "mislabel", net, task, cpu=True, disable_tqdm=True, output_dir=out, log_level=40
        )
        data = TensorDataset(x, y)
        analyzer.fit_all_factors(
            "ekfac",
            data,
            per_device_batch_size=256,
            factor_args=FactorArguments(strategy="ekfac"),
            overwrite_output_dir=True,
        )
        analyzer.compute_self_scores(
            "self", "ekfac", data, per_device_train_batch_size=256, overwrite_output_dir=True
        )
        return analyzer.load_self_scores("self")["all_modules"].float()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def kronfluence_status() -> str | None:
    """None when kronfluence imports, else why not."""
    try:
        import kronfluence  # noqa: F401
    except ImportError as err:
        return f"kronfluence is not installed ({err}); pip install -e '.[compare]'"
    return None


def rank(method: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int):
    if method == "li_ekfac":
        return li.self_influence(model, (x, y), batch_size=256)
    if method == "li_ekfac_all":
        return li.self_influence(model, (x, y), batch_size=256, layers="all")
    if method == "li_kfac":
        return li.self_influence(model, (x, y), batch_size=256, curvature="kfac")
    if method == "loss":
        return rank_loss(model, x, y)
    if method == "random":
        return torch.rand(len(y), generator=torch.Generator().manual_seed(seed))
    if method == "kronfluence_ekfac":
        return rank_kronfluence(model, x, y)
    raise ValueError(method)


def rank_aum(
    dataset: str, train: TensorDataset, val: TensorDataset, seed: int, ab_fit: bool = True
) -> tuple[torch.Tensor, dict[str, float]]:
    """-AUM of every training sample, recorded by ``li.MarginCallback`` during a fit with the
    same recipe and seed, and the fit's seconds with and without the recording (``ab_fit``
    False: without the plain fit)."""
    epochs = EPOCHS[dataset]
    plain = math.nan
    if ab_fit:  # a plain fit of the same recipe, for the A/B time difference only
        start = time.perf_counter()
        train_classifier(train, val, epochs=epochs, seed=seed, num_classes=10)
        plain = time.perf_counter() - start
    cb = li.MarginCallback()
    start = time.perf_counter()
    train_classifier(train, val, epochs=epochs, seed=seed, num_classes=10, callbacks=[cb])
    recording = time.perf_counter() - start
    ids, aum = cb.aum()
    scores = torch.full((len(train),), float("-inf"))
    scores[ids] = -aum
    timing = {
        "fit_seconds_plain": None if math.isnan(plain) else plain,
        "fit_seconds_recording": recording,
        "recording_seconds": cb.seconds,
        # the recording's own time (inside its hooks) over the fit's: the A/B difference of
        # two fits on a shared 2-core machine is mostly noise (kept as ab_overhead)
        "recording_overhead": cb.seconds / recording,
        "ab_overhead": None if math.isnan(plain) else recording / plain - 1.0,
    }
    return scores, timing


def run_one(
    dataset: str,
    seed: int,
    methods: list[str],
    fashion_train: int = FASHION_TRAIN,
    ab_fit: bool = True,
) -> list[dict[str, Any]]:
    train, val = splits(dataset, fashion_train)
    x, y = train.tensors
    noisy, flipped = flip_labels(y, seed)
    model = trained(dataset, TensorDataset(x, noisy), val, seed, fashion_train=fashion_train)
    truth = torch.zeros(len(y), dtype=torch.bool)
    truth[flipped] = True
    k = len(flipped)
    rows = []
    for method in methods:
        with PeakRSS() as mem, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            extra: dict[str, float] = {}
            if method == "aum":  # recorded during a fit: its cost is the recording's time
                scores, extra = rank_aum(dataset, TensorDataset(x, noisy), val, seed, ab_fit)
                seconds = extra["recording_seconds"]
            else:
                scores = rank(method, model, x, noisy, seed)
                seconds = time.perf_counter() - start
        hits = int(truth[torch.topk(scores.float(), k).indices].sum())
        rows.append(
            {
                "dataset": dataset,
                "seed": seed,
                "method": method,
                "n_train": len(y),
                "k": k,
                "hits": hits,
                "precision": hits / k,
                "seconds": seconds,
                "peak_extra_rss_bytes": mem.extra_bytes,
                **extra,
            }
        )
        print(
            f"{dataset} seed {seed} {method}: precision {hits / k:.3f} in {seconds:.1f} s",
            flush=True,
        )
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dataset in sorted({r["dataset"] for r in rows}):
        cells = {}
        for method in METHODS:
            mine = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            if not mine:
                continue
            mem = [r["peak_extra_rss_bytes"] for r in mine if r["peak_extra_rss_bytes"] is not None]
            cells[method] = {
                "precision": mean_std([r["precision"] for r in mine]),
                "seconds": mean_std([r["seconds"] for r in mine]),
                "peak_extra_rss_mb": mean_std([m / 2**20 for m in mem]) if mem else None,
            }
        out[dataset] = cells
    for dataset, cells in list(out.items()):
        if "aum" in cells and "loss" in cells:
            out[f"{dataset}_aum_minus_loss_precision"] = (
                cells["aum"]["precision"]["mean"] - cells["loss"]["precision"]["mean"]
            )
    overheads = [r["recording_overhead"] for r in rows if "recording_overhead" in r]
    if overheads:
        out["aum_recording_overhead_max"] = max(overheads)
    digits = out.get("digits", {})
    for method in ("li_ekfac", "li_ekfac_all"):
        if method in digits and "loss" in digits:
            ek, lo = digits[method], digits["loss"]
            out[f"digits_{method}_seconds_max"] = max(
                r["seconds"] for r in rows if r["dataset"] == "digits" and r["method"] == method
            )
            out[f"digits_{method}_minus_loss_precision"] = (
                ek["precision"]["mean"] - lo["precision"]["mean"]
            )
    return out


def levers() -> dict[str, Any] | None:
    """The lever study (validation flip seeds) in short: its command, seeds and the table."""
    out = {}
    for name in LEVER_FILES:
        path = RESULTS / name
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        for dataset, table in d["table"].items():
            out[dataset] = {
                "command": d["command"],
                "validation_seeds": d["validation_seeds"],
                "note": d["note"],
                "table": table,
            }
    return out or None


def plot(result: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    datasets = [d for d in ("digits", "fashion") if d in result["summary"]]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        cells = result["summary"][dataset]
        names = [m for m in METHODS if m in cells]
        means = [cells[m]["precision"]["mean"] for m in names]
        stds = [cells[m]["precision"]["std"] for m in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel("top-k precision (k = flipped)")
        ax.set_title(f"{dataset}: {FLIP_SHARE:.0%} labels flipped")
    fig.tight_layout()
    fig.savefig(RESULTS / "influence.png", dpi=120)


def run_suite(suite: str = "small") -> None:
    """``python -m benchmarks run --only influence``: one result file, the full command
    whatever the suite."""
    main([])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["digits", "fashion"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--fashion-train",
        type=int,
        default=FASHION_TRAIN,
        help="Fashion-MNIST training images (stratified subset; 0: all 54,000)",
    )
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument(
        "--no-ab-fit",
        action="store_true",
        help="skip the plain fit that times the AUM recording A/B",
    )
    p.add_argument("--out", default="influence.json")
    argv = sys.argv[1:] if argv is None else argv
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    skipped = {}
    methods = list(a.methods)
    why = kronfluence_status() if "kronfluence_ekfac" in methods else None
    if why:
        methods.remove("kronfluence_ekfac")
        skipped["kronfluence_ekfac"] = why
    start = time.perf_counter()
    rows = []
    for dataset in a.datasets:
        try:
            splits(dataset, a.fashion_train)
        except (FileNotFoundError, ValueError) as err:
            skipped[dataset] = f"not available: {err}"
            continue
        for seed in a.seeds:
            rows += run_one(dataset, seed, methods, a.fashion_train, not a.no_ab_fit)
    result = {
        "command": " ".join(["python -m benchmarks.influence", *argv]),
        "machine": machine(),
        "wall_seconds": time.perf_counter() - start,
        "config": {
            "flip_share": FLIP_SHARE,
            "fashion_train_subset": a.fashion_train,
            "epochs": EPOCHS,
            "seeds": a.seeds,
            "validation_seeds": "settings (the default layers='last', any default) are "
            "chosen on the disjoint flip seeds of the lever study ('levers'), never on these",
            "threads": a.threads,
            "memory": "peak resident memory above the level before the ranking (VmHWM)",
            "exact": "not run: 21,578 parameters, one MINRES solve per training sample",
        },
        "skipped": skipped,
        "summary": summarize(rows),
        "levers": levers(),
        "rows": rows,
    }
    print(f"wrote {write_json(a.out, result)}")
    if a.out == "influence.json":
        plot(result)


# ----------------------------------------------------------------------------- docs/benchmarks.md


GOALS = [
    Goal(
        "influence.json",
        ("summary", "digits_li_ekfac_minus_loss_precision"),
        ">=",
        0.0,
        "digits, 5 % flipped: li.self_influence top-k precision − the loss ranking's",
    ),
    Goal(
        "influence.json",
        ("summary", "digits_li_ekfac_seconds_max"),
        "<=",
        60,
        "digits, 5 % flipped: li.self_influence seconds (slowest seed)",
    ),
    Goal(
        "influence.json",
        ("summary", "digits_aum_minus_loss_precision"),
        ">=",
        0.05,
        "digits, 5 % flipped: AUM (li.MarginCallback) top-k precision − the loss ranking's",
    ),
    Goal(
        "influence.json",
        ("summary", "fashion_aum_minus_loss_precision"),
        ">=",
        0.05,
        "Fashion-MNIST 10k, 5 % flipped: AUM top-k precision − the loss ranking's",
    ),
    Goal(
        "influence.json",
        ("summary", "aum_recording_overhead_max"),
        "<=",
        0.10,
        "AUM recording: time in its hooks / the fit's time (worst run)",
    ),
]


_INFLUENCE_METHODS = {
    "aum": "area under the margin (`li.MarginCallback`, recorded during fit)",
    "li_ekfac": '`li.self_influence` (EK-FAC, defaults: `layers="last"`)',
    "li_ekfac_all": '`li.self_influence(layers="all")` (EK-FAC, every layer)',
    "li_kfac": '`li.self_influence(curvature="kfac")`',
    "loss": "training loss",
    "random": "random",
    "kronfluence_ekfac": "kronfluence EK-FAC self-influence",
}


_LEVER_ROWS = [
    ("training loss (reference)", "loss"),
    ("flipped samples the model fits (memorised share)", "memorised_flipped_share"),
    (
        'sampled Fisher, budget 1024, α 0.1, all layers (`layers="all"`)',
        "sampled|1024|0.1|all|self",
    ),
    ("α 1 (more damping)", "sampled|1024|1|all|self"),
    ("α 0.01", "sampled|1024|0.01|all|self"),
    ("α 1e-4 (almost undamped)", "sampled|1024|0.0001|all|self"),
    ("one λ for all layers (α 0.1 × mean of all eigenvalues)", "sampled|1024|0.1g|all|self"),
    ("expected Fisher", "expected|1024|0.1|all|self"),
    ("empirical Fisher (the data's labels)", "empirical|1024|0.1|all|self"),
    ("curvature on the whole training set", "sampled|all|0.1|all|self"),
    ("conv layers only", "sampled|1024|0.1|conv|self"),
    ("fc1 + fc2", "sampled|1024|0.1|fc|self"),
    ('**last layer (fc2): the default, `layers="last"`**', "sampled|1024|0.1|fc2|self"),
    ("last layer, empirical Fisher", "empirical|1024|0.1|fc2|self"),
    ("last layer, α 1e-4", "sampled|1024|0.0001|fc2|self"),
    ("RelatIF gᵀH⁻¹g / ‖H⁻¹g‖, all layers", "sampled|1024|0.1|all|relatif"),
    ("gᵀH⁻¹g / ‖g‖², all layers", "sampled|1024|0.1|all|cosine"),
]


def _lever_key(short: str) -> str:
    if short in ("loss", "memorised_flipped_share"):
        return short
    fisher, budget, alpha, layers, variant = short.split("|")
    return f"fisher={fisher} budget={budget} alpha={alpha} layers={layers} {variant}"


def _levers_table(levers: dict | None) -> list[str]:
    """Setting -> top-k precision on the validation flip seeds (benchmarks/influence_levers.py)."""
    if not levers:
        return []
    datasets = list(levers)
    out = ["", "### Levers, on validation flip seeds", ""]
    for dataset, lv in levers.items():
        out.append(
            f"{dataset}: `{lv['command']}`, flip seeds {lv['validation_seeds']} ({lv['note']})."
        )
    out += [
        "",
        "α: λ_l = α × the layer's mean eigenvalue. Mean ± std of the top-k precision over the "
        "validation seeds; the full grid (every Fisher × budget × α × layer set × score) is "
        "in `benchmarks/results/influence_levers_*.json`.",
        "",
        "| setting | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for label, short in _LEVER_ROWS:
        key = _lever_key(short)
        cells = [levers[ds]["table"].get(key) for ds in datasets]
        if all(c is None for c in cells):
            continue
        out.append(f"| {label} | " + " | ".join(md.ms(c) if c else "–" for c in cells) + " |")
    return out


def influence_section(d: dict | None) -> list[str]:
    """Mislabel detection by self-influence (benchmarks/influence.py)."""
    title = "## Mislabel detection (influence scores)"
    if not d:
        return [title, "", "Not run yet: `python -m benchmarks.influence`.", ""]
    c = d["config"]
    out = [
        title,
        "",
        f"`{d['command']}` ({d['wall_seconds']:.0f} s, {c['threads']} thread; also "
        "`python -m benchmarks run --only influence`). "
        f"{c['flip_share']:.0%} of the training labels flipped to another class, seeds "
        f"{c['seeds']}; a SmallCNN trained on the noisy labels by the demo recipe (epochs: "
        + ", ".join(f"{k} {v}" for k, v in c["epochs"].items())
        + f"); Fashion-MNIST uses a stratified {c['fashion_train_subset']:,}-image "
        "training subset. Precision of the top k, k = the number flipped (mean ± std over "
        "seeds). Seconds: the ranking alone. Memory: "
        f"{c['memory']}. The exact curvature is {c['exact']}.",
        "",
        "| dataset | method | top-k precision | seconds | peak extra RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for dataset, cells in d["summary"].items():
        if not isinstance(cells, dict):
            continue
        for method, cell in cells.items():
            mem = cell["peak_extra_rss_mb"]
            out.append(
                f"| {dataset} | {_INFLUENCE_METHODS.get(method, method)} | "
                f"{md.ms(cell['precision'])} | {md.ms(cell['seconds'], 1)} | "
                f"{md.ms(mem, 0) if mem else '–'} |"
            )
    s = d["summary"]
    for method in ("li_ekfac", "li_ekfac_all"):
        if f"digits_{method}_minus_loss_precision" not in s:
            continue
        gap, secs = s[f"digits_{method}_minus_loss_precision"], s[f"digits_{method}_seconds_max"]
        out += [
            "",
            f"Goals on digits, {_INFLUENCE_METHODS[method]}: under a minute: slowest run "
            f"{secs:.1f} s ({'met' if secs < 60 else '**missed**'}); precision at least the "
            f"loss ranking's: {gap:+.3f} ({'met' if gap >= 0 else '**missed**'}).",
        ]
    if "digits_li_ekfac_all_minus_loss_precision" in s:
        out += [
            "",
            'Settings: the default `layers="last"` was chosen on the validation flip seeds '
            "below (disjoint from the reported ones), where the output layer alone beat every "
            "layer on both datasets; `influence_scores` has the same default, so self-influence "
            "stays the diagonal of the scores (the study measured mislabel detection only, not "
            "query attribution). Damping, Fisher and the curvature's "
            "budget move the precision by at most a few hundredths. On Fashion-MNIST the loss "
            "ranking stays ahead of every self-influence setting: the 8-epoch model fits "
            "almost none of the flipped labels (memorised share in the table), so they are "
            "simply its high-loss samples. See docs/scores.md.",
        ]
    out += _levers_table(d.get("levers"))
    for what, why in d.get("skipped", {}).items():
        out.append(f"Skipped {what}: {why}.")
    out += _full_fashion_detection(md.load("influence_fashion_full.json"))
    return out + ["", "![influence](../benchmarks/results/influence.png)", ""]


def _full_fashion_detection(d: dict | None) -> list[str]:
    """The same ranking on the whole Fashion-MNIST training split (issue 26's setting)."""
    cells = (d or {}).get("summary", {}).get("fashion")
    if not cells:
        return []
    out = [
        "",
        f"The whole Fashion-MNIST training split (54,000 images; `{d['command']}`, "
        f"{d['wall_seconds']:.0f} s; seeds {d['config']['seeds']}):",
        "",
        "| method | top-k precision | seconds |",
        "|---|---|---|",
    ]
    for method, cell in cells.items():
        out.append(
            f"| {_INFLUENCE_METHODS.get(method, method)} | {md.ms(cell['precision'])} | "
            f"{md.ms(cell['seconds'], 1)} |"
        )
    if "aum" in cells and "loss" in cells:
        gap = cells["aum"]["precision"]["mean"] - cells["loss"]["precision"]["mean"]
        out += [
            "",
            f"The margin ranking minus the loss ranking: {gap:+.3f} (issue 26 asks +0.05 of "
            "the default find; the 10,000-image subset above gives "
            f"{cells_gap(md.load('influence.json'))}).",
        ]
    return out


def cells_gap(d: dict | None) -> str:
    value = ((d or {}).get("summary") or {}).get("fashion_aum_minus_loss_precision")
    return "–" if value is None else f"{value:+.3f}"


def render() -> list[str]:
    """This study's part of docs/benchmarks.md."""
    return influence_section(md.load("influence.json"))


if __name__ == "__main__":
    main()
