"""The pipeline's parts on their own: settings, forget specifications, the one-pass reader."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_influence.data.batches import parse_batch
from lightning_influence.data.pool import Rows, id_hash, read_rows, read_training_data
from lightning_influence.unlearn.forget import (
    BackdoorRepair,
    ClassRemoval,
    LabelChange,
    SampleRemoval,
    forget_spec_from_arguments,
)
from lightning_influence.unlearn.scoring import MembershipScorer, SplitScorer
from lightning_influence.unlearn.settings import (
    GridArguments,
    HessianArguments,
    SelectionArguments,
    SolveArguments,
    StepArguments,
)


def _data(n: int = 100) -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, generator=gen), torch.arange(n) % 4)


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: HessianArguments(budget=0), "budget"),
        (lambda: HessianArguments(sampler="kmeans"), "sampler"),
        (lambda: HessianArguments(budget=64, pool_size=10), "pool_size"),
        (lambda: SelectionArguments(ratio=0.0), "ratio"),
        (lambda: SelectionArguments(ratio=[]), "ratio"),
        (lambda: SelectionArguments(method="biggest"), "method"),
        (lambda: SolveArguments(damping=-1.0), "damping"),
        (lambda: SolveArguments(tol=-1e-3), "tol"),
        (lambda: SolveArguments(max_iter=0), "max_iter"),
        (lambda: StepArguments(steps=0), "steps"),
        (lambda: StepArguments(refine=-1), "refine"),
        (lambda: StepArguments(min_radius=2.0, max_radius=1.0), "radius"),
        (lambda: StepArguments(max_retain_drop=2.0), "max_retain_drop"),
        (lambda: GridArguments(retain_tolerance=-0.1), "retain_tolerance"),
    ],
)
def test_settings_fail_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_grid_lists():
    assert SelectionArguments(ratio=[0.05, 0.2]).ratios == [0.05, 0.2]
    assert SelectionArguments(method="all", ratio=0.3).ratios == [1.0]
    assert SolveArguments(damping=[0, 1e-3]).dampings == [0.0, 1e-3]


# ------------------------------------------------------------------ forget specifications


@pytest.mark.parametrize(
    "kwargs, kind",
    [
        ({"forget_classes": [3]}, ClassRemoval),
        ({"forget_ids": [1, 2]}, SampleRemoval),
        ({"relabel": {1: 2}}, LabelChange),
        (
            {"forget_ids": [1], "backdoor_trigger": lambda x: x, "backdoor_target": 0},
            BackdoorRepair,
        ),
    ],
)
def test_flat_arguments_build_one_spec(kwargs, kind):
    assert isinstance(forget_spec_from_arguments(**kwargs), kind)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"forget_classes": [1], "forget_ids": [2]}, "exactly one"),
        ({"forget_ids": [1.5]}, "integers"),
        ({"forget_classes": []}, "empty"),
        ({"backdoor_trigger": lambda x: x, "backdoor_target": 0}, "poisoned"),
        ({"forget_ids": [1], "backdoor_true_labels": {1: 2}}, "only used with"),
        (
            {
                "forget_ids": [1, 2],
                "backdoor_trigger": lambda x: x,
                "backdoor_target": 0,
                "backdoor_true_labels": [3],
            },
            "one label per",
        ),
    ],
)
def test_bad_forget_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        forget_spec_from_arguments(**kwargs)


def test_backdoor_true_labels_follow_the_given_id_order():
    spec = forget_spec_from_arguments(
        forget_ids=[9, 4],
        backdoor_trigger=lambda x: x,
        backdoor_target=0,
        backdoor_true_labels=torch.tensor([1, 2]),
    )
    assert spec.true_labels == {9: 1, 4: 2}


def test_backdoor_gradient_data_removes_stored_and_adds_true_labels():
    spec = BackdoorRepair([0, 1], lambda x: x, target=0, true_labels={1: 3})
    rows = Rows(torch.randn(2, 3), torch.tensor([0, 0]), torch.tensor([0, 1]))
    remove, add = spec.gradient_data(rows)
    assert torch.equal(remove.y, torch.tensor([0, 0]))  # as stored: the target label
    assert add is not None and add.ids.tolist() == [1] and add.y.tolist() == [3]


def test_backdoor_repair_rows_are_triggered_retained_rows_with_their_own_labels():
    """Without true labels g still adds rows: retained non-target samples, triggered, with
    their clean labels (as many as poisoned ids by default, class-stratified, seeded)."""

    def stamp(x):
        out = x.clone()
        out[:, -1] = 9.0
        return out

    spec = BackdoorRepair([0, 1, 2], stamp, target=0)
    poisoned = Rows(torch.zeros(3, 2), torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]))
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3, 3])
    retained = Rows(torch.randn(10, 2), y, torch.arange(10, 20))
    remove, add = spec.gradient_data(poisoned, retained, seed=0)
    # each class's share of 3 is rounded (stratified_rows), so 4 rows here: 1, 1, 2
    assert torch.equal(remove.ids, poisoned.ids) and add is not None and len(add) == 4
    assert bool((add.y != 0).all()) and bool((add.x[:, -1] == 9.0).all())
    lookup = dict(zip(retained.ids.tolist(), retained.y.tolist(), strict=True))
    assert [lookup[i] for i in add.ids.tolist()] == add.y.tolist()  # their own labels
    assert torch.equal(add.x[:, 0], retained.x[add.ids - 10, 0])  # only the trigger changed
    _, again = spec.gradient_data(poisoned, retained, seed=0)
    assert torch.equal(again.ids, add.ids)  # seeded
    none = BackdoorRepair([0, 1, 2], stamp, target=0, repair_rows=0)
    assert none.gradient_data(poisoned, retained)[1] is None


# ------------------------------------------------------------------ one pass, bounded pool


def test_read_training_data_keeps_forget_rows_and_a_seeded_pool():
    ds = _data()
    spec = ClassRemoval([1])
    a = read_training_data(DataLoader(ds, batch_size=7), parse_batch, spec.forget_mask, 20, 0)
    b = read_training_data(DataLoader(ds, batch_size=13), parse_batch, spec.forget_mask, 20, 0)
    assert len(a) == 100 and len(a.forget) == 25 and bool((a.forget.y == 1).all())
    assert len(a.candidates) == 20 and not bool((a.candidates.y == 1).any())
    # the pool depends on the ids and the seed, not on batching
    assert torch.equal(a.candidates.ids, b.candidates.ids)
    assert torch.equal(a.candidates.x, ds.tensors[0][a.candidates.ids])
    c = read_training_data(DataLoader(ds, batch_size=7), parse_batch, spec.forget_mask, 20, 1)
    assert not torch.equal(a.candidates.ids, c.candidates.ids)
    # without a bound every retained row is a candidate
    d = read_training_data(DataLoader(ds, batch_size=7), parse_batch, spec.forget_mask, None, 0)
    assert len(d.candidates) == 75


def test_id_hash_is_uniform_and_seeded():
    u = id_hash(torch.arange(20000), 0)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert not torch.equal(u, id_hash(torch.arange(20000), 1))


def test_read_rows_drops_repeated_ids():
    x = torch.randn(4, 2)
    batches = [
        (x[:3], torch.tensor([0, 1, 2]), torch.tensor([5, 6, 7])),
        (x[3:], torch.tensor([0]), torch.tensor([6])),
    ]
    rows = read_rows(batches, parse_batch)
    assert rows.ids.tolist() == [5, 6, 7] and torch.equal(rows.x, x[:3])


# ------------------------------------------------------------------ scorers


def _constant_model(logits: torch.Tensor) -> nn.Module:
    class Fixed(nn.Module):
        def forward(self, x):
            return logits[x[:, 0].long()]

    return Fixed()


def test_split_scorer_counts_forget_and_retained_rows():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [5.0, 0.0]])
    x = torch.arange(4.0).unsqueeze(1)
    y = torch.tensor([0, 0, 0, 1])
    mask = torch.tensor([True, True, False, False])
    scorer = SplitScorer(x, y, mask)
    assert scorer.score(_constant_model(logits)) == (0.5, 0.5)


def test_membership_scorer_measures_the_target_once():
    logits = torch.tensor([[9.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    model = _constant_model(logits)
    forget = Rows(torch.tensor([[0.0]]), torch.tensor([0]), torch.tensor([0]))
    val = Rows(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 0]), torch.tensor([1, 2]))
    scorer = MembershipScorer(forget, val)
    familiarity, retain = scorer.score(model)
    assert retain == 1.0 and 0.99 < familiarity < 1.0  # loss ~1e-4 vs held-out ~0.31
    held = scorer.heldout_loss
    logits[1:] = torch.tensor([0.0, 1.0])  # validation gets worse: the target stays put
    scorer.score(model)
    assert scorer.heldout_loss == held


def test_stratified_rows_keeps_every_label_and_its_share():
    from lightning_influence.data.pool import Rows, stratified_rows

    y = torch.cat([torch.zeros(900, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    rows = Rows(torch.arange(1000.0).reshape(-1, 1), y, torch.arange(1000))
    sub = stratified_rows(rows, 200, seed=0)
    assert len(sub) == 200 and int((sub.y == 1).sum()) == 20
    assert torch.equal(sub.ids, torch.sort(sub.ids).values)  # order kept
    assert torch.equal(stratified_rows(rows, 200, seed=0).ids, sub.ids)  # seeded
    assert stratified_rows(rows, None, seed=0) is rows and stratified_rows(rows, 5000, 0) is rows


def test_membership_scorer_uses_the_run_loss():
    """Sample removal's held-out comparison uses the callback's loss_fn, per sample."""
    from lightning_influence.data.pool import Rows
    from lightning_influence.unlearn.scoring import MembershipScorer

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    val = Rows(torch.randn(40, 3), torch.randint(0, 4, (40,)), torch.arange(40))
    forget = Rows(torch.randn(5, 3), torch.randint(0, 4, (5,)), torch.arange(40, 45))

    def doubled(logits, y):  # mean-reduced, twice cross-entropy
        return 2.0 * torch.nn.functional.cross_entropy(logits, y)

    plain = MembershipScorer(forget, val).metrics(model)
    scaled = MembershipScorer(forget, val, doubled).metrics(model)
    assert scaled["forget_loss"] == pytest.approx(2 * plain["forget_loss"], rel=1e-5)
    assert scaled["heldout_loss"] == pytest.approx(2 * plain["heldout_loss"], rel=1e-5)
    assert scaled["familiarity"] == pytest.approx(plain["familiarity"], abs=1e-6)


def test_fitted_scorer_scores_mean_label_confidence():
    """SampleRemoval(completion='budget'): the forget score is the forgotten rows' mean
    label confidence (no completion short of 0), the retained score validation accuracy.
    (MIA-efficacy is added by the pipeline: test_forget_tasks.py.)"""
    from lightning_influence.unlearn.forget import SampleRemoval
    from lightning_influence.unlearn.scoring import FittedScorer

    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    model = _constant_model(logits)
    forget = Rows(torch.tensor([[0.0], [1.0]]), torch.tensor([0, 0]), torch.tensor([0, 1]))
    val = Rows(torch.tensor([[2.0], [3.0]]), torch.tensor([0, 0]), torch.tensor([2, 3]))
    scorer = SampleRemoval([0, 1], completion="budget").scorer(val, forget)
    assert isinstance(scorer, FittedScorer)
    conf, retain = scorer.score(model)
    assert conf == pytest.approx((torch.sigmoid(torch.tensor(2.0)).item() + 0.5) / 2)
    assert retain == 0.5
    metrics = scorer.metrics(model)
    assert metrics["forget_acc"] == 1.0
    assert metrics["f1"] == pytest.approx(2 * (1 - conf) * retain / ((1 - conf) + retain))


def test_added_rows_in_the_hessian_subset_are_capped_and_weigh_for_all():
    from lightning_influence.unlearn.pipeline import _corrected_hessian_batches

    def rows(n, start):
        return Rows(torch.randn(n, 3), torch.arange(n) % 2, torch.arange(start, start + n))

    subset, weights, added = rows(8, 0), torch.full((8,), 5.0), rows(50, 100)
    full = _corrected_hessian_batches(subset, weights, added, 40, 16, torch.device("cpu"))
    capped = _corrected_hessian_batches(
        subset, weights, added, 40, 16, torch.device("cpu"), limit=10, seed=3
    )
    again = _corrected_hessian_batches(
        subset, weights, added, 40, 16, torch.device("cpu"), limit=10, seed=3
    )

    def ids_weights(batches):
        return torch.cat([b.ids for b in batches]), torch.cat([b.weights for b in batches])

    (fi, fw), (ci, cw), (ai, _) = ids_weights(full), ids_weights(capped), ids_weights(again)
    assert len(fi) == 58 and len(ci) == 18 and torch.equal(ci, ai)  # seeded
    assert set(ci[8:].tolist()) <= set(range(100, 150))
    # the added rows weigh as much in total, capped or not (each retained sample weighs 1)
    assert torch.isclose(cw[8:].sum(), fw[8:].sum()) and torch.isclose(fw[8], torch.tensor(1.0))
    with pytest.raises(ValueError, match="hessian.added_budget"):
        HessianArguments(added_budget=0)


def test_backdoor_completion_target_is_the_clean_victims_target_rate():
    """Forgetting a backdoor is complete once triggered inputs are called the target no more
    often than the same inputs without the trigger; other tasks aim at 0."""

    class Model(nn.Module):  # class 0 exactly where the first feature is positive
        def forward(self, x):
            return torch.stack([x[:, 0], torch.zeros(len(x)), torch.zeros(len(x))], -1)

    x = torch.tensor([[1.0], [-1.0], [-1.0], [1.0], [-1.0], [1.0]])
    y = torch.tensor([0, 1, 1, 2, 2, 1])  # victims: rows 1..5; called 0: rows 3 and 5
    val = Rows(x, y, torch.arange(6))
    spec = BackdoorRepair([0], lambda t: t, target=0)
    assert spec.completion_target(Model(), val) == pytest.approx(2 / 5)
    assert spec.completion_target(Model(), val.take(y == 0)) == 0.0  # no victims
    assert SampleRemoval([0]).completion_target(Model(), val) == 0.0


def test_label_change_floors_the_old_classes_validation_accuracy():
    """remember_reference (the unchanged model) records the old classes' accuracy; a later
    score that costs them more than old_class_drop keeps its true retained accuracy and is
    flagged guard_broken (never kept), while a step that costs other classes as much is not."""
    forget = Rows(torch.zeros(2, 1), torch.tensor([1, 1]), torch.tensor([0, 1]))  # old label 1
    val = Rows(torch.zeros(8, 1), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.arange(10, 18))
    spec = LabelChange({0: 2, 1: 2})
    scorer = spec.scorer(val, forget)

    class Fixed(nn.Module):  # predicts the given labels, whatever the input
        def __init__(self, labels):
            super().__init__()
            self.labels = labels

        def forward(self, x):
            return nn.functional.one_hot(self.labels[: len(x)], 3).float()

    start = torch.tensor([1, 1, 0, 0, 0, 0, 1, 1, 1, 1])  # forget rows, then val rows
    scorer.remember_reference(Fixed(start))
    assert scorer.score(Fixed(start)) == (1.0, 1.0)
    assert not scorer.score(Fixed(start)).guard_broken
    one_old_lost = torch.tensor([2, 2, 0, 0, 0, 0, 2, 1, 1, 1])  # class 1: 1.0 -> 0.75
    lost = scorer.score(Fixed(one_old_lost))
    assert lost == (0.0, 0.875) and lost.guard_broken  # the true retained accuracy, flagged
    one_other_lost = torch.tensor([2, 2, 2, 0, 0, 0, 1, 1, 1, 1])  # class 0 pays instead
    other = scorer.score(Fixed(one_other_lost))
    assert other == (0.0, 0.875) and not other.guard_broken
    unguarded = LabelChange({0: 2, 1: 2})
    unguarded.old_class_drop = None
    plain = unguarded.scorer(val, forget)
    assert plain.score(Fixed(start)) == (1.0, 1.0)
    assert plain.score(Fixed(one_old_lost)) == (0.0, 0.875)
