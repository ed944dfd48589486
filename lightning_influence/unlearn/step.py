"""Step along an influence direction, the step chosen on validation data.

The direction of Δθ is reliable, its first-order magnitude is not. So Δθ is normalised to
unit (global) norm and tried at radii ``r_k · ‖θ_S‖``, where ‖θ_S‖ is the norm of the
*selected* parameters' current values (the entries where Δθ is non-zero). The radii are a
geometric grid from ``min_radius`` to ``max_radius``: relative to the weights (not to ‖Δθ‖),
so the same grid means "move the chosen neurons by 0.1 %…N % of their size" for any model,
any forget-set size and any solver scale.

Every step is scored by a caller-supplied function on validation data returning
``(forget score, retained accuracy)`` (the forget score is an accuracy for most tasks, see
:mod:`lightning_influence.unlearn.scoring`); the score is the forgetting F1. The search walks
the grid upwards and stops early when forgetting is complete (``forget_acc <= forget_target``)
or retained accuracy collapses (drops more than ``max_retain_drop`` below its value before).
Steps whose retained accuracy fell below that floor are never kept. After the first step that
reaches the target, a few bisection steps between it and the
previous radius look for a smaller step with the same forgetting and better retained accuracy;
when retained accuracy collapses first, as many bisection steps between the collapsing radius
and the one before look for the largest step that stays within the budget.
The best-scoring step is kept; if none beats the unchanged model (or anything raises), the
original weights are restored bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from lightning_influence.data._modules import named_tensors
from lightning_influence.measure.metrics import forgetting_f1
from lightning_influence.unlearn.settings import StepArguments

#: the grid and refinement of UnlearnCallback's step search (``step.*`` settings), which
#: ``step_search`` uses too when called directly
_STEP_DEFAULTS = StepArguments()

__all__ = [
    "Score",
    "StepOutcome",
    "StepResult",
    "best_retained",
    "StepTrial",
    "apply_step",
    "radius_grid",
    "step_search",
    "weights_snapshot",
    "restore_weights",
]


class Score(tuple):
    """``(forget score, retained accuracy)``, unpacked as a pair, plus ``guard_broken``:
    True when a floor of the scorer's own was broken (label change: the old labels' classes
    fell more than their budget below their accuracy before). Such a point is treated as
    below the retained-accuracy floor: never kept, and it ends a walk as the floor does,
    while its true retained accuracy is recorded and logged."""

    guard_broken: bool

    def __new__(cls, forget: float, retained: float, guard_broken: bool = False) -> Score:
        score = super().__new__(cls, (float(forget), float(retained)))
        score.guard_broken = bool(guard_broken)
        return score


#: ``score_fn(model) -> (forget_acc, retain_acc)`` on validation data (a plain pair or a
#: :class:`Score`).
ScoreFn = Callable[[nn.Module], tuple[float, float]]


def guard_broken(score: tuple[float, float]) -> bool:
    """Whether a score function's answer broke a floor of the scorer's own (:class:`Score`)."""
    return bool(getattr(score, "guard_broken", False))


class StepOutcome(str, Enum):
    """Why a step search (or a response descent) ended; ``StepResult.reason`` says it in
    words with the numbers. A ``str`` enum: it compares equal to its value and goes into
    checkpoints and JSON as that string."""

    #: a kept step brought the forget score to the target
    COMPLETE = "complete"
    #: the forget score was at the target before the step; the step improves retained accuracy
    ALREADY_COMPLETE = "already_complete"
    #: the walk (or the descent) stopped where retained accuracy fell below the floor
    FLOOR = "floor"
    #: the forget score stayed above the target up to the largest radius
    MAX_RADIUS = "max_radius"
    #: no step beat the unchanged model on validation F1: the weights were restored
    NO_IMPROVEMENT = "no_improvement"
    #: the response descent kept one of its points
    RESPONSE_KEPT = "response_kept"


@dataclass
class StepTrial:
    """One evaluated step: radius (relative to ‖θ_S‖), absolute step norm and its scores;
    ``round`` is the re-linearised round it belongs to (0 for the first or only one)."""

    radius: float
    step_norm: float
    forget_acc: float
    retain_acc: float
    f1: float
    round: int = 0
    #: a floor of the scorer's own was broken (:class:`Score`): treated as below the floor
    guard_broken: bool = False

    @classmethod
    def scored(
        cls, radius: float, step_norm: float, score: tuple[float, float], **extra: Any
    ) -> StepTrial:
        """A trial from a score function's answer: its F1, and ``guard_broken`` when the
        answer is a :class:`Score` that says so."""
        f, r = score
        trial = cls(radius, step_norm, f, r, float(forgetting_f1(f, r)), **extra)
        trial.guard_broken = guard_broken(score)
        return trial

    def below(self, floor: float) -> bool:
        """Whether this trial may not be kept: retained accuracy below ``floor``, or a
        floor of the scorer's own broken."""
        return self.retain_acc < floor or self.guard_broken


@dataclass
class StepResult:
    """Outcome of :func:`step_search`: whether a step was applied, which, and every trial."""

    applied: bool
    radius: float = 0.0
    step_norm: float = 0.0
    before: StepTrial | None = None
    best: StepTrial | None = None
    trials: list[StepTrial] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0
    outcome: StepOutcome | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain python (floats, lists, dicts): safe for checkpoints and JSON."""
        from dataclasses import asdict

        return asdict(self)


def best_retained(results: Iterable[StepResult]) -> float:
    """The best finite retained accuracy of searches so far (before a step or at a trial):
    the floor of a search, and of every later round, is measured from it."""
    seen = [r.before.retain_acc for r in results if r.before is not None]
    seen += [t.retain_acc for r in results for t in r.trials if t.f1 >= 0 and not t.guard_broken]
    return max(seen, default=-math.inf)


def radius_grid(steps: int, min_radius: float, max_radius: float) -> list[float]:
    """``steps`` geometrically spaced radii from ``min_radius`` to ``max_radius`` (inclusive)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if not 0.0 < min_radius <= max_radius:
        raise ValueError(f"need 0 < min_radius <= max_radius, got {min_radius}, {max_radius}.")
    if steps == 1:
        return [float(max_radius)]
    ratio = (max_radius / min_radius) ** (1.0 / (steps - 1))
    return [float(min_radius * ratio**k) for k in range(steps)]


def weights_snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A detached clone of every parameter and buffer (non-persistent buffers included)."""
    return {k: v.detach().clone() for k, v in named_tensors(model).items()}


@torch.no_grad()
def restore_weights(model: nn.Module, snapshot: Mapping[str, Tensor]) -> None:
    """Copy ``snapshot`` back in place (bit for bit; same tensors, so optimisers stay valid)."""
    state = named_tensors(model)
    for k, v in snapshot.items():
        state[k].data.copy_(v)


def _params(model: nn.Module, names: Iterator[str]) -> dict[str, Tensor]:
    named = dict(model.named_parameters())
    missing = [n for n in names if n not in named]
    if missing:
        raise ValueError(f"delta names parameters the model does not have: {missing[:5]}.")
    return named


@torch.no_grad()
def apply_step(
    model: nn.Module, base: Mapping[str, Tensor], direction: Mapping[str, Tensor], scale: float
) -> None:
    """Set every parameter in ``direction`` to ``base + scale · direction`` (in place)."""
    named = dict(model.named_parameters())
    for k, d in direction.items():
        p = named[k]
        p.copy_(base[k] + scale * d.to(device=p.device, dtype=p.dtype))


def step_search(
    model: nn.Module,
    delta: Mapping[str, Tensor],
    score_fn: ScoreFn,
    steps: int = _STEP_DEFAULTS.steps,
    min_radius: float = _STEP_DEFAULTS.min_radius,
    max_radius: float = _STEP_DEFAULTS.max_radius,
    forget_target: float = 0.0,
    max_retain_drop: float = 0.25,
    refine: int = _STEP_DEFAULTS.refine,
    progress: Callable[[int, StepTrial], None] | None = None,
    retain_reference: float | None = None,
    f1_tolerance: float = 0.0,
    keep: str = "smallest",
) -> StepResult:
    """Search a step along ``delta / ‖delta‖`` and keep the best by validation F1.

    See the module doc for the search. On return the model holds either the best step
    (``result.applied``) or its original weights, bit for bit; exceptions restore the
    weights and propagate.

    Args:
        model: the model whose parameters named in ``delta`` move (in place).
        delta: the direction, keyed by parameter name (only its direction is used).
        score_fn: ``score_fn(model) -> (forget score, retained accuracy)`` on validation
            data; must not change the weights.
        steps: radii on the geometric grid from ``min_radius`` to ``max_radius``.
        min_radius: smallest step, relative to the norm of the selected weights.
        max_radius: largest step, relative to the norm of the selected weights.
        forget_target: forgetting is complete once the forget score is at most this.
        max_retain_drop: steps whose retained accuracy lies more than this below the best
            retained accuracy seen (before the step, at any trial, or ``retain_reference``)
            are never kept, and the walk stops at the first one.
        refine: bisection steps after the first radius that completes forgetting.
        progress: called with (trial number, trial) after every trial.
        retain_reference: a retained accuracy reached earlier (e.g. by an earlier round) that
            the floor is measured from too.
        f1_tolerance: keep the smallest step whose validation F1 lies within this of the
            best (the unchanged model, radius 0, counts: no step is kept when it is within).
        keep: ``'smallest'`` (the default) or ``'largest'``: which step within
            ``f1_tolerance`` of the best is kept. With ``'largest'`` the walk goes on after
            forgetting completes, up to :data:`EXTEND_LIMIT` (2) times the smallest radius
            that forgets, while the F1 stays within the tolerance of the best and retained
            accuracy above the floor (class removal: the class's logit is pushed about as far
            down as retraining pushes it, so it is not relearnt in a few steps).
    """
    if keep not in ("smallest", "largest"):
        raise ValueError(f"keep must be 'smallest' or 'largest', got {keep!r}.")
    start = time.perf_counter()
    direction, scale_ref = _unit_direction(model, delta)
    snapshot = weights_snapshot(model)
    search = _Search(model, direction, scale_ref, score_fn, progress, max_retain_drop)
    result = search.result
    try:
        before = search.score_unchanged(retain_reference)
        grid = radius_grid(steps, min_radius, max_radius)
        if before.forget_acc <= forget_target:  # forgotten already: improve retained accuracy
            _polish(search, grid)
            reached, prev, collapsed = None, 0.0, None
        else:
            reached, prev, collapsed = _walk(search, grid, forget_target)
        if reached is not None:
            _bisect(search, prev, reached, refine, forget_target)
            result.reason = f"forgetting complete (forget score <= {forget_target:g})"
            result.outcome = StepOutcome.COMPLETE
            if keep == "largest":
                edge = min(t.radius for t in result.trials if t.forget_acc <= forget_target)
                limit = min(max_radius, EXTEND_LIMIT * edge)
                radii = [r for r in grid if reached < r < limit]
                if limit > reached:
                    radii.append(limit)
                _extend(search, radii, f1_tolerance)
        elif collapsed is not None:
            _bisect_floor(search, prev, collapsed, refine)
        elif not result.reason:
            result.outcome = StepOutcome.MAX_RADIUS
            result.reason = (
                f"forget score stayed above {forget_target:g} up to max_radius={max_radius:g}"
            )
        _keep_best(search, snapshot, f1_tolerance, keep)
        return result
    except BaseException:
        restore_weights(model, snapshot)
        raise
    finally:
        result.seconds = time.perf_counter() - start


def _unit_direction(
    model: nn.Module, delta: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], float]:
    """``delta`` normalised to unit global norm (zero entries dropped) and ‖θ_S‖."""
    if not delta:
        raise ValueError("delta is empty: nothing to apply.")
    named = _params(model, iter(delta))
    moving = {k: d for k, d in delta.items() if bool(torch.any(d != 0))}
    if not moving:
        raise ValueError(
            "delta is zero everywhere: the solve found no direction. The loss does not depend "
            "on the selected parameters: check the selection, and that the model's output "
            "holds the logits (else pass logits_fn)."
        )
    d_norm = math.sqrt(sum(float(d.double().pow(2).sum()) for d in moving.values()))
    if not math.isfinite(d_norm):
        raise FloatingPointError("delta contains NaN/inf: refusing to apply it.")
    # ‖θ_S‖: the norm of the selected entries (where the direction is non-zero).
    theta_s = math.sqrt(
        sum(float(named[k].detach().double()[d != 0].pow(2).sum()) for k, d in moving.items())
    )
    return {k: d / d_norm for k, d in moving.items()}, (theta_s if theta_s > 0 else 1.0)


class _Search:
    """Applies and scores radii along one direction; records every trial."""

    def __init__(
        self,
        model: nn.Module,
        direction: dict[str, Tensor],
        scale_ref: float,
        score_fn: ScoreFn,
        progress: Callable[[int, StepTrial], None] | None,
        max_retain_drop: float,
    ) -> None:
        named = dict(model.named_parameters())
        self.model, self.direction, self.scale_ref = model, direction, scale_ref
        self.base = {k: named[k].detach().clone() for k in direction}
        self.score_fn, self.progress = score_fn, progress
        self.max_retain_drop = max_retain_drop
        self.reference = -math.inf  # a retained accuracy reached before this search
        self.result = StepResult(applied=False)

    @property
    def floor(self) -> float:
        """Retained accuracy below which a step is never kept: the budget below the best
        retained accuracy seen. A correction (label change, backdoor repair) may raise it on
        the way; giving that back is collateral damage, as much as a loss from the start."""
        return max(best_retained([self.result]), self.reference) - self.max_retain_drop

    def score_unchanged(self, reference: float | None = None) -> StepTrial:
        self.result.before = StepTrial.scored(0.0, 0.0, self.score_fn(self.model))
        if reference is not None:
            self.reference = reference
        return self.result.before

    def trial(self, radius: float) -> StepTrial:
        scale = radius * self.scale_ref
        apply_step(self.model, self.base, self.direction, scale)
        t = StepTrial.scored(radius, scale, self.score_fn(self.model))
        if not (math.isfinite(t.forget_acc) and math.isfinite(t.retain_acc)):
            t.f1 = -1.0
        self.result.trials.append(t)
        if self.progress is not None:
            self.progress(len(self.result.trials), t)
        return t


def _walk(
    search: _Search, grid: list[float], forget_target: float
) -> tuple[float | None, float, float | None]:
    """Walk the grid upwards; returns (first radius reaching the target or None, the one
    before, the radius where retained accuracy fell below the floor or None)."""
    prev = 0.0
    for radius in grid:
        t = search.trial(radius)
        if t.below(search.floor):
            search.result.outcome = StepOutcome.FLOOR
            what = (
                f"retained accuracy fell below the floor {search.floor:.4f}"
                if t.retain_acc < search.floor
                else "the scorer's own floor was broken (label change: the old labels' classes)"
            )
            search.result.reason = (
                f"the walk stopped at radius {radius:.3g}, where {what}; the largest step "
                "above the floor was searched"
            )
            return None, prev, radius
        if t.forget_acc <= forget_target:
            return radius, prev, None
        prev = radius
    return None, prev, None


def _bisect(search: _Search, lo: float, hi: float, refine: int, forget_target: float) -> None:
    """Look for a smaller radius that still completes forgetting (``lo`` misses, ``hi`` reaches)."""
    for _ in range(refine):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
        if search.trial(mid).forget_acc <= forget_target:
            hi = mid
        else:
            lo = mid


def _polish(search: _Search, grid: list[float]) -> None:
    """Forgetting is complete before the step: walk up while the F1 still improves (stop
    after two trials without improvement or below the retained-accuracy floor)."""
    assert search.result.before is not None
    best, worse = search.result.before.f1, 0
    for radius in grid:
        t = search.trial(radius)
        if t.below(search.floor):
            break
        worse = 0 if t.f1 > best else worse + 1
        best = max(best, t.f1)
        if worse >= 2:
            break
    search.result.reason = "forgetting was complete; the step improves retained accuracy"
    search.result.outcome = StepOutcome.ALREADY_COMPLETE


def _bisect_floor(search: _Search, lo: float, hi: float, refine: int) -> None:
    """Look for the largest radius whose retained accuracy stays above ``floor`` (``lo``
    stays above it, ``hi`` falls below): the most forgetting the budget allows."""
    for _ in range(refine):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
        if not search.trial(mid).below(search.floor):
            lo = mid
        else:
            hi = mid


#: ``keep='largest'`` walks on to at most this many times the smallest radius that forgets
EXTEND_LIMIT = 2.0


def _extend(search: _Search, radii: list[float], f1_tolerance: float) -> None:
    """Walk on up ``radii`` while the F1 stays within ``f1_tolerance`` of the best so far and
    retained accuracy above the floor (``keep='largest'``)."""
    for radius in radii:
        best = max(t.f1 for t in search.result.trials if not t.guard_broken)
        t = search.trial(radius)
        if t.below(search.floor) or t.f1 < best - f1_tolerance:
            return


def _keep_best(
    search: _Search, snapshot: Mapping[str, Tensor], f1_tolerance: float, keep: str = "smallest"
) -> None:
    """If the best valid trial beats the unchanged model by more than ``f1_tolerance``, apply
    the smallest (``keep='largest'``: the largest) valid trial within ``f1_tolerance`` of it;
    else restore the weights."""
    result = search.result
    assert result.before is not None
    # A step whose retained accuracy collapsed is never kept, whatever its F1.
    floor = search.floor
    valid = [t for t in result.trials if t.f1 >= 0 and not t.below(floor)]
    best = max(valid, key=lambda t: (t.f1, -t.radius), default=None)
    # The unchanged model is the radius-0 candidate: within the tolerance of the best, it wins.
    if best is None or best.f1 - f1_tolerance <= result.before.f1:
        restore_weights(search.model, snapshot)
        within = f" + tolerance {f1_tolerance:g}" if f1_tolerance else ""
        result.outcome = StepOutcome.NO_IMPROVEMENT
        result.reason = (
            f"no step improved the validation F1 over the unchanged model "
            f"({result.before.f1:.4f}{within}; best tried "
            f"{best.f1 if best else float('nan'):.4f}); {result.reason}"
        )
        return
    within = [t for t in valid if t.f1 >= best.f1 - f1_tolerance]
    best = (min if keep == "smallest" else max)(within, key=lambda t: t.radius)
    apply_step(search.model, search.base, search.direction, best.step_norm)
    result.applied, result.best = True, best
    result.radius, result.step_norm = best.radius, best.step_norm
