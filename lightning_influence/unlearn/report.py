"""What an unlearning run did: typed records with plain-python fields (checkpoint/JSON safe)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["CandidateResult", "StageTimer", "UnlearnReport", "peak_memory"]


@dataclass
class CandidateResult:
    """One (ratio, damping) candidate: select → solve → step search, scored on validation."""

    ratio: float
    damping: float
    applied: bool
    radius: float
    f1: float
    forget_acc: float
    retain_acc: float
    solver_iterations: int
    solver_converged: bool


@dataclass
class UnlearnReport:
    """What one unlearning run did.

    Attributes:
        task: ``class``, ``samples``, ``relabel`` or ``backdoor``.
        applied: whether the weights changed; ``reason`` says why (not), in words;
            ``outcome`` names the last search's end as a
            :class:`~lightning_influence.unlearn.step.StepOutcome` value (``complete``,
            ``already_complete``, ``floor``, ``max_radius``, ``no_improvement``,
            ``response_kept``; empty where not recorded).
        before, after: validation metrics (``forget_acc``, ``retain_acc``, ``f1`` and the
            task's own, e.g. ``attack_success_rate``, ``relabel_acc``, ``familiarity``).
        radius: the chosen step relative to the norm of the selected weights;
            ``step_norm`` its absolute norm; ``trials`` every step tried.
        seconds: per stage (read, capture, sample, select, solve, search, total).
        peak_memory_bytes: CUDA ``max_memory_allocated`` on GPU, else the process's peak RSS
            (``memory_kind`` says which; RSS is a process-wide high-water mark).
        solver: the chosen candidate's solve report; ``candidates`` every candidate tried.
        pool_size: training samples seen; ``candidate_pool``: retained samples the sampler
            chose from; ``forget_size``; ``hessian_size``: the Hessian subset.
        ratio, damping: the chosen candidate's; ``selected_params``/``total_params``.
        capture_source: ``pass`` (the callback's own forward pass) or ``capture_callback``.
        forget_score, forget_target, complete: the task's validation forget score at the
            final weights (class removal: the forgotten classes' accuracy), the target it
            must reach (``step.forget_target``) and whether it did; ``complete`` is ``None``
            where not measured (a report of an older version).
        source: which weights ``on_fit_end`` unlearned: ``last`` or the best checkpoint's
            path (empty for a manual ``unlearn``/``unlearn_model``).
        plan: the settings the run used, the task's defaults applied
            (:class:`~lightning_influence.unlearn.plan.Plan`: ``max_retain_drop``, ``keep``,
            ``dampings``, ``curvature``, ``rounds``, ``selection_method``, ``ratios``, ...).
    """

    task: str = ""
    applied: bool = False
    reason: str = ""
    outcome: str = ""
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    radius: float = 0.0
    step_norm: float = 0.0
    trials: list[dict[str, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int = 0
    memory_kind: str = ""
    solver: dict[str, Any] = field(default_factory=dict)
    selected_params: int = 0
    total_params: int = 0
    pool_size: int = 0
    candidate_pool: int = 0
    forget_size: int = 0
    hessian_size: int = 0
    ratio: float = 0.0
    damping: float = 0.0
    capture_source: str = ""
    candidates: list[dict[str, Any]] = field(default_factory=list)
    forget_score: float = math.nan
    forget_target: float = math.nan
    complete: bool | None = None
    source: str = ""
    plan: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> UnlearnReport:
        """Inverse of :meth:`as_dict`; unknown keys (from other versions) are ignored."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in state.items() if k in known})


class StageTimer:
    """Wall-clock seconds per stage; a stage entered twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        clock = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - clock

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self.start}


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA peak allocation on GPU, else the process's peak RSS (nan-free)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        import resource  # POSIX only
    except ImportError:
        return 0, "unavailable"
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale, "process_max_rss"


def plain(d: Mapping[str, Any]) -> dict[str, Any]:
    """Python scalars only (no tensors), for checkpoints and JSON."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            v = v.item() if v.numel() == 1 else v.tolist()
        out[k] = v
    return out


def validation_f1(metrics: Mapping[str, float]) -> float:
    """Validation F1 for ranking candidates (nan ranks last)."""
    f1 = metrics.get("f1", math.nan)
    return -1.0 if f1 is None or math.isnan(f1) else float(f1)
