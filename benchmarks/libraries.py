"""What a well-kept library already does, measured against this package's own code.

For each hand-written piece that a library of the field also offers, the same numbers are
computed both ways on the same model and data, side by side in one run:

- ``hessian``, ``ggn``: mat-vecs of this package's ``HessianOperator`` /
  ``GaussNewtonOperator`` against curvlinops' ``HessianLinearOperator`` /
  ``GGNLinearOperator`` (relative difference, seconds per mat-vec);
- ``ekfac``: this package's EK-FAC (expected Fisher, every layer) against curvlinops'
  ``EKFACLinearOperator`` (type-2 Fisher) as dense matrices on a small MLP (relative
  difference of the matrices, of each to the exact Gauss–Newton matrix) and the seconds to
  fit both on a CNN (the expected Fisher, and one sampled label per row: the scores'
  default);
- ``idx``: the demo's IDX reader (``demos.datasets.read_idx``, reads the gzipped files the
  Debian package ships) against torchvision's ``read_sn3_pascalvincent_tensor`` (which reads
  uncompressed files only, so the file is decompressed first).

curvlinops is not a dependency: install it beside the project to run this
(``pip install --target /tmp/clpkg --no-deps curvlinops-for-pytorch backpack-for-pytorch
einops einconv linear_operator opt-einsum jaxtyping wadler_lindig`` and ``PYTHONPATH=
/tmp/clpkg``). Writes ``benchmarks/results/libraries.json``.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import lightning_influence as li
from benchmarks.common import machine, write_json
from lightning_influence.demos.datasets import FASHION_MNIST_DEBIAN_DIR, digits_splits, read_idx
from lightning_influence.solve.curvature import dense_gauss_newton, trainable_params
from lightning_influence.solve.ekfac import fisher_rows, fit_ekfac

RESULT = "libraries.json"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 10)).eval()


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 64, 64), nn.ReLU(), nn.Linear(64, 10),
    ).eval()  # fmt: skip


def _digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    train, _, _ = digits_splits(seed=0)
    x, y = train.tensors
    return x[:n], y[:n]


def _timed(fn, repeats: int) -> tuple[Any, float]:
    """The result of the last call and the median seconds per call."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def _batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def compare_matvecs(
    kind: str, name: str, model: nn.Module, n: int, size: int, repeats: int
) -> dict:
    """This package's curvature mat-vec against curvlinops' on the same data."""
    import curvlinops

    x, y = _digits(n)
    data = _batches(x, y, size)
    params = [p for p in model.parameters() if p.requires_grad]
    ours_class = li.HessianOperator if kind == "hessian" else li.GaussNewtonOperator
    theirs_class = (
        curvlinops.HessianLinearOperator if kind == "hessian" else curvlinops.GGNLinearOperator
    )
    ours = ours_class(model, None, [li.Batch(a, b) for a, b in data])
    theirs = theirs_class(model, nn.CrossEntropyLoss(), params, data, check_deterministic=False)
    gen = torch.Generator().manual_seed(0)
    vs = [torch.randn(sum(p.numel() for p in params), generator=gen) for _ in range(3)]
    rel = []
    for v in vs:
        vd = li_unflatten(v, model)
        a = torch.cat([t.reshape(-1) for t in (ours @ vd).values()]).double()
        b = (theirs @ v).reshape(-1).double()
        rel.append(float((a - b).norm() / b.norm()))
    vd = li_unflatten(vs[0], model)
    _, t_ours = _timed(lambda: ours @ vd, repeats)
    _, t_theirs = _timed(lambda: theirs @ vs[0], repeats)
    return {
        "kind": kind,
        "model": name,
        "params": len(vs[0]),
        "samples": n,
        "max_relative_difference": max(rel),
        "ours_seconds_per_matvec": t_ours,
        "curvlinops_seconds_per_matvec": t_theirs,
        "ours_over_curvlinops": t_ours / t_theirs,
    }


def li_unflatten(v: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor]:
    from lightning_influence.solve import vectors as V

    return V.unflatten(v, trainable_params(model))


def compare_ekfac(n: int, size: int, fit_repeats: int) -> dict:
    """Both EK-FACs as dense matrices on a small MLP, and their fit seconds on a CNN."""
    import curvlinops

    model = _mlp(0).double()  # dense float64 matrices
    x, y = _digits(n)
    data = _batches(x.double(), y, size)
    params = [p for p in model.parameters() if p.requires_grad]
    P = sum(p.numel() for p in params)
    batches = [li.Batch(a, b) for a, b in data]
    ours = fit_ekfac(model, None, fisher_rows(model, batches, "expected"), correct=True)
    eye = torch.eye(P, dtype=torch.float64)
    ours_dense = ours.to_matrix(trainable_params(model)).double()
    theirs = curvlinops.EKFACLinearOperator(
        model, nn.CrossEntropyLoss(), params, data, fisher_type="type-2",
        separate_weight_and_bias=False, check_deterministic=False,
    )  # fmt: skip
    theirs_dense = (theirs @ eye).double()
    ggn = dense_gauss_newton(model, None, batches, trainable_params(model)).double()

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    cnn = _cnn(0)
    cx, cy = _digits(1024)
    cdata = _batches(cx, cy, 128)
    cbatches = [li.Batch(a, b) for a, b in cdata]
    cparams = [p for p in cnn.parameters() if p.requires_grad]
    v = torch.randn(sum(p.numel() for p in cparams))

    def fit_ours(fisher):
        return fit_ekfac(cnn, None, fisher_rows(cnn, cbatches, fisher), correct=True)

    def fit_theirs(fisher_type):
        op = curvlinops.EKFACLinearOperator(
            cnn, nn.CrossEntropyLoss(), cparams, cdata, fisher_type=fisher_type,
            separate_weight_and_bias=False, check_deterministic=False,
        )  # fmt: skip
        return op @ v  # factors are computed on the first product

    _, t_ours = _timed(lambda: fit_ours("expected"), fit_repeats)
    _, t_theirs = _timed(lambda: fit_theirs("type-2"), fit_repeats)
    _, t_ours_mc = _timed(lambda: fit_ours("sampled"), fit_repeats)
    _, t_theirs_mc = _timed(lambda: fit_theirs("mc"), fit_repeats)
    return {
        "mlp_params": P,
        "samples": n,
        "relative_difference_ours_vs_curvlinops": rel(ours_dense, theirs_dense),
        "ours_vs_exact_ggn": rel(ours_dense, ggn),
        "curvlinops_vs_exact_ggn": rel(theirs_dense, ggn),
        "cnn_params": int(v.numel()),
        "cnn_samples": 1024,
        "ours_fit_seconds": t_ours,
        "curvlinops_fit_seconds": t_theirs,
        "ours_over_curvlinops": t_ours / t_theirs,
        "sampled_ours_fit_seconds": t_ours_mc,
        "sampled_curvlinops_fit_seconds": t_theirs_mc,
        "sampled_ours_over_curvlinops": t_ours_mc / t_theirs_mc,
    }


def compare_idx(repeats: int) -> dict:
    """The demo's gzipped-IDX reader against decompress-then-torchvision, same arrays."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    path = FASHION_MNIST_DEBIAN_DIR / "train-images-idx3-ubyte.gz"
    if not path.exists():
        return {"skipped": f"{path} not installed (apt-get install dataset-fashion-mnist)"}
    ours, t_ours = _timed(lambda: read_idx(path), repeats)
    tmp = Path(tempfile.mkdtemp())

    def theirs_read():
        raw = tmp / "train-images-idx3-ubyte"
        with gzip.open(path, "rb") as src, open(raw, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return read_sn3_pascalvincent_tensor(str(raw))

    theirs, t_theirs = _timed(theirs_read, repeats)
    shutil.rmtree(tmp)
    direct_gz = None
    try:
        read_sn3_pascalvincent_tensor(str(path))
    except Exception as e:  # noqa: BLE001 - what torchvision does with the shipped file
        direct_gz = f"{type(e).__name__}: {e}"[:120]
    return {
        "file": path.name,
        "equal": bool(np.array_equal(ours, theirs.numpy())),
        "ours_seconds": t_ours,
        "torchvision_seconds_with_decompression": t_theirs,
        "torchvision_on_the_gz_file": direct_gz or "read it",
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    out: dict[str, Any] = {
        "benchmark": "libraries",
        "machine": machine(),
        "versions": {
            d: _version(d)
            for d in ("curvlinops-for-pytorch", "backpack-for-pytorch", "torchvision", "torch")
        },
        "commands": [f"python -m benchmarks.libraries --repeats {args.repeats}"],
    }
    try:
        import curvlinops  # noqa: F401
    except ImportError as e:
        out["curvlinops"] = {"skipped": f"not importable ({e}); see the module doc"}
    else:
        out["curvlinops"] = {
            "matvecs": [
                compare_matvecs(kind, name, make(0), 512, 128, args.repeats)
                for kind in ("hessian", "ggn")
                for name, make in (("mlp", _mlp), ("cnn", _cnn))
            ],
            "ekfac": compare_ekfac(512, 128, max(2, args.repeats // 2)),
        }
    out["idx"] = compare_idx(args.repeats)
    write_json(RESULT, out)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=1, default=str))
