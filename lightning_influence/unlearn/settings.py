"""Typed settings of an unlearning run, grouped by pipeline stage.

Each group is a dataclass whose fields carry their help text (as kronfluence's
``arguments.py``), so LightningCLI/jsonargparse shows per-field help and YAML configs nest::

    callbacks:
      - class_path: lightning_influence.UnlearnCallback
        init_args:
          forget_classes: [3]
          hessian: {sampler: logit, budget: 128}
          selection: {method: highest_gradients, ratio: 0.05}

Every value is checked when the dataclass is built, so a wrong argument fails at
construction, long before a ``fit`` ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

__all__ = [
    "GridArguments",
    "HessianArguments",
    "ResponseArguments",
    "SelectionArguments",
    "SolveArguments",
    "StepArguments",
    "UnlearnSettings",
]

SamplerName = Literal["logit", "feature", "random"]
SelectionName = Literal[
    "highest_outputs", "highest_gradients", "lowest_outputs", "lowest_gradients", "random", "all"
]
EstimatorName = Literal["gif", "fif", "pif", "if"]
SolverName = Literal["krylov", "lissa", "dense"]
CurvatureName = Literal["hessian", "gauss_newton"]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _as_list(value: float | list[float], name: str) -> list[float]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"{name} must be a number or a non-empty list of numbers.")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must hold finite numbers, got {value!r}.")
        out.append(float(v))
    return out


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}.")


def _check_number(value: object, name: str) -> None:
    """A real number (not a bool or a string such as "0.001"), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{name} must be a number, got {value!r} ({type(value).__name__}): write it "
            "without quotes."
        )


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_nonnegative_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")


def _documented(cls: type) -> type:
    """Append an ``Args:`` section built from the fields' help to the class docstring.

    The help lives once, in each field's metadata (as kronfluence's ``arguments.py``);
    jsonargparse/LightningCLI read it from the docstring (``--...hessian.help``).
    """
    lines = [f"    {f.name}: {f.metadata['help']}" for f in fields(cls) if "help" in f.metadata]
    if lines:
        cls.__doc__ = f"{(cls.__doc__ or '').rstrip()}\n\nArgs:\n" + "\n".join(lines) + "\n"
    return cls


@_documented
@dataclass
class HessianArguments:
    """Which retained training samples estimate the Hessian (the Hessian subset)."""

    sampler: SamplerName = field(
        default="logit",
        metadata=_help(
            "How the subset is picked from the retained pool: 'logit' or 'feature' (faiss "
            "k-means per class, the sample nearest each centroid, weighted by cluster size) "
            "or 'random' (uniform, the baseline)."
        ),
    )
    budget: int = field(default=128, metadata=_help("Number of samples in the Hessian subset."))
    pool_size: int | None = field(
        default=4096,
        metadata=_help(
            "Largest candidate pool the sampler chooses from: above it, a seeded random share "
            "of the retained training samples (chosen by sample id, so the same on every rank "
            "and in any loader order) is captured. None: every retained sample."
        ),
    )
    feature_module: str | None = field(
        default=None,
        metadata=_help(
            "Submodule whose input is the per-sample feature for sampler='feature' (default: "
            "the model's output layer: the last trainable Linear/Conv that runs in the "
            "forward pass). A CaptureCallback in the Trainer uses its own."
        ),
    )
    added_budget: int | None = field(
        default=None,
        metadata=_help(
            "Most rows that a correction adds (relabelled rows, backdoor repair rows) enter "
            "the Hessian subset: a seeded draw, weighted to stand for all of them. None: as "
            "many as budget."
        ),
    )

    def __post_init__(self) -> None:
        _check_choice(self.sampler, ("logit", "feature", "random"), "hessian.sampler")
        _check_positive_int(self.budget, "hessian.budget")
        if self.added_budget is not None:
            _check_positive_int(self.added_budget, "hessian.added_budget")
        if self.pool_size is not None:
            _check_positive_int(self.pool_size, "hessian.pool_size")
            if self.pool_size < self.budget:
                raise ValueError(
                    f"hessian.pool_size={self.pool_size} is below hessian.budget={self.budget}: "
                    "the pool must hold at least the subset."
                )


@_documented
@dataclass
class SelectionArguments:
    """Which parameters may move: whole output units of each Linear/Conv layer."""

    method: SelectionName | None = field(
        default=None,
        metadata=_help(
            "Rank units on the forget data by |mean output| ('highest_outputs') or |mean "
            "d loss / d output| ('highest_gradients'); 'lowest_*' and 'random' are controls; "
            "'all' moves every parameter. None: the task's own ('highest_gradients' for class "
            "removal, label change and backdoor repair (the last two ranked on the corrected "
            "samples, whose loss is high at the trained weights), 'highest_outputs' for sample "
            "removal)."
        ),
    )
    ratio: float | list[float] | None = field(
        default=None,
        metadata=_help(
            "Share of each layer's output units that may move, in (0, 1]. A list makes a grid "
            "chosen on validation data. None: the task's own (0.05 for class removal, 0.2 for "
            "the others)."
        ),
    )

    layers: str | list[str] | None = field(
        default=None,
        metadata=_help(
            "Which layers' units may be ranked and moved: 'all' (every trainable Linear/Conv), "
            "'output' (only the layer that produces the logits) or a list of module names. "
            "None: the task's own ('output' for class removal: the forgotten classes' output "
            "units move and the shared features stay; 'all' for the others). Ignored by "
            "method='all'."
        ),
    )

    max_rows: int | None = field(
        default=2048,
        metadata=_help(
            "Units are ranked on at most this many of the forgotten (or, for label change and "
            "backdoor repair, corrected) rows: a seeded, class-stratified subsample (None: "
            "all). The influence gradient g always uses every forgotten row."
        ),
    )

    def __post_init__(self) -> None:
        if self.max_rows is not None:
            _check_positive_int(self.max_rows, "selection.max_rows")
        self._check_layers()
        if self.method is None:
            return self._check_ratios()
        _check_choice(
            self.method,
            (
                "highest_outputs",
                "highest_gradients",
                "lowest_outputs",
                "lowest_gradients",
                "random",
                "all",
            ),
            "selection.method",
        )
        self._check_ratios()

    def _check_layers(self) -> None:
        layers = self.layers
        if layers is None or layers in ("all", "output"):
            return
        if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(
                f"selection.layers must be 'all', 'output', a non-empty list of module names "
                f"or None, got {layers!r}."
            )
        if not all(isinstance(n, str) for n in layers):
            raise ValueError(f"selection.layers must name modules by string, got {layers!r}.")
        self.layers = list(layers)

    def _check_ratios(self) -> None:
        if any(not 0.0 < r <= 1.0 for r in self.ratios):
            raise ValueError(f"selection.ratio must be in (0, 1], got {self.ratio!r}.")

    @property
    def ratios(self) -> list[float]:
        """The ratio candidates, in order (one for ``method='all'``; none for the task's own)."""
        if self.method == "all":
            return [1.0]
        return [] if self.ratio is None else _as_list(self.ratio, "selection.ratio")


@_documented
@dataclass
class SolveArguments:
    """How the influence system is solved."""

    estimator: EstimatorName = field(
        default="gif",
        metadata=_help(
            "gif (least squares on H restricted to the selected columns), fif (frozen: the "
            "selected block of H), pif (full solve, then keep the selection) or if (classic, "
            "every parameter)."
        ),
    )
    solver: SolverName = field(
        default="krylov",
        metadata=_help(
            "krylov (CGLS for gif, MINRES otherwise), lissa (the GIF paper's modified LiSSA) "
            "or dense (explicit float64 Hessian; tiny models only)."
        ),
    )
    damping: float | list[float] | None = field(
        default=None,
        metadata=_help(
            "lambda >= 0: Tikhonov term for gif, H + lambda I for the others. A list makes a "
            "grid chosen on validation data. None: the task's own: 1e-3, and 0.1 for backdoor "
            "repair (its small-lambda direction costs clean accuracy before the attack fails)."
        ),
    )
    curvature: CurvatureName | None = field(
        default=None,
        metadata=_help(
            "hessian (the exact Hessian of the loss, may be indefinite) or gauss_newton (the "
            "generalised Gauss-Newton matrix J^T (d2 loss / d logits2) J, positive "
            "semi-definite). None: the task's own: gauss_newton for label change, hessian "
            "otherwise."
        ),
    )
    tol: float = field(default=1e-2, metadata=_help("Relative residual at which to stop."))
    max_iter: int = field(default=100, metadata=_help("Iteration cap of the iterative solvers."))
    rounds: int | None = field(
        default=None,
        metadata=_help(
            "Re-linearised rounds: after a kept step that has not completed forgetting, form "
            "g and H again at the new weights and step again, up to this many solves in all "
            "(None: the task's own: 3 for class removal, 1 for sample removal, 5 for label "
            "change and backdoor repair, whose fix lies far from the trained weights)."
        ),
    )

    polish: bool = field(
        default=False,
        metadata=_help(
            "Rounds left after forgetting completes polish it: g and H at the new weights "
            "(the corrected objective's gradient, mostly the retained data's), a step kept "
            "while validation F1 improves, and a run whose forget score meets the target "
            "before any step searches anyway. Off: rounds stop once forgetting is complete, "
            "and such a run stops before any solve."
        ),
    )

    def __post_init__(self) -> None:
        _check_choice(self.estimator, ("gif", "fif", "pif", "if"), "solve.estimator")
        _check_choice(self.solver, ("krylov", "lissa", "dense"), "solve.solver")
        if self.curvature is not None:
            _check_choice(self.curvature, ("hessian", "gauss_newton"), "solve.curvature")
        if any(d < 0 for d in self.dampings):
            raise ValueError(f"solve.damping must be >= 0, got {self.damping!r}.")
        if not (isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"solve.tol must be a positive number, got {self.tol!r}.")
        _check_positive_int(self.max_iter, "solve.max_iter")
        if self.rounds is not None:
            _check_positive_int(self.rounds, "solve.rounds")
        _check_bool(self.polish, "solve.polish")

    @property
    def dampings(self) -> list[float]:
        """The damping candidates, in order (empty: the task's own)."""
        return [] if self.damping is None else _as_list(self.damping, "solve.damping")


@_documented
@dataclass
class StepArguments:
    """The step along the normalised direction, chosen on validation data."""

    steps: int = field(
        default=8, metadata=_help("Radii tried on a geometric grid from min to max radius.")
    )
    min_radius: float = field(
        default=1e-3, metadata=_help("Smallest step, relative to the norm of the selected weights.")
    )
    max_radius: float = field(
        default=5.0, metadata=_help("Largest step, relative to the norm of the selected weights.")
    )
    max_val_samples: int | None = field(
        default=2048,
        metadata=_help(
            "The step search scores each trial on at most this many validation samples (a "
            "seeded, class-stratified subsample; None: all). The before/after values in the "
            "report are measured on the whole validation set."
        ),
    )
    refine: int = field(
        default=4,
        metadata=_help("Bisection steps after the first radius that completes forgetting."),
    )
    forget_target: float | None = field(
        default=None,
        metadata=_help(
            "Forget score at which forgetting is complete (None: the task's own: for backdoor "
            "repair the share of clean validation victims the trained model calls the target, "
            "0 for the other tasks; see the task's scoring)."
        ),
    )
    max_retain_drop: float | None = field(
        default=None,
        metadata=_help(
            "A step whose retained validation accuracy falls more than this below the best "
            "retained accuracy seen (before the step, at any trial or in an earlier round) is "
            "never kept (None: the task's own: 0.25 for classes, 0.005 for samples and labels, "
            "0.02 for backdoors)."
        ),
    )
    f1_tolerance: float | None = field(
        default=None,
        metadata=_help(
            "Keep the smallest step whose validation F1 lies within this of the best one "
            "(the unchanged model counts, so a step must beat it by more). None: the task's "
            "own: 0.005 for label change, 0 for the other tasks."
        ),
    )

    keep: str | None = field(
        default=None,
        metadata=_help(
            "Which step within f1_tolerance of the best is kept: 'smallest' or 'largest' (after "
            "forgetting completes the walk goes on, to at most twice the smallest radius that "
            "forgets, while the F1 holds). None: the task's own: "
            "'largest' for class removal (the class's logit pushed as far down as retraining "
            "pushes it, so a few fine-tuning steps do not bring it back) and label change (the "
            "relabelled rows fitted as retraining fits them), 'smallest' otherwise."
        ),
    )

    def __post_init__(self) -> None:
        _check_positive_int(self.steps, "step.steps")
        if self.keep is not None:
            _check_choice(self.keep, ("smallest", "largest"), "step.keep")
        if self.max_val_samples is not None:
            _check_positive_int(self.max_val_samples, "step.max_val_samples")
        _check_nonnegative_int(self.refine, "step.refine")
        _check_number(self.min_radius, "step.min_radius")
        _check_number(self.max_radius, "step.max_radius")
        for name in ("forget_target", "max_retain_drop", "f1_tolerance"):
            if getattr(self, name) is not None:
                _check_number(getattr(self, name), f"step.{name}")
        if not 0.0 < self.min_radius <= self.max_radius or not math.isfinite(self.max_radius):
            raise ValueError(
                "step radii need 0 < min_radius <= max_radius < inf, got "
                f"min_radius={self.min_radius!r}, max_radius={self.max_radius!r}."
            )
        for name in ("forget_target", "max_retain_drop", "f1_tolerance"):
            value = getattr(self, name)
            if value is not None and not (0.0 <= value <= 1.0):
                raise ValueError(f"step.{name} must be in [0, 1] or None, got {value!r}.")


@_documented
@dataclass
class ResponseArguments:
    """Response descent after the influence rounds: a few Adam steps on the proximal Bregman
    response objective (retained predictions kept, added rows fitted, removed rows' capped
    loss raised), scored on validation data like the step search."""

    steps: int | None = field(
        default=None,
        metadata=_help(
            "Optimiser steps (0: no response descent). None: the task's own (200 for backdoor "
            "repair and sample removal, 0 for the other tasks)."
        ),
    )
    lr: float | None = field(
        default=None,
        metadata=_help(
            "Adam's learning rate. None: the task's own (1e-3 for backdoor repair, 3e-4 for the other tasks)."
        ),
    )
    every: int = field(default=4, metadata=_help("Score on validation data every this many steps."))
    patience: int | None = field(
        default=None,
        metadata=_help(
            "Scored points below the retained-accuracy floor in a row that end the descent "
            "(None: all steps run). Such points are never kept; the retained rows' loss can "
            "repair an early dip (digits backdoor: 40 steps below the floor, then the attack "
            "gone at a higher retained accuracy)."
        ),
    )
    retain_weight: float = field(
        default=1.0,
        metadata=_help(
            "Weight of the retained rows' own loss next to the KL term that keeps their "
            "predictions (repair steps on retained data; 0: the KL term alone, as in the PBRF)."
        ),
    )
    stop_when_complete: bool | None = field(
        default=None,
        metadata=_help(
            "End the descent at the first scored point that completes forgetting (kept if "
            "it is the best so far). Otherwise the descent goes on and keeps the best F1, "
            "which past completion means the highest retained accuracy while the removal "
            "term keeps raising the forgotten rows' loss. None: the task's own: stop for "
            "sample removal (20 random samples of a ResNet-18 were pushed to 0.05 accuracy, "
            "held-out data's is 0.79), go on for backdoor repair (the descent also repairs "
            "retained accuracy)."
        ),
    )
    stop_when_repaired: bool = field(
        default=False,
        metadata=_help(
            "End the descent at the first scored point that completes forgetting with "
            "retained validation accuracy back at its value before unlearning (nothing left "
            "to forget or repair). A lever for tasks that go on past completion (backdoor "
            "repair): a ResNet-18's backdoor descent kept step 16 and ran 184 more."
        ),
    )
    skip_when_complete: bool | None = field(
        default=None,
        metadata=_help(
            "Skip the descent when the influence rounds already completed forgetting: saves "
            "its time, but the descent also repairs retained accuracy (full Fashion-MNIST "
            "backdoor with true labels: 0.010 more clean test accuracy lost without it). "
            "None: the task's own: skip for sample removal (the descent is there for "
            "memorised samples the rounds leave fitted), run for backdoor repair."
        ),
    )
    selected_only: bool = field(
        default=False,
        metadata=_help(
            "Move only the selected parameters (True) or every trainable parameter (False: a "
            "backdoor's trigger features sit in layers the selection may not reach)."
        ),
    )
    remove_weight: float = field(
        default=1.0,
        metadata=_help(
            "Weight of the removed rows' capped loss (raised); 0 keeps only the retained and "
            "added rows' terms."
        ),
    )
    backtracks: int = field(
        default=2,
        metadata=_help(
            "Times the descent starts again from its start at a quarter of the learning rate "
            "when a point breaks the validation scorer's own floor before any point was kept "
            "(the steps are too large for this model: a ResNet-18's first 4 steps took 20 "
            "random samples below held-out accuracy). 0: never."
        ),
    )

    def __post_init__(self) -> None:
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0
        ):
            raise ValueError(f"response.steps must be an integer >= 0 or None, got {self.steps!r}.")
        _check_positive_int(self.every, "response.every")
        if self.patience is not None:
            _check_positive_int(self.patience, "response.patience")
        _check_bool(self.selected_only, "response.selected_only")
        _check_bool(self.stop_when_repaired, "response.stop_when_repaired")
        _check_nonnegative_int(self.backtracks, "response.backtracks")
        for name in ("skip_when_complete", "stop_when_complete"):
            if getattr(self, name) is not None:
                _check_bool(getattr(self, name), f"response.{name}")
        for name in ("lr", "remove_weight", "retain_weight"):
            value = getattr(self, name)
            if name == "lr" and value is None:
                continue  # the task's own
            _check_number(value, f"response.{name}")
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise ValueError(
                    f"response.{name} must be finite and > 0 (>= 0 for the weights), got {value!r}."
                )


@_documented
@dataclass
class GridArguments:
    """How candidates of a ratio x damping grid are ranked and when the grid stops early."""

    accept_retain_drop: float = field(
        default=0.01,
        metadata=_help(
            "Stop the grid at the first candidate that completes forgetting while keeping "
            "retained validation accuracy within this of its value before."
        ),
    )
    retain_tolerance: float = field(
        default=0.05,
        metadata=_help(
            "Candidates whose retained accuracy stays within this of its value before rank "
            "above those that do not (utility first, then F1)."
        ),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            _check_number(value, f"grid.{f.name}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"grid.{f.name} must be in [0, 1], got {value!r}.")


@dataclass
class UnlearnSettings:
    """Every setting of one unlearning run (the callback builds it from its arguments)."""

    hessian: HessianArguments = field(default_factory=HessianArguments)
    selection: SelectionArguments = field(default_factory=SelectionArguments)
    solve: SolveArguments = field(default_factory=SolveArguments)
    step: StepArguments = field(default_factory=StepArguments)
    grid: GridArguments = field(default_factory=GridArguments)
    response: ResponseArguments = field(default_factory=ResponseArguments)
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        _check_nonnegative_int(self.seed, "seed")
        _check_positive_int(self.batch_size, "batch_size")
