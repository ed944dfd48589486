"""``li.influence``: the parameter change that removing (or relabelling) data would cause."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, get_args

import torch
from torch import Tensor, nn

from lightning_influence.data._modules import eval_mode, only_trainable
from lightning_influence.data.batches import Batch, as_batches
from lightning_influence.solve import vectors as V
from lightning_influence.solve.curvature import (
    DenseHessianOperator,
    GaussNewtonOperator,
    HessianOperator,
    LossFn,
    default_loss,
    mean_gradient,
    trainable_params,
)
from lightning_influence.solve.estimators import ESTIMATORS, build_system
from lightning_influence.solve.solvers import SOLVERS, SolveReport
from lightning_influence.solve.vectors import ParamDict
from lightning_influence.unlearn.settings import CurvatureName


@dataclass
class InfluenceReport(SolveReport):
    """A :class:`~lightning_influence.SolveReport` plus what was solved for.

    Args:
        estimator: ``gif``, ``fif``, ``pif`` or ``if``.
        selected_params: how many parameters were allowed to move.
        total_params: how many trainable parameters the model has.
        curvature: ``hessian`` or ``gauss_newton``.
        damping: the damping of the solve.
    """

    estimator: str = "gif"
    curvature: str = "hessian"
    damping: float = 0.0
    selected_params: int = 0
    total_params: int = 0


CURVATURES: tuple[str, ...] = get_args(CurvatureName)


def validate_selection(
    model: nn.Module, selection: Mapping[str, Tensor] | None
) -> dict[str, Tensor] | None:
    """Check a selection against the model's trainable parameters; raise naming the fix.

    Args:
        model: the model.
        selection: ``{parameter name: bool mask}`` or ``None`` (every parameter).

    Returns:
        The masks as bool tensors on the parameters' devices (``None`` stays ``None``).
    """
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
    forget_data: Any = None,
    selection: Mapping[str, Tensor] | None = None,
    estimator: str = "gif",
    solver: str = "krylov",
    forget_weight: float = 1.0,
    add_data: Any = None,
    damping: float = 0.0,
    *,
    gradient: Mapping[str, Tensor] | None = None,
    curvature: str = "hessian",
    params: Collection[str] | None = None,
    **solver_options: Any,
) -> tuple[ParamDict, InfluenceReport]:
    """Estimate Δθ such that θ̂ + Δθ approximates the model trained without ``forget_data``.

    H is the Hessian of the (weighted) mean loss over ``hessian_data``; g is
    ``forget_weight`` × (mean gradient over ``forget_data`` − mean gradient over ``add_data``),
    or the given ``gradient``. Each estimator is a linear system in H and g
    (:mod:`lightning_influence.solve.estimators`). The weights are never modified; the model runs
    in ``eval()``, each submodule's mode restored.

    Args:
        model: the trained model; only parameters with ``requires_grad`` enter.
        loss_fn: a mean-reducing loss ``loss_fn(outputs, targets)`` (``None``: cross-entropy).
        hessian_data: the data of H: a batch or an iterable of batches (e.g. a DataLoader),
            read by :func:`~lightning_influence.as_batches`; per-sample weights come from
            :class:`~lightning_influence.Batch` ``(x, y, weights=w)`` (as the samplers return).
        forget_data: the data to remove (same forms); give it or ``gradient``.
        selection: bool masks ``{name: mask}`` of the parameters allowed to move (from
            :func:`~lightning_influence.select_parameters`); ``None`` moves every parameter.
        estimator: ``gif`` | ``fif`` | ``pif`` | ``if`` (``if`` always uses every parameter).
        solver: ``krylov`` | ``lissa`` | ``dense`` (the float64 reference for tiny models).
        forget_weight: the factor on g; ``m / (n − m)`` when removing m of n samples gives the
            faithful first-order magnitude.
        add_data: data whose mean gradient is subtracted from g (e.g. corrected labels).
        damping: λ ≥ 0: Tikhonov λ‖x‖² for ``gif``, H + λI for the others.
        curvature: ``hessian`` (exact, may be indefinite) or ``gauss_newton`` (the generalised
            Gauss–Newton matrix, positive semi-definite; see
            :class:`~lightning_influence.solve.curvature.GaussNewtonOperator`).
        gradient: a right-hand side g formed by the caller (keyed by trainable parameter
            name), instead of ``forget_data``/``add_data`` (e.g. a re-linearised round's g,
            see :mod:`lightning_influence.unlearn.rounds`).
        params: names of the parameters whose curvature and gradient enter (the rows of H
            and of g); the rest of the network is held fixed, as if frozen. ``None``: every
            trainable parameter. The selection must lie within them.
        **solver_options: passed to the solver (``tol``, ``max_iter``, ``method``,
            ``variant``, ``scale``, ``scale_step``, ``progress`` ...); ``max_params`` (default
            5000) caps the model size of ``solver="dense"``.

    Returns:
        ``delta`` keyed by parameter name (the parameters' shapes and dtypes, zero outside the
        selection) and an :class:`InfluenceReport`.
    """
    _check_choices(estimator, solver, damping)
    if curvature not in CURVATURES:
        raise ValueError(f"Unknown curvature {curvature!r}: choose one of {CURVATURES}.")
    if (forget_data is None) == (gradient is None):
        raise ValueError("influence() needs exactly one of forget_data= or gradient=.")
    loss_fn = loss_fn or default_loss
    masks = validate_selection(model, selection)
    if estimator == "if":
        masks = None
    if params is not None and masks is not None and not set(masks) <= set(params):
        raise ValueError(
            f"The selection names {sorted(set(masks) - set(params))}, outside params=: the "
            "parameters that move must be among those whose curvature enters."
        )
    h_batches = as_batches(hessian_data, "hessian_data")
    f_batches = None if forget_data is None else as_batches(forget_data, "forget_data")
    a_batches = as_batches(add_data, "add_data") if add_data is not None else None
    max_params = solver_options.pop("max_params", 5000)
    start = time.perf_counter()
    with eval_mode(model), only_trainable(model, params):
        g = (
            {k: t for k, t in gradient.items() if params is None or k in params}
            if gradient is not None
            else influence_gradient(model, loss_fn, f_batches, a_batches, forget_weight)
        )
        hessian = _hessian(model, loss_fn, h_batches, solver, max_params, curvature)
        if solver == "dense":
            g = {k: t.to(torch.float64) for k, t in g.items()}
        system = build_system(estimator, hessian, g, masks, damping)
        delta, report = system.solve(solver, **solver_options)
        report.hvps = hessian.hvp_count
    delta, out = _finish(model, delta, report, estimator, masks, time.perf_counter() - start)
    out.curvature, out.damping = curvature, float(damping)
    return delta, out


def _check_choices(estimator: str, solver: str, damping: float) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {estimator!r}: choose one of {ESTIMATORS}.")
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}: choose one of {SOLVERS}.")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}.")


def _hessian(
    model: nn.Module,
    loss_fn: LossFn,
    batches: list[Batch],
    solver: str,
    max_params: int,
    curvature: str,
) -> HessianOperator | DenseHessianOperator:
    """The explicit float64 matrix for the dense solver, else the mat-vec operator."""
    if solver == "dense":
        return DenseHessianOperator(model, loss_fn, batches, max_params, curvature)
    if curvature == "gauss_newton":
        return GaussNewtonOperator(model, loss_fn, batches)
    return HessianOperator(model, loss_fn, batches)


def influence_gradient(
    model: nn.Module,
    loss_fn: LossFn,
    forget: Any,
    add: Any = None,
    forget_weight: float = 1.0,
) -> ParamDict:
    """g = ``forget_weight`` × (mean gradient on ``forget`` − mean gradient on ``add``).

    Args:
        model: the model (in ``eval()`` if it has BatchNorm or dropout).
        loss_fn: a mean-reducing loss.
        forget: the data whose loss g removes (a batch or an iterable of batches).
        add: the data whose loss g adds, or ``None``.
        forget_weight: the factor on g.
    """
    g = mean_gradient(model, loss_fn, forget, "forget_data")
    if add is not None:
        g = V.add(g, mean_gradient(model, loss_fn, add, "add_data"), -1.0)
    return V.scale(g, forget_weight)


def _finish(
    model: nn.Module,
    delta: ParamDict,
    report: SolveReport,
    estimator: str,
    masks: Mapping[str, Tensor] | None,
    seconds: float,
) -> tuple[ParamDict, InfluenceReport]:
    """``delta`` in the parameters' dtypes and device, and the full report."""
    if not V.is_finite(delta):
        raise FloatingPointError(
            "The influence solve produced NaN/inf: check the data and the solver's report."
        )
    params = trainable_params(model)
    out = InfluenceReport(**report.__dict__, estimator=estimator)
    out.seconds = seconds
    out.selected_params = sum(int(m.sum()) for m in V.as_masks(masks, params).values())
    out.total_params = sum(p.numel() for p in params.values())
    delta = {k: t.detach().to(params[k].device, params[k].dtype) for k, t in delta.items()}
    return delta, out
