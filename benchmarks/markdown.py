"""What every study's part of docs/benchmarks.md is written with: reading a result file,
formatting a cell, the study's notes and commands, and the goals a study checks.

A study module (``benchmarks/<study>.py``) runs its measurements, writes its JSON under
``benchmarks/results``, and renders its own section with ``render() -> list[str]``; its
``GOALS`` are rows of the page's goals table. :mod:`benchmarks.report` assembles the page from
the modules listed in its ``PAGE``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from benchmarks.common import RESULTS

__all__ = ["Goal", "commands", "dig", "load", "ms", "notes", "partial", "verdict"]


@dataclass(frozen=True)
class Goal:
    """One row of the goals table: a number in a result file against its bound.

    Args:
        file: the result file under ``benchmarks/results``.
        keys: the path to the number in that file's JSON.
        op: ``"<="``, ``">="`` or ``">"``.
        bound: the goal.
        what: the row's words.
    """

    file: str
    keys: tuple[str, ...]
    op: str
    bound: float
    what: str

    def met(self, value: float) -> bool:
        return {"<=": value <= self.bound, ">=": value >= self.bound, ">": value > self.bound}[
            self.op
        ]


def load(name: str) -> dict[str, Any] | None:
    """A result file's JSON (None when the study has not written it)."""
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def dig(d: Any, keys: list[str] | tuple[str, ...]) -> Any:
    """``d[k0][k1]...`` or None where a key is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def ms(cell: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean ± std`` of a :func:`benchmarks.common.mean_std` cell ("–" when empty)."""
    if not cell:
        return "–"
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def notes(d: dict) -> list[str]:
    """A study's notes as a markdown list and a blank line (nothing without notes)."""
    items = d.get("notes", [])
    return [*(f"- {n}" for n in items), ""] if items else []


def commands(d: dict) -> str:
    """A study's commands as inline code, ``; ``-separated (older files: one ``command``)."""
    return "; ".join(f"`{c}`" for c in d.get("commands", [d.get("command", "")]))


def partial(d: dict | None) -> str:
    """' (partial: ...)' for a faithfulness study short of the acceptance's 5 seeds."""
    summary = (d or {}).get("summary", {})
    per_task = summary.get("seeds_per_task")
    if per_task:  # every task needs 5 seeds
        if min(per_task.values()) >= 5:
            return ""
        counts = ", ".join(f"{t} {n}" for t, n in per_task.items())
        return f" (partial: seeds per task of 5: {counts})"
    if "seeds" not in summary or summary["seeds"] >= 5:
        return ""
    tasks = ", ".join(summary.get("tasks", []))
    measured = f"; tasks measured: {tasks}" if tasks else ""
    return f" (partial: {summary['seeds']} seed(s) of 5{measured})"


def verdict(value: Any, goal: str) -> str:
    """``met`` / ``missed by X`` for goals written as ``<= x`` or ``>= x``."""
    if value is None or not isinstance(value, (int, float)):
        return "not measured"
    op, bound = goal.split()
    bound_f = float(bound.replace("+", ""))
    ok = value <= bound_f if op == "<=" else value >= bound_f
    return "met" if ok else f"missed by {abs(value - bound_f):.4g}"
