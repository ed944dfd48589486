"""lightning_influence.data.hooks: the one forward-hook helper every stage records with."""

from __future__ import annotations

import torch
from torch import nn

from lightning_influence.data.hooks import ForwardRecorder


def _shared() -> nn.Module:
    """A model that runs its first layer twice (weight sharing)."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(self.a(self.a(x)))

    return Twice()


def test_every_call_is_kept_in_call_order_and_the_hooks_go_on_exit():
    model = _shared()
    x = torch.randn(4, 3)
    with ForwardRecorder({"b": model.b, "a": model.a}) as rec:
        out = model(x)
    assert rec.order == ["a", "a", "b"]
    assert len(rec.records["a"]) == 2 and torch.equal(rec.records["b"][0], out)
    model(x)  # hooks are off
    assert rec.order == ["a", "a", "b"]
    popped = rec.pop()
    assert len(popped["a"]) == 2 and rec.records == {"b": [], "a": []} and rec.order == []


def test_keep_and_last_only():
    model = _shared()
    rec = ForwardRecorder({"a": model.a}, keep=lambda inp, out: inp[0].shape, last_only=True)
    rec.register().register()  # a second register adds no second hook
    model(torch.randn(5, 3))
    assert rec.records["a"] == [torch.Size([5, 3])] and rec.order == ["a", "a"]
    rec.remove()
    model(torch.randn(5, 3))
    assert rec.order == ["a", "a"]
