"""Every UnlearnCallback argument is checked at construction, with a message naming it."""

from __future__ import annotations

import pytest

from lightning_influence import UnlearnCallback
from lightning_influence.unlearn.settings import StepArguments


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"step": {"steps": 0}}, "step.steps"),
        ({"step": {"min_radius": 1.0, "max_radius": 0.1}}, "min_radius"),
        ({"step": {"min_radius": 0.0}}, "min_radius"),
        ({"step": {"refine": -1}}, "step.refine"),
        ({"step": {"refine": 1.5}}, "step.refine"),
        ({"step": {"max_retain_drop": 1.5}}, "step.max_retain_drop"),
        ({"solve": {"tol": -1e-3}}, "solve.tol"),
        ({"solve": {"tol": 0.0}}, "solve.tol"),
        ({"solve": {"max_iter": 0}}, "solve.max_iter"),
        ({"solve": {"damping": -1.0}}, "solve.damping"),
        ({"solve": {"damping": []}}, "solve.damping"),
        ({"solve": {"estimator": "newton"}}, "solve.estimator"),
        ({"solve": {"rounds": 0}}, "solve.rounds"),
        ({"selection": {"ratio": 0.0}}, "selection.ratio"),
        ({"selection": {"ratio": [0.1, 2.0]}}, "selection.ratio"),
        ({"selection": {"method": "biggest"}}, "selection.method"),
        ({"hessian": {"budget": 0}}, "hessian.budget"),
        ({"hessian": {"sampler": "kmeans"}}, "hessian.sampler"),
        ({"hessian": {"budget": 64, "pool_size": 10}}, "hessian.pool_size"),
        ({"grid": {"retain_tolerance": -0.1}}, "grid.retain_tolerance"),
        ({"response": {"steps": -1}}, "response.steps"),
        ({"response": {"lr": 0}}, "response.lr"),
        ({"response": {"bogus": 1}}, "bogus"),
        ({"seed": -1}, "seed"),
        ({"batch_size": 0}, "batch_size"),
        ({"hessian": 3}, "hessian must be"),
        ({"step": {"bogus": 1}}, "bogus"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, names):
    with pytest.raises((ValueError, TypeError), match=names):
        UnlearnCallback(forget_classes=[3], **kwargs)


@pytest.mark.parametrize(
    "task, names",
    [
        ({}, "exactly one forget task"),
        ({"forget_classes": [3], "forget_ids": [1]}, "exactly one forget task"),
        ({"forget_classes": []}, "forget_classes is empty"),
        ({"forget_classes": [2.5]}, "forget_classes must hold integers"),
        ({"forget_ids": [1.0, 2.0]}, "forget_ids must hold integers"),
        ({"forget_ids": [True]}, "forget_ids must hold integers"),
        ({"relabel": {1: 2.5}}, "relabel labels must hold integers"),
        ({"relabel": {1.5: 2}}, "relabel ids must hold integers"),
        ({"relabel": [1, 2]}, "relabel must be a dict"),
        ({"backdoor_trigger": lambda x: x, "backdoor_target": 0}, "forget_ids"),
        (
            {"backdoor_trigger": lambda x: x, "backdoor_target": 0.5, "forget_ids": [1]},
            "backdoor_target must hold integers",
        ),
        ({"backdoor_trigger": "patch", "backdoor_target": 0, "forget_ids": [1]}, "callable"),
        ({"forget_classes": [3], "backdoor_true_labels": {1: 2}}, "only used with"),
        ({"forget_ids": [1], "backdoor_repair_rows": 5}, "only used with"),
        (
            {
                "backdoor_trigger": lambda x: x,
                "backdoor_target": 0,
                "forget_ids": [1],
                "backdoor_repair_rows": -1,
            },
            "backdoor_repair_rows must be >= 0",
        ),
        (
            {
                "backdoor_trigger": lambda x: x,
                "backdoor_target": 0,
                "forget_ids": [1],
                "backdoor_repair_rows": 2.5,
            },
            "backdoor_repair_rows must hold integers",
        ),
        ({"forget_classes": [3], "logits_fn": "logits"}, "logits_fn must be a callable"),
    ],
)
def test_bad_tasks_fail_at_construction(task, names):
    with pytest.raises(ValueError, match=names):
        UnlearnCallback(**task)


def test_settings_dataclasses_are_accepted_as_is():
    step = StepArguments(steps=4, max_radius=1.0)
    cb = UnlearnCallback(forget_classes=[3], step=step)
    assert cb.settings.step is step


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"step": {"min_radius": "0.001"}}, "step.min_radius must be a number"),
        ({"step": {"max_retain_drop": "0.01"}}, "step.max_retain_drop must be a number"),
        ({"grid": {"accept_retain_drop": "0.01"}}, "grid.accept_retain_drop must be a number"),
        ({"solve": {"polish": "false"}}, "solve.polish must be True or False"),
        ({"response": {"selected_only": 1}}, "response.selected_only must be True or False"),
    ],
)
def test_settings_given_as_strings_name_the_field(kwargs, names):
    with pytest.raises(ValueError, match=names):
        UnlearnCallback(forget_classes=[3], **kwargs)


def test_ids_and_classes_as_scalars_numpy_and_tensors():
    import numpy as np
    import torch

    assert UnlearnCallback(forget_classes=3).spec.classes == [3]
    assert UnlearnCallback(forget_classes=np.int64(3)).spec.classes == [3]
    assert UnlearnCallback(forget_classes=np.array([3, 1])).spec.classes == [1, 3]
    assert UnlearnCallback(forget_ids=torch.arange(5)).spec.ids == [0, 1, 2, 3, 4]
    assert UnlearnCallback(forget_ids=[np.int64(2), np.int32(1)]).spec.ids == [1, 2]
    assert UnlearnCallback(relabel={np.int64(4): np.int64(2)}).spec.new_labels == {4: 2}
    cb = UnlearnCallback(
        forget_ids=torch.tensor([7, 5]),
        backdoor_trigger=lambda x: x,
        backdoor_target=0,
        backdoor_true_labels=torch.tensor([1, 2]),
    )
    assert cb.spec.ids == [5, 7] and cb.spec.true_labels == {7: 1, 5: 2}
    with pytest.raises(ValueError, match="forget_ids must hold integers"):
        UnlearnCallback(forget_ids=torch.tensor([0.5]))
