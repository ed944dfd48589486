"""The unlearning report in the Trainer's loggers: scalars, the step-search curve, a table.

Logged on rank zero through ``trainer.loggers`` (never ``self.log``: ``on_fit_end`` is outside
any loop). A logger that raises only warns: the model is already unlearned and
``callback.report`` holds every value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_influence.attribution.figures import (
    STEP_SEARCH_TAG,
    log_figure,
    step_search_array,
    takes_images,
)
from lightning_influence.unlearn.report import UnlearnReport
from lightning_influence.unlearn.settings import UnlearnSettings

__all__ = ["log_report", "settings_hyperparameters"]


def log_report(
    trainer: pl.Trainer, rep: UnlearnReport, settings: UnlearnSettings | None = None
) -> None:
    """The report to every logger (rank 0; a logger that fails only warns).

    Every logger gets the before/after values and the run's key numbers as scalars at
    ``trainer.global_step``, and the step-search curve as ``unlearn/trial_*`` scalars at
    ``step = trainer.global_step + k`` for the k-th trial of ``report.trials`` (steps keep
    increasing, as loggers such as W&B require). Loggers that take a table also get
    the before/after table: ``log_table`` (e.g. WandbLogger) or ``experiment.add_text``
    (TensorBoardLogger, as markdown). ``settings`` go to ``log_hyperparams`` as flat
    ``unlearn/<group>.<field>`` entries.
    """
    metrics = {f"unlearn/before_{k}": v for k, v in rep.before.items()}
    metrics.update({f"unlearn/after_{k}": v for k, v in rep.after.items()})
    metrics.update(
        {
            "unlearn/applied": float(rep.applied),
            "unlearn/radius": rep.radius,
            "unlearn/seconds": rep.seconds.get("total", math.nan),
            "unlearn/solver_iterations": float(rep.solver.get("iterations", math.nan)),
            "unlearn/selected_params": float(rep.selected_params),
            "unlearn/ratio": rep.ratio,
            "unlearn/damping": rep.damping,
        }
    )
    if trainer.is_global_zero:
        step = trainer.global_step
        params = None if settings is None else settings_hyperparameters(settings, rep.task)
        for logger in trainer.loggers:
            if params is not None:
                _guarded(logger, "the settings", lambda lg: lg.log_hyperparams(params))
            _guarded(logger, "the report", lambda lg: lg.log_metrics(metrics, step=step))
            _guarded(logger, "the step-search curve", lambda lg: _log_curve(lg, rep, step))
            _guarded(logger, "the step-search figure", lambda lg: _log_figure(lg, rep, step))
            _guarded(logger, "the before/after table", lambda lg: _log_table(lg, rep, step))
            _guarded(logger, "the report", lambda lg: lg.save())
    b, a = rep.before, rep.after
    rank_zero_info(
        f"UnlearnCallback ({rep.task}): val forget acc {b.get('forget_acc', math.nan):.3f} -> "
        f"{a.get('forget_acc', math.nan):.3f}, retained acc {b.get('retain_acc', math.nan):.3f} -> "
        f"{a.get('retain_acc', math.nan):.3f}, F1 {b.get('f1', math.nan):.3f} -> "
        f"{a.get('f1', math.nan):.3f} in {rep.seconds.get('total', math.nan):.2f} s"
    )


def _guarded(logger: Any, what: str, log: Callable[[Any], None]) -> None:
    """``log(logger)``; a failure only warns (the model is unlearned: a logger must not undo it)."""
    try:
        log(logger)
    except Exception as err:
        rank_zero_warn(
            f"UnlearnCallback: {type(logger).__name__} failed to log {what} "
            f"({type(err).__name__}: {err}); the model is unlearned and "
            "callback.report holds every value."
        )


#: report.trials fields -> the step-search curve's scalars
_CURVE = {
    "radius": "unlearn/trial_radius",
    "forget_acc": "unlearn/trial_forget_score",
    "retain_acc": "unlearn/trial_retain_acc",
    "f1": "unlearn/trial_f1",
}


def _log_curve(logger: Any, rep: UnlearnReport, start: int) -> None:
    """One row per step-search trial, at ``step = start + k`` for the k-th trial, with the
    trial's index and round as scalars of their own (an axis to plot the curve against)."""
    for k, trial in enumerate(rep.trials):
        row = {key: float(trial[f]) for f, key in _CURVE.items()}
        row["unlearn/trial_index"] = float(k)
        row["unlearn/trial_round"] = float(trial.get("round", 0))
        logger.log_metrics(row, step=start + k)


def _log_figure(logger: Any, rep: UnlearnReport, step: int) -> None:
    """The step-search curve as a figure, for loggers that take images (needs matplotlib)."""
    if not rep.trials or not takes_images(logger):
        return
    try:
        array = step_search_array(rep.trials, _kept_radius(rep))
    except ImportError:  # matplotlib is optional: the scalars above hold the same curve
        return
    log_figure(logger, STEP_SEARCH_TAG, array, step)


def _kept_radius(rep: UnlearnReport) -> float | None:
    """The kept step's radius for a one-round run (several rounds: the report sums them)."""
    one_round = len({int(t.get("round", 0)) for t in rep.trials}) == 1
    return rep.radius if rep.applied and one_round else None


def settings_hyperparameters(settings: UnlearnSettings, task: str) -> dict[str, Any]:
    """The run's settings as flat ``unlearn/<group>.<field>`` hyperparameters."""
    flat: dict[str, Any] = {"unlearn/task": task}
    for group, values in asdict(settings).items():
        if isinstance(values, dict):
            flat.update({f"unlearn/{group}.{k}": _plain(v) for k, v in values.items()})
        else:
            flat[f"unlearn/{group}"] = _plain(values)
    return flat


def _plain(value: Any) -> Any:
    """A value every logger's hyperparameter store takes (lists as their text, None as 'None')."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def _report_rows(rep: UnlearnReport) -> list[list[Any]]:
    """``[metric, before, after]`` for every validation value."""
    names = list(rep.before) + [k for k in rep.after if k not in rep.before]
    return [[k, rep.before.get(k, math.nan), rep.after.get(k, math.nan)] for k in names]


def _report_markdown(rep: UnlearnReport) -> str:
    lines = ["| metric | before | after |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {b:.4f} | {a:.4f} |" for k, b, a in _report_rows(rep)]
    lines.append("")
    lines.append(
        f"task {rep.task}, applied {rep.applied} ({rep.reason}); radius {rep.radius:.3g}, "
        f"ratio {rep.ratio:g}, damping {rep.damping:g}, "
        f"{rep.solver.get('iterations', 0)} solver iterations, "
        f"{len(rep.trials)} step trials, {rep.seconds.get('total', math.nan):.2f} s"
    )
    return "\n".join(lines)


def _log_table(logger: Any, rep: UnlearnReport, step: int) -> None:
    """The before/after table where the logger takes one (duck typed); others log none."""
    log_table = getattr(logger, "log_table", None)
    if callable(log_table):  # WandbLogger's signature
        log_table(
            key="unlearn/report", columns=["metric", "before", "after"], data=_report_rows(rep)
        )
        return
    add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
    if callable(add_text):  # TensorBoard's SummaryWriter
        add_text("unlearn/report", _report_markdown(rep), global_step=step)
