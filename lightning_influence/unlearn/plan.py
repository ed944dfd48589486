"""The plan of one unlearning run: the settings with the task's defaults applied, once.

A setting left ``None`` means "the task's own" (:class:`~lightning_influence.unlearn.settings.
UnlearnSettings` documents each). The task's values are class variables of its
:class:`~lightning_influence.unlearn.forget.ForgetSpec`; :func:`resolve_plan` applies them in this one
place and returns a frozen :class:`Plan`, which the pipeline reads and nothing changes
afterwards. :func:`task_defaults` lists every task's value of each such setting (the help
texts are checked against it by the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_influence.unlearn.forget import (
    BackdoorRepair,
    ClassRemoval,
    ForgetSpec,
    LabelChange,
    SampleRemoval,
)
from lightning_influence.unlearn.settings import UnlearnSettings

__all__ = ["TASKS", "Plan", "resolve_plan", "task_defaults"]

#: the built-in tasks, by the name their reports carry
TASKS: dict[str, type[ForgetSpec]] = {
    spec.task: spec for spec in (ClassRemoval, SampleRemoval, LabelChange, BackdoorRepair)
}


@dataclass(frozen=True)
class Plan:
    """What one run does, every task default resolved (a setting given wins over it).

    Each field names the setting it resolves (``section.name``); ``forget_target`` stays
    ``None`` when the task computes it from the trained model (see the task's scoring).
    """

    #: ``step.max_retain_drop``
    max_retain_drop: float
    #: ``step.f1_tolerance``
    f1_tolerance: float
    #: ``step.keep``
    keep: str
    #: ``step.forget_target`` (None: the task's, computed at the trained weights)
    forget_target: float | None
    #: ``solve.damping`` as the candidate list
    dampings: tuple[float, ...]
    #: ``solve.curvature``
    curvature: str
    #: ``solve.rounds``
    rounds: int
    #: ``solve.polish``
    polish: bool
    #: ``selection.method``
    selection_method: str
    #: ``selection.layers``
    selection_layers: str | tuple[str, ...]
    #: ``selection.ratio`` as the candidate list
    ratios: tuple[float, ...]
    #: the task's fewest units per selected layer
    min_units: int
    #: ``response.steps``
    response_steps: int
    #: ``response.lr``
    response_lr: float
    #: ``response.skip_when_complete``
    skip_response_when_complete: bool
    #: ``response.stop_when_complete``
    stop_response_when_complete: bool
    #: ``hessian.added_budget``
    added_budget: int


def _given(value, default):
    return default if value is None else value


def resolve_plan(spec: ForgetSpec, settings: UnlearnSettings) -> Plan:
    """The run's :class:`Plan`: each ``None`` setting replaced by ``spec``'s own value.

    Args:
        spec: the task.
        settings: the run's settings.
    """
    return _resolve(type(spec), settings, spec.min_units)


def _resolve(spec: type[ForgetSpec], settings: UnlearnSettings, min_units: int) -> Plan:
    step, solve, sel, r = settings.step, settings.solve, settings.selection, settings.response
    layers = sel.layers or spec.layers
    return Plan(
        max_retain_drop=_given(step.max_retain_drop, spec.max_retain_drop),
        f1_tolerance=_given(step.f1_tolerance, spec.f1_tolerance),
        keep=_given(step.keep, spec.keep_step),
        forget_target=step.forget_target,
        dampings=tuple(solve.dampings or [spec.damping]),
        curvature=solve.curvature or spec.curvature,
        rounds=_given(solve.rounds, spec.rounds),
        polish=solve.polish,
        selection_method=sel.method or spec.selection,
        selection_layers=tuple(layers) if isinstance(layers, list) else layers,
        ratios=tuple(sel.ratios or [spec.ratio]),
        min_units=min_units,
        response_steps=_given(r.steps, spec.response_steps),
        response_lr=_given(r.lr, spec.response_lr),
        skip_response_when_complete=_given(r.skip_when_complete, spec.skip_response_when_complete),
        stop_response_when_complete=_given(r.stop_when_complete, spec.stop_response_when_complete),
        added_budget=_given(settings.hessian.added_budget, settings.hessian.budget),
    )


#: the settings whose ``None`` means the task's own, and the :class:`Plan` field of each
TASK_SETTINGS: dict[str, str] = {
    "step.max_retain_drop": "max_retain_drop",
    "step.f1_tolerance": "f1_tolerance",
    "step.keep": "keep",
    "solve.damping": "dampings",
    "solve.curvature": "curvature",
    "solve.rounds": "rounds",
    "selection.method": "selection_method",
    "selection.layers": "selection_layers",
    "selection.ratio": "ratios",
    "response.steps": "response_steps",
    "response.lr": "response_lr",
    "response.skip_when_complete": "skip_response_when_complete",
    "response.stop_when_complete": "stop_response_when_complete",
}


def task_defaults(setting: str) -> dict[str, object]:
    """``{task: its value}`` of a setting left ``None`` (a key of :data:`TASK_SETTINGS`);
    a candidate list of one value gives that value."""
    name = TASK_SETTINGS[setting]
    out = {}
    for task, spec_type in TASKS.items():
        plan = _resolve(spec_type, UnlearnSettings(), min_units=1)
        value = getattr(plan, name)
        out[task] = value[0] if isinstance(value, tuple) and len(value) == 1 else value
    return out
