"""Which forgotten rows are memorised: fitted while held-out neighbours say otherwise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_influence.data.pool import Rows
from lightning_influence.unlearn.memorised import memorised_rows
from lightning_influence.unlearn.scoring import MembershipScorer, predict_logits


def _model() -> nn.Module:
    """One feature x; logits (-10x, 10x): class 1 wherever x > 0."""
    head = nn.Linear(1, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[-10.0], [10.0]]))
        head.bias.zero_()
    return nn.Sequential(nn.Identity(), head).eval()


def _rows(x: list[float], y: list[int]) -> Rows:
    return Rows(torch.tensor(x).view(-1, 1), torch.tensor(y), torch.arange(len(y)))


def _val() -> Rows:
    # class 0 just left of the boundary, class 1 far right
    left = [-0.01 * (i + 1) for i in range(12)]
    right = [2.0 + 0.01 * i for i in range(12)]
    return _rows(left + right, [0] * 12 + [1] * 12)


def test_a_fitted_row_among_the_other_class_is_memorised_and_a_typical_one_is_not():
    forget = _rows([0.05, 2.05, -0.05], [1, 1, 1])  # fitted outlier, typical, unfitted
    found = memorised_rows(_model(), forget, _val(), predict_logits)
    assert found is not None
    assert found.rows.tolist() == [True, False, False]
    # what a model that never saw them would give label 1: their neighbours' probability
    near_boundary = torch.sigmoid(20 * torch.tensor([-0.01 * (i + 1) for i in range(10)]))
    assert found.expected[0].item() == pytest.approx(near_boundary.mean().item(), rel=1e-5)
    assert found.expected[1].item() > 0.99
    assert found.expected_share() == pytest.approx(found.expected[0].item())


def test_the_membership_score_counts_memorised_rows_still_fitted():
    """The loss alone calls the outlier forgotten (its loss is above held-out data's); the
    memorised share keeps the forget score at 1 until it is no longer predicted as 1."""
    model, forget = _model(), _rows([0.05], [1])
    scorer = MembershipScorer(forget, _val())
    forget_score, _ = scorer.score(model)
    metrics = scorer.metrics(model)
    assert metrics["familiarity"] == 0.0 and metrics["memorised"] == 1.0
    assert forget_score == 1.0
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([1.0, -1.0]))  # the boundary moves right of 0.05
    assert scorer.score(model)[0] == 0.0
    # judged once, at the first call's weights: the same row still counts
    assert scorer.metrics(model)["memorised_fitted"] == 0.0


def test_the_memorised_score_is_measured_from_what_retraining_would_leave_fitted():
    """Two memorised rows, one unfitted: half still fitted. With target 'expected' the
    score is how far that is above the expected share, scaled to 1 at all fitted; with
    'zero' (the default) it is the share itself."""
    val = _val()
    forget = _rows([0.05, 0.06], [1, 1])
    model = _model()
    scores = {}
    for target in ("expected", "zero"):
        scorer = MembershipScorer(forget, val, memorised_target=target)
        scorer.score(model)  # judged at these weights: both rows memorised
        with torch.no_grad():
            model[1].bias.copy_(torch.tensor([0.55, -0.55]))  # unfits 0.05, keeps 0.06
        metrics = scorer.metrics(model)
        assert metrics["memorised"] == 2.0 and metrics["memorised_fitted"] == 0.5
        e = metrics["memorised_expected"]
        scores[target] = (scorer.score(model)[0], e)
        with torch.no_grad():
            model[1].bias.zero_()
    score, e = scores["expected"]
    assert 0.0 < e < 0.5 and score == pytest.approx((0.5 - e) / (1.0 - e))
    assert scores["zero"] == (0.5, e)  # the estimate is reported whichever the target


def test_the_loss_alone_is_kept_when_asked():
    scorer = MembershipScorer(_rows([0.05], [1]), _val(), memorised=False)
    assert scorer.score(_model())[0] == 0.0
    assert "memorised" not in scorer.metrics(_model())


def test_no_row_is_judged_when_the_output_layer_does_not_give_the_logits():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = _model()[1]

        def forward(self, x):
            return 2.0 * self.head(x)  # the layer's output is not the logits themselves

    assert memorised_rows(Scaled().eval(), _rows([0.05], [1]), _val(), predict_logits) is None


def test_rows_with_dict_inputs_and_a_tuple_output_are_judged():
    """A Hugging Face-style model (keyword inputs, a tuple out) is judged like any other:
    the output layer was looked up with the rows' inputs read as a batch of their own, and
    a dict of inputs failed that parse, so no row was ever judged."""

    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()

        def forward(self, pixel_values):
            return (self.net(pixel_values),)

    def rows(r: Rows) -> Rows:
        return Rows({"pixel_values": r.x}, r.y, r.ids)

    forget = rows(_rows([0.05, 2.05, -0.05], [1, 1, 1]))
    found = memorised_rows(Keyword().eval(), forget, rows(_val()), predict_logits)
    assert found is not None and found.rows.tolist() == [True, False, False]


def test_the_removal_caps_come_from_the_judged_rows_only_when_asked():
    from lightning_influence.unlearn.forget import SampleRemoval

    scorer = MembershipScorer(_rows([0.05, 2.05], [1, 1]), _val())
    scorer.score(_model())  # judged at these weights
    assert SampleRemoval([0, 1]).removal_caps(scorer) is None  # the default: log C
    caps = SampleRemoval([0, 1], removal_cap="expected").removal_caps(scorer)
    assert caps is not None and caps.shape == (2,)
    expected = scorer.memorised.expected.clamp(min=0.5)  # two classes: at most log 2
    assert torch.allclose(caps, -torch.log(expected))


def _spread_val() -> Rows:
    """60 validation rows: class 0 left of 0, class 1 right of it, and three rows labelled
    1 among the class-0 rows (the model predicts 0 there: unseen rows it gets wrong)."""
    left = [-0.05 * (i + 1) for i in range(30)]
    right = [0.05 * (i + 1) for i in range(27)]
    return _rows(left + right + [-0.5, -0.52, -0.54], [0] * 30 + [1] * 27 + [1, 1, 1])


def test_the_calibrated_rate_equals_a_dense_count_over_alike_validation_rows():
    """Each forgotten row's calibrated rate is (validation rows whose own neighbour
    estimate is within 0.05 of the row's and that the model predicts right + 20 x the
    row's estimate) / (those rows + 20), each validation row's estimate taken without
    itself: recomputed here by brute force."""
    from lightning_influence.unlearn.memorised import CALIBRATION_WIDTH, PRIOR_ROWS

    model, val = _model(), _spread_val()
    forget = _rows([-0.51, 0.3, 1.2], [1, 1, 1])  # among the mislabelled rows; two typical
    found = memorised_rows(model, forget, val, predict_logits, k=3)
    assert found is not None and found.calibrated is not None
    prob = model(val.x).softmax(-1).double()
    dist = torch.cdist(val.x.double(), val.x.double())
    dist.fill_diagonal_(float("inf"))
    e_val = prob[dist.topk(3, largest=False).indices, val.y.view(-1, 1)].mean(1)
    right = (prob.argmax(-1) == val.y).double()
    for e, got in zip(found.expected, found.calibrated, strict=True):
        alike = (e_val - e).abs() <= CALIBRATION_WIDTH + 1e-12
        want = (right[alike].sum() + PRIOR_ROWS * e) / (alike.sum() + PRIOR_ROWS)
        assert got.item() == pytest.approx(want.item(), abs=1e-9)
    assert found.calibrated[0] < 0.2 < 0.9 < found.calibrated[1]
    # the memorised row counts 0, the others their rates
    rows = found.rows.double()
    assert found.unseen_accuracy() == pytest.approx(
        float(((1 - rows) * found.calibrated).mean()), abs=1e-12
    )


def test_too_few_validation_rows_give_no_calibration_and_no_guard():
    found = memorised_rows(_model(), _rows([0.05], [1]), _val(), predict_logits)  # 24 rows
    assert found is not None and found.calibrated is None and found.unseen_accuracy() is None
    scorer = MembershipScorer(_rows([2.05], [1]), _val())
    assert "forget_floor" not in scorer.metrics(_model())


def test_forgetting_far_past_what_unseen_rows_get_breaks_the_guard():
    """Typical rows (the model and their neighbours agree on their labels): unfitting them
    all is further than a model that never saw them would go, so the point breaks the
    scorer's guard and is never kept; the start does not."""
    from lightning_influence.unlearn.step import guard_broken

    model, val = _model(), _spread_val()
    forget = _rows([0.3 + 0.05 * i for i in range(20)], [1] * 20)
    scorer = MembershipScorer(forget, val)
    assert not guard_broken(scorer.score(model))
    floor = scorer.metrics(model)["forget_floor"]
    assert 0.5 < floor < 1.0
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([20.0, -20.0]))  # every forgotten row now class 0
    assert scorer.metrics(model)["forget_acc"] == 0.0
    assert guard_broken(scorer.score(model))
    scorer.guard_over_forgetting = False  # the lever: no guard
    assert not guard_broken(scorer.score(model))


def test_the_calibration_is_fitted_on_a_bounded_subset_of_many_validation_rows(monkeypatch):
    """Above MAX_CALIBRATION_ROWS validation rows, a seeded subset is calibrated (each row's
    neighbours still among all of them): the same rates as a dense count over that subset,
    and the same on a second call."""
    import lightning_influence.unlearn.memorised as mem

    monkeypatch.setattr(mem, "MAX_CALIBRATION_ROWS", 40)
    model, val = _model(), _spread_val()  # 60 rows
    expected = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    feat, prob = val.x.double(), model(val.x).softmax(-1).double()
    got = mem.heldout_fit_rate(expected, feat, prob, val.y, k=3)
    assert torch.equal(got, mem.heldout_fit_rate(expected, feat, prob, val.y, k=3))
    picked = torch.randperm(60, generator=torch.Generator().manual_seed(0))[:40].sort().values
    dist = torch.cdist(feat[picked], feat)
    dist[torch.arange(40), picked] = float("inf")
    e = prob[dist.topk(3, largest=False).indices, val.y[picked].view(-1, 1)].mean(1)
    right = (prob[picked].argmax(-1) == val.y[picked]).double()
    for value, rate in zip(expected, got, strict=True):
        alike = (e - value).abs() <= mem.CALIBRATION_WIDTH + 1e-12
        want = (right[alike].sum() + mem.PRIOR_ROWS * value) / (alike.sum() + mem.PRIOR_ROWS)
        assert rate.item() == pytest.approx(want.item(), abs=1e-9)
