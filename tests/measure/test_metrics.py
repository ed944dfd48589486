"""Forgetting metrics: hand-computed values, F1 edge cases, mask variant, evaluate()."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_influence.data.batches import IndexedDataset
from lightning_influence.measure.metrics import (
    ExclusiveLoss,
    ForgetAccuracy,
    ForgettingF1,
    RetainedAccuracy,
    SelfLoss,
    UnlearningMetrics,
    evaluate,
    forgetting_f1,
    unlearning_metrics,
)

KEYS = {"forget_acc", "retain_acc", "f1", "exclusive_loss", "self_loss"}


def _onehot_logits(pred: list[int], num_classes: int = 3) -> torch.Tensor:
    return F.one_hot(torch.tensor(pred), num_classes).float() * 5.0


# labels:  0  1  1  2  2  0  1   (forget class 1: samples 1, 2, 6)
# preds:   0  1  0  2  1  0  2   -> forget correct 1/3, retained correct 3/4
TARGETS = torch.tensor([0, 1, 1, 2, 2, 0, 1])
LOGITS = _onehot_logits([0, 1, 0, 2, 1, 0, 2])


def test_accuracies_hand_computed() -> None:
    fa, ra = ForgetAccuracy([1]), RetainedAccuracy([1])
    fa.update(LOGITS, TARGETS)
    ra.update(LOGITS, TARGETS)
    assert fa.compute().item() == pytest.approx(1 / 3)
    assert ra.compute().item() == pytest.approx(3 / 4)


def test_f1_formula_and_edge_cases() -> None:
    f1 = ForgettingF1([1])
    f1.update(LOGITS, TARGETS)
    af, ar = 1 / 3, 3 / 4
    assert f1.compute().item() == pytest.approx(2 * (1 - af) * ar / ((1 - af) + ar))
    assert forgetting_f1(0.0, 1.0).item() == 1.0  # perfect forgetting, perfect utility
    assert forgetting_f1(1.0, 0.0).item() == 0.0  # both terms zero: defined as 0
    assert forgetting_f1(1.0, 1.0).item() == 0.0  # nothing forgotten
    assert forgetting_f1(0.0, 0.0).item() == 0.0  # utility destroyed
    assert math.isnan(forgetting_f1(float("nan"), 0.9).item())
    assert math.isnan(forgetting_f1(0.1, float("nan")).item())


def test_losses_hand_computed() -> None:
    logits = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    ce = F.cross_entropy(logits, TARGETS, reduction="none")
    forget = torch.isin(TARGETS, torch.tensor([1]))
    el, sl = ExclusiveLoss([1]), SelfLoss([1])
    el.update(logits, TARGETS)
    sl.update(logits, TARGETS)
    assert el.compute().item() == pytest.approx(ce[~forget].mean().item(), rel=1e-6)
    assert sl.compute().item() == pytest.approx(ce[forget].mean().item(), rel=1e-6)


def test_empty_part_is_nan_and_f1_nan() -> None:
    m = UnlearningMetrics([1])
    m.update(LOGITS[[0, 3]], TARGETS[[0, 3]])  # no class-1 sample
    out = m.compute()
    assert math.isnan(out["forget_acc"].item())
    assert math.isnan(out["self_loss"].item())
    assert math.isnan(out["f1"].item())
    assert out["retain_acc"].item() == 1.0


def test_mask_overrides_classes() -> None:
    mask = torch.tensor([True, False, False, False, True, False, False])
    m = UnlearningMetrics([1])  # class rule would pick samples 1, 2, 6
    m.update(LOGITS, TARGETS, forget_mask=mask)
    out = {k: v.item() for k, v in m.compute().items()}
    assert out["forget_acc"] == pytest.approx(1 / 2)  # sample 0 right, sample 4 wrong
    assert out["retain_acc"] == pytest.approx(3 / 5)  # samples 1, 3, 5 right of 1,2,3,5,6
    # No classes at all is fine when every update brings a mask.
    m2 = ForgetAccuracy()
    m2.update(LOGITS, TARGETS, mask)
    assert m2.compute().item() == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="forget_mask"):
        ForgetAccuracy().update(LOGITS, TARGETS)
    with pytest.raises(ValueError, match="entries"):
        ForgetAccuracy([1]).update(LOGITS, TARGETS, mask[:3])


def test_collection_keys_prefix_and_function() -> None:
    assert set(UnlearningMetrics([1]).keys()) == KEYS
    assert set(unlearning_metrics([1], prefix="val_").keys()) == {f"val_{k}" for k in KEYS}


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        ForgetAccuracy([10], num_classes=10)
    with pytest.raises(ValueError, match="targets"):
        ForgetAccuracy([1]).update(LOGITS, torch.tensor([0, 1, 1, 2, 2, 0, 3]))
    with pytest.raises(ValueError, match="shape"):
        ForgetAccuracy([1]).update(LOGITS[0], TARGETS[:1])


def test_split_updates_sum_to_one_update() -> None:
    """Two updates (as two DDP ranks or two batches would see) equal one: states are sums."""
    gen = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(50, 4, generator=gen), torch.randint(0, 4, (50,), generator=gen)
    whole, a, b = UnlearningMetrics([2]), UnlearningMetrics([2]), UnlearningMetrics([2])
    whole.update(logits, targets)
    a.update(logits[:17], targets[:17])
    b.update(logits[17:], targets[17:])
    # Sum the two "ranks'" states like dist_reduce_fx="sum" would, into a.
    for name, metric in a.items():
        other = b[name]
        for state in metric._defaults:
            assert metric._reductions[state] is not None
            setattr(metric, state, getattr(metric, state) + getattr(other, state))
    one, merged = whole.compute(), a.compute()
    for k in KEYS:
        assert merged[k].item() == pytest.approx(one[k].item(), rel=1e-12), k
    # Sequential updates on one metric give the same numbers too.
    seq = UnlearningMetrics([2])
    seq.update(logits[:17], targets[:17])
    seq.update(logits[17:], targets[17:])
    for k, v in seq.compute().items():
        assert v.item() == pytest.approx(one[k].item(), rel=1e-12)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.lin(x)))


def _loader(with_ids: bool) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(40, 4, generator=gen), torch.randint(0, 3, (40,), generator=gen))
    return DataLoader(IndexedDataset(ds) if with_ids else ds, batch_size=16)


def test_evaluate_keys_eval_mode_and_restores_modes() -> None:
    net = _Net()
    net.train()
    net.bn.eval()  # a mixed state must come back exactly
    out1 = evaluate(net, _loader(False), [1])
    out2 = evaluate(net, _loader(True), [1])  # (x, y, idx) batches
    assert set(out1) == KEYS and all(isinstance(v, float) for v in out1.values())
    assert out1 == out2  # eval mode: dropout off, deterministic
    assert net.training and net.lin.training and not net.bn.training and net.drop.training
    # Reference computed by hand in eval mode.
    net.eval()
    x, y = _loader(False).dataset.tensors
    with torch.no_grad():
        ref = UnlearningMetrics([1])
        ref.update(net(x), y)
    for k, v in ref.compute().items():
        assert out1[k] == pytest.approx(v.item(), rel=1e-9, nan_ok=True)


def test_evaluate_restores_mode_on_error() -> None:
    net = _Net().train()
    with pytest.raises(ValueError):
        evaluate(net, [("not", "a", "batch", "!")], [1])
    assert net.training and net.drop.training


def test_evaluate_forget_ids() -> None:
    net = _Net()
    ids = [0, 5, 17, 33]
    out = evaluate(net, _loader(True), forget_ids=ids)
    net.eval()
    x, y = _loader(False).dataset.tensors
    mask = torch.zeros(40, dtype=torch.bool)
    mask[ids] = True
    with torch.no_grad():
        ref = UnlearningMetrics()
        ref.update(net(x), y, mask)
    for k, v in ref.compute().items():
        assert out[k] == pytest.approx(v.item(), rel=1e-9)
    with pytest.raises(ValueError, match="ids"):
        evaluate(net, _loader(False), forget_ids=ids)
    with pytest.raises(ValueError, match="forget_classes or forget_ids"):
        evaluate(net, _loader(False))
