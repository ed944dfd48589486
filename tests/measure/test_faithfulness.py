"""The field's faithfulness measures (UA, MIA-efficacy, RA, TA, Avg. Gap, relearning)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_influence.measure.faithfulness import (
    ConfidenceAttack,
    avg_gap,
    faithfulness,
    label_confidence,
    relearn_accuracy,
    reset_output_rows,
)


def _brute_force_threshold(members: torch.Tensor, nonmembers: torch.Tensor) -> float:
    best = 0.5
    for t in torch.cat([members, nonmembers]).tolist():
        tpr = float((members >= t).double().mean())
        tnr = float((nonmembers < t).double().mean())
        best = max(best, 0.5 * (tpr + tnr))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_confidence_attack_finds_the_best_threshold(seed):
    gen = torch.Generator().manual_seed(seed)
    members = (torch.rand(60, generator=gen) * 0.6 + 0.4).round(decimals=2)  # ties on purpose
    nonmembers = (torch.rand(60, generator=gen) * 0.8).round(decimals=2)
    attack = ConfidenceAttack.fit(members, nonmembers)
    assert attack.balanced_accuracy == pytest.approx(_brute_force_threshold(members, nonmembers))
    called = 0.5 * (attack.member_share(members) + 1 - attack.member_share(nonmembers))
    assert called == pytest.approx(attack.balanced_accuracy)
    assert attack.efficacy(members) == pytest.approx(1 - attack.member_share(members))


def test_confidence_attack_balances_and_handles_no_signal():
    same = torch.full((10,), 0.5)
    attack = ConfidenceAttack.fit(same, torch.full((50,), 0.5))
    assert attack.balanced_accuracy == 0.5 and attack.efficacy(same) == 1.0
    with pytest.raises(ValueError, match="needs members and non-members"):
        ConfidenceAttack.fit(torch.ones(3), torch.ones(0))


def test_label_confidence_is_the_softmax_of_the_label():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    conf = label_confidence(logits, torch.tensor([1, 0]))
    assert conf.tolist() == pytest.approx([0.5, torch.sigmoid(torch.tensor(2.0)).item()])


def test_avg_gap_is_the_mean_absolute_difference_in_points():
    a = {"ua": 0.10, "mia_efficacy": 0.20, "ra": 0.99, "ta": 0.90}
    b = {"ua": 0.12, "mia_efficacy": 0.10, "ra": 0.99, "ta": 0.92}
    assert avg_gap(a, b) == pytest.approx((2 + 10 + 0 + 2) / 4)
    assert avg_gap(a, a) == 0.0


def _loader(x, y):
    return DataLoader(TensorDataset(x, y), batch_size=16)


def test_faithfulness_of_a_model_that_memorised_its_forget_set():
    """Forget rows fitted with confidence 1, test rows at 0.6: UA 0, the attack calls every
    forgotten row a member (efficacy 0); labels the model gets wrong count against RA/TA."""
    n = 32
    x = torch.arange(3 * n, dtype=torch.float32).reshape(-1, 1)
    table = torch.zeros(3 * n, 2)
    table[: 2 * n, 0] = 20.0  # forget + retain: confident class 0
    table[2 * n :, 0] = 0.4055  # test: p(class 0) = 0.6

    class Lookup(nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return table[x.long().reshape(-1)] + 0 * self.dummy

    y = torch.zeros(3 * n, dtype=torch.long)
    y[2 * n + n // 2 :] = 1  # half the test rows have the other label
    m = faithfulness(
        Lookup(),
        _loader(x[:n], y[:n]),
        _loader(x[n : 2 * n], y[n : 2 * n]),
        _loader(x[2 * n :], y[2 * n :]),
    )
    assert m == {"ua": 0.0, "mia_efficacy": 0.0, "ra": 1.0, "ta": 0.5}


def test_reset_output_rows_averages_the_other_rows_and_keeps_the_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = reset_output_rows(model, model[2], [1])
    w, b = model[2].weight, model[2].bias
    assert torch.allclose(out[2].weight[1], (w[0] + w[2]) / 2)
    assert torch.allclose(out[2].bias[1], (b[0] + b[2]) / 2)
    assert torch.equal(out[2].weight[0], w[0]) and torch.equal(out[0].weight, model[0].weight)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="not a module of model"):
        reset_output_rows(model, nn.Linear(4, 3), [1])


def test_relearn_accuracy_fine_tunes_a_copy():
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(2, 2)
    with torch.no_grad():  # starts wrong on every sample
        model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.bias.zero_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(x, y)] * 50
    assert relearn_accuracy(model, batches, [(x, y)], steps=0) == 0.0
    assert relearn_accuracy(model, batches, [(x, y)], steps=50, lr=0.1) > 0.9
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="the batches gave 50"):
        relearn_accuracy(model, batches, [(x, y)], steps=60)
