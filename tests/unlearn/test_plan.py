"""The task's defaults are applied once, into a frozen plan; the help texts name them."""

from __future__ import annotations

import dataclasses

import pytest

from lightning_influence.unlearn import settings as S
from lightning_influence.unlearn.forget import (
    BackdoorRepair,
    ClassRemoval,
    LabelChange,
    SampleRemoval,
)
from lightning_influence.unlearn.plan import TASK_SETTINGS, TASKS, resolve_plan, task_defaults

SPECS = {
    "class": ClassRemoval([1, 2]),
    "samples": SampleRemoval(ids=[3, 4]),
    "relabel": LabelChange(new_labels={3: 0}),
    "backdoor": BackdoorRepair(ids=[3], trigger=lambda x: x, target=0),
}


def test_every_built_in_task_is_listed():
    assert set(TASKS) == set(SPECS)


@pytest.mark.parametrize("task", sorted(SPECS))
def test_a_none_setting_takes_the_tasks_value_and_a_given_one_wins(task):
    spec = SPECS[task]
    plan = resolve_plan(spec, S.UnlearnSettings())
    assert plan.max_retain_drop == spec.max_retain_drop and plan.keep == spec.keep_step
    assert plan.rounds == spec.rounds and plan.curvature == spec.curvature
    assert plan.dampings == (spec.damping,) and plan.ratios == (spec.ratio,)
    assert plan.selection_method == spec.selection and plan.selection_layers == spec.layers
    assert plan.response_steps == spec.response_steps and plan.min_units == spec.min_units
    given = S.UnlearnSettings(
        step=S.StepArguments(max_retain_drop=0.3, keep="smallest"),
        solve=S.SolveArguments(damping=[0.5, 0.05], curvature="gauss_newton", rounds=2),
        selection=S.SelectionArguments(method="random", ratio=0.5, layers=["net.fc2"]),
        response=S.ResponseArguments(steps=7, skip_when_complete=True),
    )
    plan = resolve_plan(spec, given)
    assert (plan.max_retain_drop, plan.keep, plan.dampings) == (0.3, "smallest", (0.5, 0.05))
    assert (plan.curvature, plan.rounds, plan.ratios) == ("gauss_newton", 2, (0.5,))
    assert (plan.selection_method, plan.selection_layers) == ("random", ("net.fc2",))
    assert plan.response_steps == 7 and plan.skip_response_when_complete is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.rounds = 4  # type: ignore[misc]


def test_the_class_count_sets_the_fewest_units():
    assert resolve_plan(ClassRemoval([1, 2, 5]), S.UnlearnSettings()).min_units == 3


def _help(setting: str) -> str:
    section, name = setting.split(".")
    group = {f.name: f.type for f in dataclasses.fields(S.UnlearnSettings)}[section]
    cls = getattr(S, group) if isinstance(group, str) else group
    return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}[name]


def _spellings(value: object) -> set[str]:
    if isinstance(value, float):
        return {repr(value), f"{value:g}", f"{value:.0e}".replace("e-0", "e-")}
    return {str(value)}


@pytest.mark.parametrize(
    "setting", [s for s in TASK_SETTINGS if not isinstance(task_defaults(s)["class"], bool)]
)
def test_each_help_text_names_every_tasks_default(setting):
    """The help says "None: the task's own (...)" in words; every value it must name is the
    plan's, so a changed default without its help text fails here. (The two booleans of the
    response descent say "skip"/"stop" per task in words and are not matched.)"""
    text = _help(setting)
    assert "task's own" in text
    for task, value in task_defaults(setting).items():
        assert any(s in text for s in _spellings(value)), (setting, task, value, text)
