"""``li.influence``: the parameter change that removing (or relabelling) data would cause."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_influence import vectors as V
from lightning_influence.curvature import (
    HessianOperator,
    LossFn,
    default_loss,
    dense_hessian,
    mean_gradient,
    trainable_params,
)
from lightning_influence.data import as_batches
from lightning_influence.estimators import ESTIMATORS, build_problem
from lightning_influence.solvers import (
    SOLVERS,
    SolveReport,
    as_masks,
    lissa,
    solve_dense,
    solve_krylov,
)
from lightning_influence.vectors import ParamDict


@dataclass
class InfluenceReport(SolveReport):
    """A ``SolveReport`` plus what was solved for."""

    estimator: str = "gif"
    selected_params: int = 0
    total_params: int = 0


def validate_selection(
    model: nn.Module, selection: Mapping[str, Tensor] | None
) -> dict[str, Tensor] | None:
    """Check a selection against the model's trainable parameters; raise naming the fix."""
    if selection is None:
        return None
    params = trainable_params(model)
    if not isinstance(selection, Mapping):
        raise TypeError(
            "selection must be a dict {parameter name: bool mask}, as li.select_parameters returns."
        )
    unknown = sorted(set(selection) - set(params))
    if unknown:
        raise ValueError(
            f"selection names parameters the model does not train: {unknown[:5]}. "
            f"Valid names include {list(params)[:5]}; build masks with li.select_parameters(model, ...)."
        )
    out = {}
    for k, m in selection.items():
        if not isinstance(m, Tensor) or m.shape != params[k].shape:
            shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(
                f"selection[{k!r}] has shape {shape}, the parameter has {tuple(params[k].shape)}."
            )
        out[k] = m.to(device=params[k].device, dtype=torch.bool)
    if sum(int(m.sum()) for m in out.values()) == 0:
        raise ValueError(
            "The selection is empty (no True entry): raise ratio or pass selection=None for all parameters."
        )
    return out


def influence(
    model: nn.Module,
    loss_fn: LossFn | None,
    hessian_data: Any,
    forget_data: Any,
    selection: Mapping[str, Tensor] | None = None,
    estimator: str = "gif",
    solver: str = "krylov",
    forget_weight: float = 1.0,
    add_data: Any = None,
    damping: float = 0.0,
    **solver_options: Any,
) -> tuple[ParamDict, InfluenceReport]:
    """Estimate Δθ such that θ̂ + Δθ approximates the model trained without ``forget_data``.

    H is the Hessian of the (weighted) mean loss over ``hessian_data``; g is
    ``forget_weight`` × (mean gradient over ``forget_data`` − mean gradient over ``add_data``).
    For a faithful magnitude when removing m of n samples, use ``forget_weight = m / (n − m)``.
    ``estimator`` is one of gif | fif | pif | if (``if`` always uses every parameter);
    ``solver`` one of krylov | lissa | dense; ``solver_options`` go to the solver (``tol``,
    ``max_iter``, ``method``, ``variant``, ``scale``, ``max_params``, ``progress`` ...).
    ``damping`` λ ≥ 0: Tikhonov λ‖x‖² for ``gif``, H + λI for the others (see
    :func:`~lightning_influence.estimators.build_problem`).
    Returns ``delta`` keyed by parameter name (zero outside the selection) and a report. The
    model's weights are never modified; it is evaluated in ``eval()`` mode and restored after.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {estimator!r}: choose one of {ESTIMATORS}.")
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}: choose one of {SOLVERS}.")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}.")
    loss_fn = loss_fn or default_loss
    masks = validate_selection(model, selection)
    if estimator == "if":
        masks = None
    h_batches = as_batches(hessian_data, "hessian_data")
    f_batches = as_batches(forget_data, "forget_data")
    a_batches = as_batches(add_data, "add_data") if add_data is not None else None

    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        g = mean_gradient(model, loss_fn, f_batches, "forget_data")
        if a_batches is not None:
            g = V.add(g, mean_gradient(model, loss_fn, a_batches, "add_data"), -1.0)
        g = V.scale(g, forget_weight)
        params = trainable_params(model)
        if solver == "dense":
            delta, report = _dense(
                model, loss_fn, h_batches, g, estimator, masks, damping, **solver_options
            )
        else:
            op = HessianOperator(model, loss_fn, h_batches)
            problem, out_mask = build_problem(estimator, op, g, masks, damping)
            if solver == "krylov":
                x, report = solve_krylov(problem, **solver_options)
            else:
                x, report = lissa(problem, **solver_options)
            report.hvps = op.hvp_count
            delta = V.mask(x, out_mask)
        if not V.is_finite(delta):
            raise FloatingPointError(
                "The influence solve produced NaN/inf: check the data and the solver's report."
            )
    finally:
        model.train(was_training)
    full = as_masks(masks, params)
    out = InfluenceReport(**report.__dict__, estimator=estimator)
    out.seconds = time.perf_counter() - start
    out.selected_params = sum(int(m.sum()) for m in full.values())
    out.total_params = sum(p.numel() for p in params.values())
    return {k: t.detach().to(params[k].dtype) for k, t in delta.items()}, out


def _dense(
    model: nn.Module,
    loss_fn: LossFn,
    h_batches: list,
    g: ParamDict,
    estimator: str,
    masks: Mapping[str, Tensor] | None,
    damping: float = 0.0,
    max_params: int = 5000,
    **unused: Any,
) -> tuple[ParamDict, SolveReport]:
    """Dense reference: explicit float64 Hessian and closed-form least squares."""
    params = trainable_params(model)
    H = dense_hessian(model, loss_fn, h_batches, max_params=max_params)
    g_flat = V.flatten(g).to(torch.float64)
    sel = V.flatten(as_masks(masks, params))
    x, report = solve_dense(estimator, H, g_flat, sel, damping)
    report.hvps = 0
    return V.unflatten(x, params), report
