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
from benchmarks.common import CACHE, RESULTS, machine, mean_std, write_json
from benchmarks.unlearning import PeakRSS
from lightning_influence.demos.corruptions import flip_uniform
from lightning_influence.demos.models import ImageClassifier, train_classifier

FLIP_SHARE = 0.05
FASHION_TRAIN = 10_000  # 0: the whole training split (--fashion-train 0)
#: whether the AUM row also times a plain fit for the A/B overhead (--no-ab-fit: not)
AB_FIT = True
EPOCHS = {"digits": 15, "fashion": 8}
METHODS = ("aum", "li_ekfac", "li_ekfac_all", "li_kfac", "loss", "random", "kronfluence_ekfac")
#: The lever study's outputs (validation flip seeds), copied into influence.json.
LEVER_FILES = ("influence_levers_digits.json", "influence_levers_fashion.json")


def splits(dataset: str) -> tuple[TensorDataset, TensorDataset]:
    """(train, val) of the dataset (Fashion-MNIST: a 10,000-image training subset)."""
    if dataset == "digits":
        from lightning_influence.demos.datasets import digits_splits

        train, val, _ = digits_splits(0)
        return train, val
    from lightning_influence.demos.datasets import fashion_mnist_splits

    train, val, _ = fashion_mnist_splits(seed=0, max_train_samples=FASHION_TRAIN or None)
    return train, val


def flip_labels(y: torch.Tensor, seed: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy labels, flipped positions): ``FLIP_SHARE`` of them moved to another class."""
    return flip_uniform(y, FLIP_SHARE, seed, classes)


def trained(
    dataset: str, train: TensorDataset, val: TensorDataset, seed: int, epochs: int | None = None
) -> ImageClassifier:
    """The model trained on the noisy labels (cached); ``epochs`` None: ``EPOCHS[dataset]``."""
    epochs = epochs or EPOCHS[dataset]
    CACHE.mkdir(parents=True, exist_ok=True)
    size_tag = "" if dataset == "digits" or FASHION_TRAIN == 10_000 else f"_n{FASHION_TRAIN}"
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
    dataset: str, train: TensorDataset, val: TensorDataset, seed: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """-AUM of every training sample, recorded by ``li.MarginCallback`` during a fit with the
    same recipe and seed, and the fit's seconds with and without the recording."""
    epochs = EPOCHS[dataset]
    plain = math.nan
    if AB_FIT:  # a plain fit of the same recipe, for the A/B time difference only
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


def run_one(dataset: str, seed: int, methods: list[str]) -> list[dict[str, Any]]:
    train, val = splits(dataset)
    x, y = train.tensors
    noisy, flipped = flip_labels(y, seed)
    model = trained(dataset, TensorDataset(x, noisy), val, seed)
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
                scores, extra = rank_aum(dataset, TensorDataset(x, noisy), val, seed)
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


def main(argv: list[str] | None = None) -> None:
    global FASHION_TRAIN, AB_FIT
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
    FASHION_TRAIN, AB_FIT = a.fashion_train, not a.no_ab_fit
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
            splits(dataset)
        except (FileNotFoundError, ValueError) as err:
            skipped[dataset] = f"not available: {err}"
            continue
        for seed in a.seeds:
            rows += run_one(dataset, seed, methods)
    result = {
        "command": " ".join(["python -m benchmarks.influence", *argv]),
        "machine": machine(),
        "wall_seconds": time.perf_counter() - start,
        "config": {
            "flip_share": FLIP_SHARE,
            "fashion_train_subset": FASHION_TRAIN,
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


if __name__ == "__main__":
    main()
