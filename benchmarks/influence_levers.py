"""Which settings of ``li.self_influence`` find flipped labels: a lever study on validation seeds.

``python -m benchmarks.influence_levers [--datasets digits fashion] [--seeds 100 101 102]``

The flip seeds here (default 100, 101, 102) are disjoint from the reported seeds of
``benchmarks.influence`` (0, 1, 2): a setting (and any default of ``li.ScoreArguments``) is
chosen on these and only then measured on the reported ones. Same data, flip share, model
and training recipe as ``benchmarks.influence``.

For each (Fisher, curvature budget) EK-FAC is fitted once, every training sample's gradient
is rotated once into each layer's eigenbasis (r = Q_Sᵀ G Q_A), and the scores of every damping
factor α (λ_l = α × the layer's mean eigenvalue; α = 0.1 is the default), layer subset and
score variant are read off r:

- ``self``: Σ r² / (Λ + λ), the self-influence gᵀ(H + λI)⁻¹g;
- ``relatif``: gᵀ(H + λI)⁻¹g / ‖(H + λI)⁻¹g‖ (RelatIF, Barshan et al. 2020, for a sample
  against itself);
- ``cosine``: gᵀ(H + λI)⁻¹g / ‖g‖² (the self-influence per unit gradient norm).

Also recorded per seed: the training loss ranking's precision and the share of flipped
samples the model predicts with their (wrong) training label (how much it memorised).
Results go to benchmarks/results/influence_levers.json; ``benchmarks.influence`` copies
them into influence.json under ``levers``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from torch.utils.data import TensorDataset

from benchmarks.common import mean_std, write_json
from benchmarks.influence import flip_labels, rank_loss, splits, trained
from lightning_influence.attribution.scores import ScoreArguments, hessian_subset
from lightning_influence.data._modules import eval_mode
from lightning_influence.data.batches import Batch
from lightning_influence.solve.curvature import default_loss
from lightning_influence.solve.ekfac import fisher_rows, fit_ekfac
from lightning_influence.solve.gradients import per_sample_gradients

ALPHAS = (1.0, 0.1, 0.01, 1e-3, 1e-4)
FISHERS = ("sampled", "expected", "empirical")
BUDGETS = (1024, None)  # None: the whole training set
VARIANTS = ("self", "relatif", "cosine")
LAYERS = {"all": None, "fc": ("fc1", "fc2"), "fc2": ("fc2",), "conv": ("conv1", "conv2")}


def _layer_sets(blocks: list[str]) -> dict[str, list[str]]:
    out = {}
    for name, keep in LAYERS.items():
        chosen = [b for b in blocks if keep is None or b.rsplit(".", 1)[-1] in keep]
        if chosen:
            out[name] = chosen
    return out


def lever_scores(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, fisher: str, budget: int | None
) -> dict[str, torch.Tensor]:
    """Scores by ``"alpha|layers|variant"`` for one fitted EK-FAC."""
    n = len(y)
    args = ScoreArguments(fisher=fisher, budget=budget or n, pool_size=max(8192, n), batch_size=256)
    with eval_mode(model):
        hessian = hessian_subset(model, (x, y), args)
        rows = fisher_rows(model, hessian, fisher, args.seed, args.batch_size)
        op = fit_ekfac(model, default_loss, rows, correct=True)
        names = op.params
        eig = [b.eigenvalues.flatten() for b in op.blocks.values()]
        global_mean = float(torch.cat(eig).mean())
        parts: dict[str, list[torch.Tensor]] = {}
        for i in range(0, n, 256):
            g = per_sample_gradients(
                model, default_loss, Batch(x[i : i + 256], y[i : i + 256]), names
            )
            per_layer = {}
            for lname, block in op.blocks.items():
                r2 = block.rotate(g) ** 2
                lam_mean = float(block.eigenvalues.mean())
                per_layer[lname] = {"g2": r2.sum(dim=(1, 2))}
                for a in ALPHAS:
                    for scope, lam in (("layer", a * lam_mean), ("global", a * global_mean)):
                        d = block.eigenvalues + lam
                        per_layer[lname][a, scope] = (
                            (r2 / d).sum(dim=(1, 2)),
                            (r2 / d**2).sum(dim=(1, 2)),
                        )
            for lset, chosen in _layer_sets(list(op.blocks)).items():
                g2 = sum(per_layer[b]["g2"] for b in chosen)
                for a in ALPHAS:
                    for scope in ("layer", "global"):
                        q = sum(per_layer[b][a, scope][0] for b in chosen)
                        m2 = sum(per_layer[b][a, scope][1] for b in chosen)
                        for variant, s in (
                            ("self", q),
                            ("relatif", q / m2.sqrt()),
                            ("cosine", q / g2),
                        ):
                            key = f"{a:g}{'' if scope == 'layer' else 'g'}|{lset}|{variant}"
                            parts.setdefault(key, []).append(s)
    return {k: torch.cat(v) for k, v in parts.items()}


def precision(scores: torch.Tensor, truth: torch.Tensor) -> float:
    k = int(truth.sum())
    return float(truth[torch.topk(scores.float(), k).indices].sum()) / k


def run(
    datasets: list[str],
    seeds: list[int],
    fishers: tuple[str, ...] = FISHERS,
    budgets: tuple[int | None, ...] = BUDGETS,
    epochs: int | None = None,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for dataset in datasets:
        train, val = splits(dataset)
        x, y = train.tensors
        for seed in seeds:
            noisy, flipped = flip_labels(y, seed)
            model = trained(dataset, TensorDataset(x, noisy), val, seed, epochs)
            truth = torch.zeros(len(y), dtype=torch.bool)
            truth[flipped] = True
            with torch.no_grad():
                pred = torch.cat([model(x[i : i + 1024]).argmax(1) for i in range(0, len(y), 1024)])
            memorised = float((pred[flipped] == noisy[flipped]).float().mean())
            base = {"dataset": dataset, "seed": seed}
            rows.append(
                {
                    **base,
                    "setting": "loss",
                    "precision": precision(rank_loss(model, x, noisy), truth),
                }
            )
            rows.append({**base, "setting": "memorised_flipped_share", "precision": memorised})
            for fisher in fishers:
                for budget in budgets:
                    t0 = time.perf_counter()
                    scores = lever_scores(model, x, noisy, fisher, budget)
                    for key, s in scores.items():
                        alpha, layers, variant = key.split("|")
                        setting = f"fisher={fisher} budget={budget or 'all'} alpha={alpha} layers={layers} {variant}"
                        rows.append({**base, "setting": setting, "precision": precision(s, truth)})
                    print(
                        f"{dataset} seed {seed} {fisher} budget {budget or 'all'}: "
                        f"{time.perf_counter() - t0:.1f} s, default "
                        f"{precision(scores['0.1|all|self'], truth):.3f}",
                        flush=True,
                    )
    table: dict[str, dict[str, Any]] = {}
    for dataset in datasets:
        settings = dict.fromkeys(r["setting"] for r in rows if r["dataset"] == dataset)
        table[dataset] = {
            s: mean_std(
                [r["precision"] for r in rows if r["dataset"] == dataset and r["setting"] == s]
            )
            for s in settings
        }
    return {
        "command": "python -m benchmarks.influence_levers " + " ".join(sys.argv[1:]),
        "validation_seeds": seeds,
        "epochs": epochs or "benchmarks.influence.EPOCHS",
        "note": "flip seeds disjoint from the reported seeds; settings are chosen here only",
        "wall_seconds": time.perf_counter() - start,
        "table": table,
        "rows": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["digits", "fashion"])
    p.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102])
    p.add_argument("--fishers", nargs="+", default=list(FISHERS))
    p.add_argument("--budgets", nargs="+", default=["1024", "all"], help="ints or 'all'")
    p.add_argument(
        "--epochs", type=int, default=None, help="training epochs (None: the benchmark's)"
    )
    p.add_argument("--out", default="influence_levers.json")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    budgets = tuple(None if b == "all" else int(b) for b in a.budgets)
    result = run(a.datasets, a.seeds, tuple(a.fishers), budgets, a.epochs)
    print(f"wrote {write_json(a.out, result)}")
    for dataset, cells in result["table"].items():
        best = sorted(cells.items(), key=lambda kv: -kv[1]["mean"])[:15]
        print(dataset, "loss", cells["loss"], "memorised", cells["memorised_flipped_share"])
        for s, c in best:
            print(f"  {c['mean']:.3f} ± {c['std']:.3f}  {s}")


if __name__ == "__main__":
    main()
