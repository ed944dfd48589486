"""``python -m benchmarks run --suite small|full|gpu [--only a,b]`` then regenerate docs/benchmarks.md.

Studies: solvers (Krylov vs LiSSA), samplers (random/feature/logit), unlearning (GIF vs
baselines), selection (ratio × selector), and, only when named in ``--only``, influence
(mislabel detection by self-influence, :mod:`benchmarks.influence`: the same command for every
suite, digits and Fashion-MNIST, flip seeds 0 1 2, about 8 min on one thread). ``--suite gpu``
runs the GPU study alone
(:mod:`benchmarks.gpu`: VGG11 and ResNet-18 class removal vs retraining, on CUDA when present). ``python -m benchmarks report`` only rebuilds the
page from the JSON files under benchmarks/results.
"""

from __future__ import annotations

import argparse
import importlib
import time

#: ``run --only`` names: (module under benchmarks/, its function taking the suite's name)
RUNNERS = {
    "solvers": ("solvers", "run_suite"),
    "samplers": ("samplers", "run"),
    "unlearning": ("unlearning", "run_suite"),
    "selection": ("selection_study", "run"),
    "influence": ("influence", "run_suite"),
}
STUDIES = tuple(RUNNERS)
#: What ``run`` does without ``--only`` (influence is opt-in: ``--only influence``).
DEFAULT_STUDIES = ("solvers", "samplers", "unlearning", "selection")


def run_study(name: str, suite: str) -> None:
    if name not in RUNNERS:
        raise ValueError(f"Unknown study {name!r}: choose from {STUDIES}.")
    module, function = RUNNERS[name]
    getattr(importlib.import_module(f"benchmarks.{module}"), function)(suite)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run studies, then rebuild docs/benchmarks.md")
    r.add_argument("--suite", choices=["small", "full", "gpu"], default="small")
    r.add_argument(
        "--only",
        default=",".join(DEFAULT_STUDIES),
        help=f"comma-separated subset of {STUDIES} (default: {','.join(DEFAULT_STUDIES)})",
    )
    sub.add_parser("report", help="rebuild docs/benchmarks.md from benchmarks/results/*.json")
    a = p.parse_args()
    if a.cmd == "run" and a.suite == "gpu":
        from benchmarks import gpu

        gpu.main([])
    elif a.cmd == "run":
        for name in [s.strip() for s in a.only.split(",") if s.strip()]:
            start = time.perf_counter()
            print(f"== {name} ({a.suite}) ==", flush=True)
            run_study(name, a.suite)
            print(f"== {name}: {time.perf_counter() - start:.0f} s ==", flush=True)
    from benchmarks import report

    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
