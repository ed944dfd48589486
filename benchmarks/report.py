"""Build docs/benchmarks.md from benchmarks/results/*.json (every number comes from a JSON).

Each study module renders its own section (``render()``) and names its goals (``GOALS``, rows
of :class:`benchmarks.markdown.Goal`); this module puts the page together in ``PAGE`` order.
A new study adds its module to ``PAGE``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import markdown as md

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

#: the study modules whose sections make up the page, in order
PAGE = (
    "solvers",
    "samplers",
    "unlearning",
    "fashion",
    "fashion_levers",
    "samplers_fashion",
    "selection_study",
    "faithfulness",
    "memorised",
    "calibration",
    "corrections",
    "scaling",
    "resnet",
    "gpu",
    "influence",
    "find_fix",
)


def studies() -> list[ModuleType]:
    """The modules of ``PAGE``."""
    return [importlib.import_module(f"benchmarks.{name}") for name in PAGE]


def goals() -> list[md.Goal]:
    """Every study's goals, in page order."""
    return [g for m in studies() for g in getattr(m, "GOALS", [])]


def goals_section() -> list[str]:
    out = [
        "## Goals: met or missed",
        "",
        "| measure | key | measured | goal | met |",
        "|---|---|---|---|---|",
    ]
    for g in goals():
        d = md.load(g.file)
        value, where = md.dig(d, g.keys), f"`{g.file}` → `{'.'.join(g.keys)}`"
        if value is None:
            out.append(f"| {g.what} | {where} | not measured | {g.op} {g.bound} | – |")
            continue
        verdict = ("yes" if g.met(value) else "**no**") + md.partial(d)
        shown = value if isinstance(value, int) else f"{value:.4g}"
        out.append(f"| {g.what} | {where} | {shown} | {g.op} {g.bound} | {verdict} |")
    return out + [""]


def papers_section(data: dict[str, dict | None]) -> list[str]:
    u, s = data.get("unlearning.json"), data.get("samplers.json")
    out = ["## Against the papers' claims", ""]
    if u:
        cells = {c["method"]: c for c in u["cells"] if c["dataset"] == "digits"}
        gif, ret, iff = (
            cells.get("gif (default)"),
            cells.get("retrain"),
            cells.get("if (all parameters)"),
        )
        if gif and ret and iff:
            out.append(
                f"- GIF paper (VGG11/CIFAR-10): GIF 5 % F1 0.952 vs retrain 0.957, all-parameter IF 0.880. Here (digits CNN): "
                f"GIF (default callback) {gif['test_f1']['mean']:.3f}, retrain {ret['test_f1']['mean']:.3f}, "
                f"IF over all parameters {iff['test_f1']['mean']:.3f}. Our step is picked on validation data, the paper's on test data."
            )
    if s:
        sm = s["summary"]

        def fmt(v: Any) -> str:
            return "not reached" if v is None else f"{v:.3g}"

        out.append(
            f"- Advanced-sampling paper: −30.1 % time and −42.2 % memory at equal F1, or +2.5 % F1 at equal budget. Here: "
            f"time ratio {fmt(sm.get('time_ratio_at_equal_f1'))}, memory ratio {fmt(sm.get('memory_ratio_at_equal_f1'))}, "
            f"F1 gain {fmt(sm.get('f1_gain_at_equal_budget'))} (logit − random)."
        )
        budgets = s.get("config", {}).get("budgets", [])
        for e in sm.get("equal_f1", []):
            reach = e.get("budget_reaching_target", {})
            if budgets and reach and all(b == min(budgets) for b in reach.values()):
                out.append(
                    f"  On {e['dataset']} class {e['forget_class']} every sampler reaches the equal-F1 target "
                    f"({e['target_f1']:.3f}) at the smallest budget tried ({min(budgets)}), so the equal-F1 ratios "
                    "cannot show a saving there."
                )
    ratio = md.dig(u, ["summary", "unlearn_over_retrain_seconds"])
    if ratio is not None:
        verdict = (
            "slower than retraining"
            if ratio >= 1
            else "faster than retraining, but not by the goal's 20×"
            if ratio > 0.05
            else "at least 20× faster than retraining (the goal)"
        )
        out.append(
            f"- Unlearning time: GIF (default callback) took {ratio:.2f}× the time of retraining the 21k-parameter "
            f"digits CNN from scratch (capture, solve and validation step search against a few seconds of training): "
            f"{verdict}. Influence-based unlearning pays off in time when training is expensive relative to "
            "an HVP on the Hessian subset times the solver's iterations."
        )
    full = md.load("unlearning_fashion.json")
    if full:
        fs, cells = full["summary"], full["cells"]
        best = fs["best_baseline"]
        secs = {m: cells[m]["seconds"]["mean"] / cells["retrain"]["seconds"]["mean"] for m in cells}
        out.append(
            f"- Full Fashion-MNIST ({fs['train_samples']} training images, {len(fs['runs'])} "
            f"class × seed runs): GIF (default) F1 {fs['default_f1']:.4f} vs retrain "
            f"{fs['retrain_f1']:.4f} (gap {fs['f1_gap_to_retrain']:.4f}) at "
            f"{secs['gif (default)']:.3f}× retraining's mean time; the best baseline, {best}, "
            f"{fs['baseline_f1'][best]:.4f} at {secs[best]:.3f}×."
        )
    f = md.load("unlearning_fashion10k.json")
    if f:
        cells = {c["method"]: c for c in f["cells"]}
        gif, ret = cells.get("gif (default)"), cells.get("retrain")
        best = max(
            (c for c in f["cells"] if c["method"] != "retrain"), key=lambda c: c["test_f1"]["mean"]
        )
        if gif and ret:
            out.append(
                f"- Fashion-MNIST, the earlier 10,000-image study with the then-default (`{f['command']}`): GIF (default) F1 {md.ms(gif['test_f1'])} vs retrain "
                f"{md.ms(ret['test_f1'])} (gap {f['summary']['f1_gap_to_retrain']:.3f}, goal ≤ 0.01: "
                f"{'met' if f['summary']['f1_gap_to_retrain'] <= 0.01 else 'missed'}) at "
                f"{f['summary']['unlearn_over_retrain_seconds']:.2f}× retraining's time; the best method there is "
                f"{best['method']} (F1 {md.ms(best['test_f1'])})."
            )
    return out + [""]


def build() -> str:
    """The whole page: the header, the goals table, the papers' claims, then every study."""
    names = ["solvers.json", "samplers.json", "unlearning.json", "selection.json"]
    data = {n: md.load(n) for n in names}
    machine = next((d["machine"] for d in data.values() if d and "machine" in d), {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks report` from `benchmarks/results/*.json`; rerun with "
        "`python -m benchmarks run --suite small` (or `--suite full`, `--only solvers,samplers,unlearning,selection`). "
        "Every number below is read from those files.",
        "",
        f"Machine: {machine.get('cpu', '?')} CPU, torch {machine.get('torch', '?')}, {machine.get('threads', '?')} thread(s), "
        f"device {machine.get('device', '?')}.",
        "",
        "Small-suite wall times (s): "
        + ", ".join(
            f"{n.split('.')[0]} {data[n]['wall_seconds']:.0f}"
            for n in names
            if data[n] and "wall_seconds" in data[n]
        )
        + f" (sum {sum(d['wall_seconds'] for d in data.values() if d and 'wall_seconds' in d) / 60:.1f} min, "
        "each study run on its own, some while other jobs shared the 2 cores; goal for the small suite: < 30 min). "
        + (
            f"solvers.json comes from `{data['solvers.json']['command']}`, whose LiSSA cap "
            f"({data['solvers.json']['setup']['lissa_max_iter']} iterations) is the full suite's; the small suite caps it at 1000."
            if data.get("solvers.json")
            and data["solvers.json"]["setup"].get("lissa_max_iter", 0) > 1000
            else ""
        ),
        "",
    ]
    lines += goals_section()
    lines += papers_section(data)
    for module in studies():
        lines += module.render()
    return "\n".join(lines)


def write() -> Path:
    DOC.write_text(build() + "\n")
    return DOC


if __name__ == "__main__":
    print(write())
