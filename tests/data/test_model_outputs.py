"""Models that are not single-tensor-in, logits-out: tuple/dict/dataclass outputs, a
logits_fn, several inputs (tuple and dict inputs). Each wraps the same trained CNN, so
unlearning it must give the same weights as unlearning the plain CNN."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_influence import CaptureCallback, IndexedDataset, ModelTask, UnlearnCallback

torch.set_num_threads(1)
FORGET = [3]


@dataclass
class Output:
    logits: Tensor
    hidden: Tensor


class Wrapped(nn.Module):
    """The trained CNN behind another calling convention (``kind``)."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, *args, **kwargs):
        if self.kind == "two_inputs":
            x, extra = args
            logits = self.net(x) + 0.0 * extra.sum(dim=1, keepdim=True)
        elif self.kind == "dict_inputs":
            logits = self.net(kwargs["pixel_values"])
        else:
            logits = self.net(args[0])
        hidden = logits.detach() * 2
        return {
            "tuple": (logits, hidden),
            "dict": {"hidden": hidden, "logits": logits},
            "dataclass": Output(logits, hidden),
            "scores": {"scores": logits},
            "two_inputs": logits,
            "dict_inputs": logits,
        }[self.kind]


class TwoInputs(Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return (x, torch.ones(3)), y, i


class DictInputs(Dataset):
    def __init__(self, base, with_ids=True):
        self.base, self.with_ids = base, with_ids

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        item = {"inputs": {"pixel_values": x}, "labels": y}
        if self.with_ids:
            item["idx"] = i
        return item


@pytest.fixture(scope="module")
def trained(trained_digits):
    return trained_digits(6)


def _unlearn(model, train_loader, val_loader, **kwargs):
    cb = UnlearnCallback(forget_classes=FORGET, progress_bar=False, **kwargs)
    return cb.unlearn_model(model, train_loader, val_loader)


@pytest.fixture(scope="module")
def reference(trained, digits):
    """The plain CNN unlearned: (state dict, report)."""
    train, val, _ = digits
    model = copy.deepcopy(trained)
    report = _unlearn(
        model, DataLoader(IndexedDataset(train), batch_size=64), DataLoader(val, batch_size=256)
    )
    assert report.applied
    # the report says which settings ran: class removal's own, applied once (plan.py)
    assert report.plan["rounds"] == 3 and report.plan["ratios"] == [0.05]
    assert report.plan["selection_layers"] == "output" and report.plan["min_units"] == 1
    return model.state_dict(), report


def _assert_same_weights(wrapped: Wrapped, reference_state):
    for k, v in reference_state.items():
        got = wrapped.net.state_dict()[k]
        assert torch.allclose(got, v, atol=1e-6, rtol=0), k


@pytest.mark.parametrize("kind", ["tuple", "dict", "dataclass"])
def test_outputs_with_logits_inside_are_found(trained, digits, reference, kind):
    train, val, _ = digits
    model = Wrapped(copy.deepcopy(trained), kind)
    report = _unlearn(
        model, DataLoader(IndexedDataset(train), batch_size=64), DataLoader(val, batch_size=256)
    )
    assert report.after["forget_acc"] == pytest.approx(reference[1].after["forget_acc"])
    _assert_same_weights(model, reference[0])


def test_logits_fn_reads_logits_from_anywhere(trained, digits, reference):
    train, val, _ = digits
    loaders = (
        DataLoader(IndexedDataset(train), batch_size=64),
        DataLoader(val, batch_size=256),
    )
    model = Wrapped(copy.deepcopy(trained), "scores")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TypeError, match="logits_fn"):
        _unlearn(model, *loaders)
    for k, v in before.items():  # the failed run left the weights as they were
        assert torch.equal(model.state_dict()[k], v), k
    _unlearn(model, *loaders, logits_fn=lambda out: out["scores"])
    _assert_same_weights(model, reference[0])


def test_a_model_task_is_what_the_loose_keywords_build(trained, digits, reference):
    """ModelTask(logits_fn=...) unlearns as logits_fn=... does; a CaptureCallback given the
    same task finds the logits in the dict output during validation and serves the run."""
    train, val, _ = digits
    task = ModelTask(logits_fn=lambda out: out["scores"])
    model = Wrapped(copy.deepcopy(trained), "scores")
    _unlearn(model, DataLoader(IndexedDataset(train), batch_size=64), DataLoader(val, batch_size=256),
             model_task=task)  # fmt: skip
    _assert_same_weights(model, reference[0])
    with pytest.raises(ValueError, match="not both"):
        UnlearnCallback(forget_classes=FORGET, model_task=task, loss_fn=nn.functional.cross_entropy)
    with pytest.raises(TypeError, match="ModelTask"):
        UnlearnCallback(forget_classes=FORGET, model_task=lambda out: out)
    with pytest.raises(ValueError, match="logits_fn must be a callable"):
        ModelTask(logits_fn="scores")
    model = _Validated(Wrapped(copy.deepcopy(trained), "scores"))
    capture = CaptureCallback(store_features=False, model_task=task)
    trainer = pl.Trainer(callbacks=[capture], logger=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    trainer.validate(model, DataLoader(IndexedDataset(train), batch_size=64), verbose=False)
    xs = torch.stack([train[i][0] for i in range(5)])
    with torch.no_grad():
        expected = model(xs)["scores"]
    assert torch.equal(capture.require_result().ids[:5], torch.arange(5))
    assert torch.allclose(capture.require_result().logits[:5], expected, atol=1e-5)


class _Validated(pl.LightningModule):
    """A LightningModule whose forward returns {"scores": logits} (found only by logits_fn)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def validation_step(self, batch, batch_idx):
        self(batch[0])


def test_two_inputs_as_a_tuple(trained, digits, reference):
    train, val, _ = digits
    model = Wrapped(copy.deepcopy(trained), "two_inputs")
    val_two = [((x, torch.ones(3)), y) for x, y in val]
    report = _unlearn(
        model,
        DataLoader(TwoInputs(train), batch_size=64),
        DataLoader(val_two, batch_size=256),
    )
    assert report.applied
    _assert_same_weights(model, reference[0])


def test_dict_inputs_hugging_face_style(trained, digits, reference):
    train, val, _ = digits
    model = Wrapped(copy.deepcopy(trained), "dict_inputs")
    report = _unlearn(
        model,
        DataLoader(DictInputs(train), batch_size=64),
        DataLoader(DictInputs(val, with_ids=False), batch_size=256),
    )
    assert report.applied
    _assert_same_weights(model, reference[0])
