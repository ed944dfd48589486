"""The unlearning pipeline, top to bottom: read → capture → sample → select → solve → step.

:func:`run_unlearning` is the whole run in one screen; every stage is a short function:

1. :func:`~lightning_influence.data.pool.read_training_data`: one pass over the training data
   keeps the forget rows and a bounded pool of retained Hessian candidates;
2. :func:`~lightning_influence.sample.subset.capture_candidates`: logits (and features) of the
   candidates, from a :class:`~lightning_influence.CaptureCallback` that already recorded them
   or one no-grad pass;
3. :func:`~lightning_influence.sample.subset.draw_subset`: the weighted Hessian subset (faiss k-means
   or random), the front end the influence scores share;
4. for each (ratio, damping) candidate, :func:`try_candidate`: select the parameters that may
   move, solve for the influence direction, search the step on validation data;
5. the best candidate by validation score is kept; the report says what was done.

The model's weights are untouched unless a step is kept; any failure restores them exactly.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_influence.callbacks.progress import Counted, progress_bar
from lightning_influence.data.batches import Batch, BatchParser
from lightning_influence.data.forward import (
    LossFn,
    call_model,
    check_finite_inputs,
    inputs_take,
    inputs_to,
)
from lightning_influence.data.model_task import ModelTask
from lightning_influence.data.pool import (
    Rows,
    TrainingData,
    check_label_range,
    read_rows,
    read_training_data,
    stratified_rows,
)
from lightning_influence.sample.capture import CaptureResult
from lightning_influence.sample.sampling import SubsetSelection
from lightning_influence.sample.subset import (
    capture_candidates,
    draw_subset,
    subset_rows,
)
from lightning_influence.solve.influence import InfluenceReport, influence
from lightning_influence.solve.solvers import ConvergenceWarning
from lightning_influence.unlearn.forget import ForgetSpec
from lightning_influence.unlearn.output_layer import moving_module
from lightning_influence.unlearn.plan import Plan, resolve_plan
from lightning_influence.unlearn.report import (
    CandidateResult,
    StageTimer,
    UnlearnReport,
    peak_memory,
    plain,
    validation_f1,
)
from lightning_influence.unlearn.response import ResponseData, response_anchors, response_descent
from lightning_influence.unlearn.rounds import RoundGradient
from lightning_influence.unlearn.scoring import MembershipScorer, Scorer, mia_efficacy
from lightning_influence.unlearn.selection import named_layers, select_parameters, selectable_layers
from lightning_influence.unlearn.settings import UnlearnSettings
from lightning_influence.unlearn.step import (
    StepOutcome,
    StepResult,
    best_retained,
    restore_weights,
    step_search,
    weights_snapshot,
)

__all__ = [
    "Problem",
    "run_unlearning",
    "try_candidate",
]


@dataclass
class Problem:
    """Everything the candidates share: the data of H, g of each round, the scorer."""

    hessian: list[Batch]
    gradient: RoundGradient
    selection_rows: list[Batch]
    scorer: Scorer
    search_scorer: Scorer
    #: the settings with the task's defaults applied (:mod:`lightning_influence.unlearn.plan`)
    plan: Plan
    #: the forget score at which forgetting is complete (the plan's, or the task's own
    #: computed at the trained weights)
    forget_target: float
    response: ResponseData | None = None
    #: forgotten rows, membership-attack members (None: no MIA-efficacy, the task forgets
    #: no given ids) and validation rows, on the device
    forget: Rows | None = None
    members: Rows | None = None
    val: Rows | None = None


@dataclass
class _Outcome:
    """A candidate's result plus what is needed to restore or report it."""

    result: CandidateResult
    step: StepResult
    solve: InfluenceReport
    after: dict[str, float]
    weights: dict[str, Tensor] | None


def run_unlearning(
    model: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    spec: ForgetSpec,
    settings: UnlearnSettings,
    *,
    device: torch.device,
    model_task: ModelTask | None = None,
    loss_fn: LossFn | None = None,
    batch_parser: BatchParser | None = None,
    capture: CaptureResult | None = None,
    show_progress: bool = False,
) -> UnlearnReport:
    """Run the pipeline on ``model`` (already on ``device``); returns the report.

    Args:
        model: the trained model; changed in place when a step is kept.
        train_loader: the training data (the forget set and the Hessian pool come from it).
        val_loader: validation data: the step is chosen on it, never on test data.
        spec: what to forget (:mod:`lightning_influence.unlearn.forget`).
        settings: every setting of the run (:mod:`lightning_influence.unlearn.settings`).
        device: where the work runs.
        model_task: how batches are read, where the logits are and the loss
            (:class:`~lightning_influence.ModelTask`; default: ``(x, y[, ids])`` batches,
            cross-entropy). With a ``logits_fn`` the model is wrapped so that its forward
            returns the logits (parameters shared).
        loss_fn, batch_parser: sugar for ``model_task=ModelTask(loss_fn, batch_parser)``.
        capture: logits/features of the training samples recorded at the current weights
            (e.g. by a ``CaptureCallback``); used when it covers the candidate pool.
        show_progress: show progress bars.
    """
    task = ModelTask.of(model_task, loss_fn=loss_fn, batch_parser=batch_parser)
    model, loss_fn, batch_parser = task.logits_model(model), task.loss_fn, task.batch_parser
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"Every parameter of {type(model).__name__} is frozen (requires_grad=False): "
            "nothing may move. Unfreeze the parameters that unlearning may change (at least "
            "the output layer)."
        )
    if settings.selection.method != "all" and not selectable_layers(model):
        raise ValueError(
            f"{type(model).__name__} has no selectable layer (trainable nn.Linear/nn.Conv): "
            "use selection.method='all' to move every parameter."
        )
    if isinstance(settings.selection.layers, list):  # fail before anything runs
        named_layers(model, settings.selection.layers)
    timer = StageTimer()
    report = UnlearnReport(task=spec.task)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    h = settings.hessian
    with timer("read"), progress_bar(show_progress, _length(train_loader), "unlearn: read") as bar:
        data = read_training_data(
            Counted(train_loader, bar, "training batches"),
            batch_parser,
            spec.forget_mask,
            h.pool_size,
            settings.seed,
            needs_ids=spec.forgotten_ids is not None,
        )
        val = read_rows(val_loader, batch_parser, "validation")
        check_finite_inputs(val.x, "validation")
    spec.check(data)
    _check_output(model, data.candidates, device)
    with timer("capture"):
        pool, report.capture_source = capture_candidates(
            model, data.candidates, h, settings.batch_size, device, capture, show_progress
        )
    check_label_range(data.labels, int(pool.logits.shape[1]), "training")
    check_label_range(val.y, int(pool.logits.shape[1]), "validation")
    _check_scalar_loss(loss_fn, pool.logits[:4].to(device), pool.labels[:4].to(device))
    spec.check_labels(num_classes=int(pool.logits.shape[1]))
    with timer("sample"):
        subset = draw_subset(pool, h, settings.seed)
    with timer("prepare"):  # g's data and its round-1 gradient, the scorers
        problem = _build_problem(model, loss_fn, spec, data, val, subset, settings, device)
    _fill_sizes(report, data, subset)
    report.plan = {
        k: list(v) if isinstance(v, tuple) else v for k, v in asdict(problem.plan).items()
    }
    _warn_small_validation(len(val), settings.step.max_val_samples, problem.plan.max_retain_drop)
    if show_progress:
        _announce(problem, settings, report, len(val))
    with timer("measure"):
        before = _with_mia(model, problem, problem.scorer.metrics(model))
        for scorer in dict.fromkeys((problem.scorer, problem.search_scorer)):
            scorer.remember_reference(model)  # a scorer's own floor, from the unchanged model
        _set_removal_caps(problem, spec, settings.batch_size)
        start_score = problem.search_scorer.score(model)[0]
    if start_score <= problem.forget_target and not problem.plan.polish:
        return _nothing_to_do(report, problem, before, start_score, timer, device)
    best, candidates = _search_candidates(
        model, problem, settings, loss_fn, timer, show_progress, before
    )
    with timer("measure"):
        if best.step.applied:
            best.after = _with_mia(model, problem, best.after)
        report.forget_score = problem.search_scorer.score(model)[0]
    report.forget_target = problem.forget_target
    report.complete = report.forget_score <= problem.forget_target
    _fill_outcome(report, best, candidates, before)
    report.seconds = timer.total()
    report.peak_memory_bytes, report.memory_kind = peak_memory(device)
    return report


def _nothing_to_do(
    report: UnlearnReport,
    problem: Problem,
    before: dict[str, float],
    score: float,
    timer: StageTimer,
    device: torch.device,
) -> UnlearnReport:
    """The report of a run whose forget score met the target before any solve: no
    selection, solve or search runs and the weights are untouched (``solve.polish`` runs
    them anyway). A model that never fitted what it is asked to forget (flipped labels it
    did not learn, a class it never predicts) costs the reading and one score."""
    report.forget_score, report.forget_target, report.complete = score, problem.forget_target, True
    report.applied = False
    report.outcome = StepOutcome.ALREADY_COMPLETE.value
    report.reason = (
        f"forgetting was complete before any step (validation forget score {score:.4g} <= "
        f"target {problem.forget_target:g}): nothing to do, no solve was run "
        "(solve.polish=True runs the search anyway)"
    )
    report.before, report.after = before, dict(before)
    report.seconds = timer.total()
    report.peak_memory_bytes, report.memory_kind = peak_memory(device)
    return report


def _with_mia(model: nn.Module, problem: Problem, metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` plus, for the tasks that forget given ids (``problem.members`` set), the
    MIA-efficacy of the forgotten rows at the current weights."""
    if problem.members is None:
        return metrics
    assert problem.forget is not None and problem.val is not None
    return {
        **metrics,
        "mia_efficacy": mia_efficacy(model, problem.forget, problem.members, problem.val),
    }


def _length(loader: Any) -> int | None:
    """The number of batches of a loader (or of the DataLoader a pass wraps), if known."""
    inner = getattr(loader, "loader", loader)
    try:
        return len(inner)
    except TypeError:
        return None


def _announce(
    problem: Problem, settings: UnlearnSettings, report: UnlearnReport, n_val: int
) -> None:
    """One line, before the solves, of what the run will cost: HVPs, trials, response steps,
    and their sum as training epochs at most (:func:`worst_case_epochs`)."""
    hessian_rows = sum(len(b) for b in problem.hessian)
    s, st = settings.solve, settings.step
    candidates = len(problem.plan.ratios) * len(problem.plan.dampings)
    val = n_val if st.max_val_samples is None else min(n_val, st.max_val_samples)
    iterations = "" if s.solver == "dense" else f", up to {s.max_iter} solver iterations each"
    cost = worst_case_epochs(problem, settings, report.pool_size, val, candidates)
    epochs = (
        ""
        if cost is None
        else (
            f"; compute in training epochs: about {cost[1]:.2g} per solver iteration, "
            f"at most about {cost[0]:.1f} in all"
        )
    )
    rank_zero_info(
        f"unlearn: {report.forget_size} forgotten of {report.pool_size} training samples; "
        f"Hessian on {hessian_rows} rows; {candidates} candidate(s) x {problem.plan.rounds} "
        f"round(s){iterations} (each iteration: two products with the Hessian over those rows); "
        f"up to {st.steps + st.refine} step trials per round on {val} validation rows"
        + _announce_response(problem)
        + epochs
    )


def _set_removal_caps(problem: Problem, spec: ForgetSpec, size: int) -> None:
    """The task's per-row caps of the response descent's removal term
    (:meth:`ForgetSpec.removal_caps`), split like the removed rows' batches."""
    r = problem.response
    caps = None if r is None else spec.removal_caps(problem.scorer)
    if r is not None and caps is not None and len(caps) == sum(len(b) for b in r.remove):
        r.remove_caps = list(caps.split(size))  # the removed rows are the forgotten rows


def _announce_response(problem: Problem) -> str:
    if not problem.plan.response_steps:
        return ""
    when = (
        " if the rounds leave forgetting incomplete"
        if problem.plan.skip_response_when_complete
        else ""
    )
    return f"; then {problem.plan.response_steps} response steps{when}"


#: training passes (forward and backward) one Hessian-vector product costs per row: measured
#: on torchvision's ResNet-18, 10 CGLS iterations (20 products) over 128 rows took 2.5
#: epochs of 3,000 rows (benchmarks/resnet.py), i.e. about 3
HVP_PASSES = 3


def worst_case_epochs(
    problem: Problem, settings: UnlearnSettings, pool_size: int, val: int, candidates: int
) -> tuple[float, float] | None:
    """``(at most, per solver iteration)``: a run's compute in training epochs (one forward
    and backward pass over ``pool_size`` samples), for the announcement. It counts a
    Hessian-vector product over a row as :data:`HVP_PASSES` training passes, a scored
    validation row as a third of one (a forward pass), every solver iteration up to
    ``max_iter`` (CGLS: two products; MINRES: one; solves usually stop well before) and
    every response step. The dense solver is not estimated (None)."""
    s, st = settings.solve, settings.step
    if s.solver == "dense" or pool_size <= 0:
        return None
    hessian_rows = sum(len(b) for b in problem.hessian)
    products = 2 if s.estimator == "gif" else 1
    per_iteration = products * HVP_PASSES * hessian_rows
    solve = candidates * problem.plan.rounds * (s.max_iter * per_iteration + hessian_rows)
    search = candidates * problem.plan.rounds * (st.steps + st.refine) * val / 3
    response = 0.0
    if problem.response is not None and problem.plan.response_steps:
        r = problem.response
        step_rows = sum(len(group[0]) for group in (r.retained, r.add, r.remove) if group)
        scored = problem.plan.response_steps / max(settings.response.every, 1)
        response = problem.plan.response_steps * step_rows + scored * val / 3
    return (solve + search + response) / pool_size, per_iteration / pool_size


def _check_output(model: nn.Module, rows: Rows, device: torch.device) -> None:
    """Warn when the logits are a guess: the model returns several tensors in a tuple."""
    if len(rows) == 0:
        return
    with torch.no_grad():
        output = call_model(model, inputs_to(inputs_take(rows.x, slice(0, 2)), device))
    if isinstance(output, (tuple, list)):
        tensors = [o for o in output if isinstance(o, Tensor)]
        if len(tensors) > 1:
            shapes = ", ".join(str(list(t.shape)) for t in tensors)
            warnings.warn(
                f"The model returns a {type(output).__name__} of {len(tensors)} tensors "
                f"({shapes}); the first, {list(tensors[0].shape)}, is taken as the logits. If "
                "the logits are another, pass logits_fn=(output -> logits), e.g. "
                "lambda out: out[1].",
                UserWarning,
                stacklevel=3,
            )


#: the fewest validation samples a step is judged on without a warning
_MIN_VALIDATION = 20


def _warn_small_validation(n: int, limit: int | None, budget: float) -> None:
    """Warn when one validation sample moves the accuracy by more than the retained budget."""
    n = n if limit is None else min(n, limit)
    needed = max(_MIN_VALIDATION, math.ceil(1.0 / budget) if budget > 0 else 0)
    if n < needed:
        warnings.warn(
            f"The step is chosen on {n} validation samples, too few to judge it: one sample "
            f"changes their accuracy by {1.0 / max(n, 1):.3g} (the retained-accuracy budget is "
            f"{budget:g}). Give at least {needed} validation samples.",
            UserWarning,
            stacklevel=3,
        )


def _check_scalar_loss(loss_fn: LossFn, logits: Tensor, labels: Tensor) -> None:
    """Raise if ``loss_fn`` does not return one number (a mean over the batch)."""
    with torch.no_grad():
        loss = loss_fn(logits, labels)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = list(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a scalar mean loss, got {shape} (reduction='none'?): use "
            "reduction='mean', e.g. nn.CrossEntropyLoss() or F.cross_entropy."
        )


def _build_problem(
    model: nn.Module,
    loss_fn: LossFn,
    spec: ForgetSpec,
    data: TrainingData,
    val: Rows,
    subset: SubsetSelection,
    settings: UnlearnSettings,
    device: torch.device,
) -> Problem:
    size = settings.batch_size
    remove, add = spec.gradient_data(data.forget, data.candidates, settings.seed)
    added = None if add is None or len(add) == 0 else add
    plan = resolve_plan(spec, settings)
    n, m = len(data), len(data.forget)
    k = 0 if added is None else len(added)
    remove_weight, add_weight, retain_share = spec.gradient_weights(n, m, k)
    rows, weights = subset_rows(data.candidates, subset), subset.weights.to(torch.float32)
    retained = rows.batches(size, device, weights)
    forget = data.forget.to(device)
    val_on_device = val.to(device)
    scorer = spec.scorer(val_on_device, forget, loss_fn)
    searched = stratified_rows(val, settings.step.max_val_samples, settings.seed)
    search_scorer = scorer if searched is val else spec.scorer(searched.to(device), forget, loss_fn)
    if search_scorer is not scorer and isinstance(search_scorer, MembershipScorer):
        assert isinstance(scorer, MembershipScorer)
        search_scorer.share_memorised(scorer)  # one judgement of which rows are memorised
    r = settings.response
    gradient = RoundGradient(
        model,
        loss_fn,
        remove.batches(size, device),
        None if added is None else added.batches(size, device),
        retained,
        remove_weight=remove_weight,
        add_weight=add_weight,
        retain_share=retain_share,
        rounds=plan.rounds,
    )
    return Problem(
        hessian=(
            retained
            if added is None
            else _corrected_hessian_batches(
                rows,
                weights,
                added,
                n - m,
                size,
                device,
                plan.added_budget,
                settings.seed,
            )
        ),
        gradient=gradient,
        # Units are ranked where the change is largest: on the rows g adds (their loss is
        # high at the trained weights) when there are any, else on the forgotten rows.
        selection_rows=stratified_rows(
            added if added is not None else data.forget,
            settings.selection.max_rows,
            settings.seed,
        ).batches(size, device),
        scorer=scorer,
        search_scorer=search_scorer,
        plan=plan,
        forget_target=(
            spec.completion_target(model, val_on_device)
            if plan.forget_target is None
            else plan.forget_target
        ),
        response=ResponseData(
            retained=_shuffled(data.candidates, settings.seed).batches(size, device),
            add=None if added is None else added.batches(size, device),
            remove=remove.batches(size, device),
            remove_weight=r.remove_weight,
            retain_weight=r.retain_weight,
        )
        if plan.response_steps > 0
        else None,
        forget=forget,
        members=(
            _attack_members(data, val, settings.seed).to(device)
            if spec.forgotten_ids is not None
            else None
        ),
        val=val_on_device,
    )


def _attack_members(data: TrainingData, val: Rows, seed: int) -> Rows:
    """Retained training rows for the membership attack: as many as validation rows (the
    attack balances members and non-members), a seeded class-stratified draw of the pool."""
    return stratified_rows(data.candidates, max(len(val), 1), seed)


def _shuffled(rows: Rows, seed: int) -> Rows:
    """The rows in a seeded random order (mini-batches that mix classes and ids)."""
    return rows.take(torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)))


def _corrected_hessian_batches(
    rows: Rows,
    weights: Tensor,
    add: Rows,
    retained: int,
    size: int,
    device: torch.device,
    limit: int | None = None,
    seed: int = 0,
) -> list[Batch]:
    """The weighted Hessian subset of the *corrected* training set.

    The subset's weights stand for the ``retained`` samples; samples that the correction adds
    (a changed label, a repaired backdoor sample) are part of the corrected set too, each
    weighing as much as one retained sample. Without them H has no curvature where only the
    added samples live (e.g. the trigger's pixels), and the least-squares solve cannot move
    there. At most ``limit`` added rows enter (a seeded draw, each weighing for
    ``len(add) / limit`` of them).
    """
    per_sample = float(weights.sum()) / max(retained, 1)
    share = per_sample
    if limit is not None and len(add) > limit:  # a seeded draw standing for every added row
        share = per_sample * len(add) / limit
        draw = torch.randperm(len(add), generator=torch.Generator().manual_seed(seed))[:limit]
        add = add.take(torch.sort(draw).values)
    rows = Rows.cat([rows, add])
    weights = torch.cat([weights, torch.full((len(add),), share)])
    return rows.batches(size, device, weights)


def _fill_sizes(report: UnlearnReport, data: TrainingData, subset: SubsetSelection) -> None:
    report.pool_size, report.forget_size = len(data), len(data.forget)
    report.candidate_pool, report.hessian_size = len(data.candidates), len(subset)


def _search_candidates(
    model: nn.Module,
    problem: Problem,
    settings: UnlearnSettings,
    loss_fn: LossFn,
    timer: StageTimer,
    show: bool,
    before: dict[str, float],
) -> tuple[_Outcome, list[CandidateResult]]:
    """Every (ratio, damping) candidate in order; the best by (utility kept, F1) wins.

    Stops early at a candidate that completes forgetting within ``accept_retain_drop``.
    """
    base = weights_snapshot(model)
    best: _Outcome | None = None
    best_rank: tuple[bool, float] | None = None
    tried: list[CandidateResult] = []
    ratios = problem.plan.ratios
    grid = [(r, d) for r in ratios for d in problem.plan.dampings]
    masks_by_ratio: dict[float, dict[str, Tensor] | None] = {}
    for k, (ratio, damping) in enumerate(grid):
        restore_weights(model, base)  # units are ranked, and every candidate starts, at θ₀
        if ratio not in masks_by_ratio:
            with timer("select"):
                masks_by_ratio[ratio] = _select(model, problem, settings, ratio, loss_fn)
        label = f" candidate {k + 1}/{len(grid)}" if len(grid) > 1 else ""
        outcome = try_candidate(
            model,
            problem,
            settings,
            masks_by_ratio[ratio],
            ratio,
            damping,
            loss_fn,
            timer,
            show,
            label,
        )
        tried.append(outcome.result)
        kept = outcome.after["retain_acc"] >= before["retain_acc"] - settings.grid.retain_tolerance
        rank = (kept, validation_f1(outcome.after))
        if best_rank is None or rank > best_rank:
            best, best_rank = outcome, rank
        if _accepted(outcome, problem, settings, before):
            break
    assert best is not None
    restore_weights(model, best.weights if best.weights is not None else base)
    return best, tried


def _accepted(
    outcome: _Outcome, problem: Problem, settings: UnlearnSettings, before: dict[str, float]
) -> bool:
    after = outcome.result
    return (
        after.applied
        and after.forget_acc <= problem.forget_target
        and after.retain_acc >= before["retain_acc"] - settings.grid.accept_retain_drop
    )


def _select(
    model: nn.Module, problem: Problem, settings: UnlearnSettings, ratio: float, loss_fn: LossFn
) -> dict[str, Tensor] | None:
    method = problem.plan.selection_method
    if method == "all":
        return None
    return select_parameters(
        model,
        problem.selection_rows,
        method=method,
        ratio=ratio,
        loss_fn=loss_fn,
        seed=settings.seed,
        layers=problem.plan.selection_layers,
        min_units=problem.plan.min_units,
    )


def try_candidate(
    model: nn.Module,
    problem: Problem,
    settings: UnlearnSettings,
    masks: dict[str, Tensor] | None,
    ratio: float,
    damping: float,
    loss_fn: LossFn,
    timer: StageTimer,
    show: bool = False,
    label: str = "",
) -> _Outcome:
    """Solve for the direction with these masks and damping, then search the step.

    With ``problem.plan.rounds > 1`` the solve is re-linearised: after a kept step that has not
    completed forgetting, g and H are formed again at the new weights and another step is
    searched; every round's floor is the task's retained-accuracy budget below the best
    retained accuracy seen so far (before round 1 or at any trial).

    Args:
        model: the model, changed in place when a step is kept.
        problem: the data of g and H, the scorer and the task's budgets.
        settings: the run's settings.
        masks: the parameters that may move (None: all).
        ratio: the selection ratio these masks were built with (for the record).
        damping: the damping of the solve.
        loss_fn: the mean-reduced loss.
        timer: accumulates the solve and search seconds.
        show: show progress bars.
        label: text for the progress bars.
    """
    steps: list[StepResult] = []
    solves: list[InfluenceReport] = []
    peak: float | None = None  # the best retained accuracy seen in earlier rounds
    anchors = None
    if problem.response is not None:  # the model is at θ₀ here: the Bregman term's reference
        anchors = response_anchors(model, problem.response.retained)
    for k in range(problem.plan.rounds):
        tag = f"{label} round {k + 1}/{problem.plan.rounds}" if problem.plan.rounds > 1 else label
        with timer("solve"):
            g = problem.gradient.at(model, k)
            delta, solve = _solve(model, problem, settings, g, masks, damping, loss_fn, show, tag)
        with timer("search"):
            step = _search(model, problem, settings, delta, show, tag, peak)
        steps.append(step)
        solves.append(solve)
        if not step.applied or step.best is None:
            break
        if step.best.forget_acc <= problem.forget_target and not problem.plan.polish:
            break
        peak = best_retained(steps)
        if step.best.retain_acc <= peak - problem.plan.max_retain_drop:
            break  # the budget below the best retained accuracy seen is spent
    if anchors is not None and not _skip_response(steps, problem, settings):
        reference = steps[0].before.retain_acc if steps[0].before is not None else None
        with timer("response"):
            steps.append(
                _respond(model, problem, settings, anchors, masks, loss_fn, show, label, reference)
            )
    return _outcome(model, problem, _merge_steps(steps), _merge_solves(solves), ratio, damping)


def _skip_response(steps: list[StepResult], problem: Problem, settings: UnlearnSettings) -> bool:
    """``response.skip_when_complete`` and the rounds left forgetting complete."""
    if not problem.plan.skip_response_when_complete or problem.plan.polish:
        return False
    kept = [s.best for s in steps if s.applied and s.best is not None]
    before = steps[0].before
    score = kept[-1].forget_acc if kept else (before.forget_acc if before else math.inf)
    return score <= problem.forget_target


def _respond(
    model: nn.Module,
    problem: Problem,
    settings: UnlearnSettings,
    anchors: list[Tensor],
    masks: dict[str, Tensor] | None,
    loss_fn: LossFn,
    show: bool,
    label: str,
    retain_reference: float | None,
) -> StepResult:
    """One response descent from the model's current weights (see
    :mod:`~lightning_influence.unlearn.response`); the floor is measured from ``retain_reference``
    (the retained accuracy before unlearning) and the descent's start."""
    assert problem.response is not None
    r = settings.response
    total = problem.plan.response_steps
    with progress_bar(show, -(-total // r.every), f"unlearn{label}: response descent") as bar:
        return response_descent(
            model,
            problem.response,
            anchors,
            problem.search_scorer.score,
            loss_fn,
            steps=total,
            lr=problem.plan.response_lr,
            every=r.every,
            patience=r.patience,
            backtracks=r.backtracks,
            stop_at=problem.forget_target if problem.plan.stop_response_when_complete else None,
            repaired_at=problem.forget_target if r.stop_when_repaired else None,
            max_retain_drop=problem.plan.max_retain_drop,
            retain_reference=retain_reference,
            masks=masks if r.selected_only else None,
            progress=bar.step_callback,
        )


def _outcome(
    model: nn.Module,
    problem: Problem,
    step: StepResult,
    solve: InfluenceReport,
    ratio: float,
    damping: float,
) -> _Outcome:
    after = problem.scorer.metrics(model)  # the kept step, or the original weights
    shown = step.best or step.before
    forget, retain = (shown.forget_acc, shown.retain_acc) if shown else (float("nan"),) * 2
    result = CandidateResult(
        ratio=ratio,
        damping=damping,
        applied=step.applied,
        radius=step.radius,
        f1=after.get("f1", float("nan")),
        forget_acc=forget,
        retain_acc=retain,
        solver_iterations=solve.iterations,
        solver_converged=solve.converged,
    )
    weights = weights_snapshot(model) if step.applied else None
    return _Outcome(result, step, solve, after, weights)


def _merge_steps(steps: list[StepResult]) -> StepResult:
    """One record of all rounds: the first round's start, the last kept step, every trial."""
    kept = [s for s in steps if s.applied]
    last = kept[-1] if kept else steps[0]
    trials = [replace(t, round=i) for i, s in enumerate(steps) for t in s.trials]
    merged = replace(last, before=steps[0].before, trials=trials)
    merged.applied = bool(kept)
    merged.radius = sum(s.radius for s in kept)
    merged.step_norm = sum(s.step_norm for s in kept)
    merged.seconds = sum(s.seconds for s in steps)
    if len(steps) > 1:
        merged.reason = f"{len(kept)} of {len(steps)} rounds kept a step; last: {steps[-1].reason}"
        merged.outcome = steps[-1].outcome
    return merged


def _merge_solves(solves: list[InfluenceReport]) -> InfluenceReport:
    """The last solve's report with iterations, HVPs and seconds summed over the rounds."""
    merged = replace(solves[-1])
    merged.iterations = sum(s.iterations for s in solves)
    merged.hvps = sum(s.hvps for s in solves)
    merged.seconds = sum(s.seconds for s in solves)
    merged.converged = all(s.converged for s in solves)
    return merged


def _solve(
    model: nn.Module,
    problem: Problem,
    settings: UnlearnSettings,
    gradient: dict[str, Tensor],
    masks: dict[str, Tensor] | None,
    damping: float,
    loss_fn: LossFn,
    show: bool,
    label: str,
) -> tuple[dict[str, Tensor], InfluenceReport]:
    """One influence solve; an undamped run is early-stopped on purpose, so no warning."""
    s = settings.solve
    # total: max_iter, the most a Krylov solve takes (it usually stops early, at tol)
    dense = s.solver == "dense"
    desc = f"unlearn{label}: solve (damping {damping:g}" + (")" if dense else ", at most)")
    total = None if dense else s.max_iter
    with progress_bar(show, total, desc, tol=None if dense else s.tol) as bar:
        options: dict[str, Any] = {}
        if s.solver != "dense":
            options = {"tol": s.tol, "max_iter": s.max_iter, "progress": bar.solver_callback}
        with warnings.catch_warnings():
            if damping == 0:
                warnings.simplefilter("ignore", ConvergenceWarning)
            return influence(
                model,
                loss_fn,
                problem.hessian,
                gradient=gradient,
                selection=masks,
                estimator=s.estimator,
                solver=s.solver,
                curvature=problem.plan.curvature,
                damping=damping,
                params=_curvature_params(problem, masks),
                **options,
            )


def _cheap_scorer(
    model: nn.Module, problem: Problem, moving: str | None, stack: contextlib.ExitStack
) -> Scorer:
    """The step search's scorer. When one layer alone moves and its output is the logits
    (class removal's default), trials cost one layer call on its recorded inputs, so all of
    validation is scored; otherwise the (possibly subsampled) search scorer runs the model."""
    if moving is not None:
        for scorer in dict.fromkeys((problem.scorer, problem.search_scorer)):
            if stack.enter_context(scorer.only_moving(model, moving)):
                return scorer
    return problem.search_scorer


def _curvature_params(problem: Problem, masks: dict[str, Tensor] | None) -> list[str] | None:
    """The parameters whose curvature enters: with ``selection.layers`` other than 'all',
    those of the chosen layers (the rest of the network held fixed); else every one."""
    if masks is None or problem.plan.selection_layers == "all":
        return None
    return list(masks)


def _search(
    model: nn.Module,
    problem: Problem,
    settings: UnlearnSettings,
    delta: dict[str, Tensor],
    show: bool,
    label: str,
    retain_reference: float | None,
) -> StepResult:
    """Step along ``delta``, scored on validation data (see :func:`~lightning_influence.step_search`)."""
    st = settings.step
    moving = moving_module(model, [k for k, d in delta.items() if bool(torch.any(d != 0))])
    with contextlib.ExitStack() as stack:
        scorer = _cheap_scorer(model, problem, moving, stack)
        bar = stack.enter_context(
            progress_bar(show, st.steps + st.refine, f"unlearn{label}: step search")
        )
        return step_search(
            model,
            delta,
            scorer.score,
            steps=st.steps,
            min_radius=st.min_radius,
            max_radius=st.max_radius,
            forget_target=problem.forget_target,
            max_retain_drop=problem.plan.max_retain_drop,
            refine=st.refine,
            progress=bar.step_callback,
            retain_reference=retain_reference,
            f1_tolerance=problem.plan.f1_tolerance,
            keep=problem.plan.keep,
        )


def _fill_outcome(
    report: UnlearnReport,
    best: _Outcome,
    candidates: list[CandidateResult],
    before: dict[str, float],
) -> None:
    report.candidates = [asdict(c) for c in candidates]
    report.ratio, report.damping = best.result.ratio, best.result.damping
    report.solver = plain(best.solve.as_dict())
    report.selected_params = best.solve.selected_params
    report.total_params = best.solve.total_params
    report.applied, report.reason = best.step.applied, best.step.reason
    report.outcome = "" if best.step.outcome is None else best.step.outcome.value
    report.radius, report.step_norm = best.step.radius, best.step.step_norm
    report.trials = [asdict(t) for t in best.step.trials]
    report.before = before
    report.after = best.after if best.step.applied else dict(before)
