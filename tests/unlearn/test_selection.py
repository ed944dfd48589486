"""Parameter selection: counts, whole units, determinism, BN never selected, state untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lightning_influence as li
from lightning_influence.unlearn.selection import units_per_layer


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 3)
        self.bn = nn.BatchNorm2d(20)
        self.conv1d = nn.Conv1d(20, 10, 1)
        self.fc1 = nn.Linear(10 * 16, 40)
        self.fc2 = nn.Linear(40, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(x)))  # [B, 20, 4, 4]
        h = torch.relu(self.conv1d(h.flatten(2)))  # [B, 10, 16]
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(0)
    return Net(), (torch.randn(12, 1, 6, 6), torch.randint(0, 5, (12,)))


@pytest.mark.parametrize(
    "method",
    ["highest_outputs", "highest_gradients", "lowest_outputs", "lowest_gradients", "random"],
)
@pytest.mark.parametrize("ratio", [0.05, 0.25, 1.0])
def test_counts_whole_units_and_no_bn(net_and_data, method, ratio):
    net, data = net_and_data
    masks = li.select_parameters(net, data, method=method, ratio=ratio, seed=3)
    assert not any(k.startswith("bn") for k in masks)
    for name, layer in [
        ("conv1", net.conv1),
        ("conv1d", net.conv1d),
        ("fc1", net.fc1),
        ("fc2", net.fc2),
    ]:
        w = masks[f"{name}.weight"]
        n_out = layer.weight.shape[0]
        rows = w.reshape(n_out, -1)
        assert (rows.all(1) | ~rows.any(1)).all(), "a unit is either wholly selected or not"
        chosen = rows.all(1)
        assert (
            int(chosen.sum())
            == units_per_layer(n_out, ratio)
            == min(n_out, max(1, round(ratio * n_out)))
        )
        if layer.bias is not None:
            assert torch.equal(masks[f"{name}.bias"], chosen)
    assert "fc2.bias" not in masks


def test_deterministic_and_seeded(net_and_data):
    net, data = net_and_data
    a = li.select_parameters(net, data, method="random", ratio=0.25, seed=1)
    b = li.select_parameters(net, data, method="random", ratio=0.25, seed=1)
    c = li.select_parameters(net, data, method="random", ratio=0.25, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    h1 = li.select_parameters(net, data, method="highest_gradients", ratio=0.25)
    h2 = li.select_parameters(net, data, method="highest_gradients", ratio=0.25)
    assert all(torch.equal(h1[k], h2[k]) for k in h1)


def test_highest_outputs_ranks_by_abs_mean_output(net_and_data):
    net, data = net_and_data
    masks = li.select_parameters(net, data, method="highest_outputs", ratio=0.1)
    with torch.no_grad():
        net.eval()
        out = net.fc1(
            torch.relu(net.conv1d(torch.relu(net.bn(net.conv1(data[0]))).flatten(2))).flatten(1)
        )
    top = out.mean(0).abs().topk(4).indices
    assert set(top.tolist()) == set(masks["fc1.bias"].nonzero().squeeze(1).tolist())
    low = li.select_parameters(net, data, method="lowest_outputs", ratio=0.1)
    assert not (low["fc1.bias"] & masks["fc1.bias"]).any()


def test_selection_leaves_model_state_alone(net_and_data):
    net, data = net_and_data
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    li.select_parameters(net, data, method="highest_gradients")
    assert net.training and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_frozen_layers_are_not_selectable(net_and_data):
    net, data = net_and_data
    net.fc1.requires_grad_(False)
    try:
        masks = li.select_parameters(net, data)
        assert "fc1.weight" not in masks
    finally:
        net.fc1.requires_grad_(True)


def test_selection_keeps_frozen_eval_submodules_and_existing_grads(net_and_data):
    """A submodule the user froze in eval stays in eval; accumulated ``.grad`` survive."""
    net, data = net_and_data
    net.train()
    net.bn.eval()
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    try:
        for method in ("highest_outputs", "highest_gradients"):
            li.select_parameters(net, data, method=method)
            assert net.training and net.conv1.training and not net.bn.training
            assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in net.parameters())
    finally:
        net.bn.train()
        for p in net.parameters():
            p.grad = None


class SequenceNet(nn.Module):
    """A Linear applied to ``[B, T, D]``: its units are the output features (last dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.proj(x)).mean(dim=1))


@pytest.mark.parametrize("method", ["highest_outputs", "highest_gradients"])
def test_linear_on_sequences_selects_output_features(method):
    torch.manual_seed(0)
    net = SequenceNet()
    x, y = torch.randn(7, 5, 4), torch.randint(0, 3, (7,))  # T = 5 differs from 6 features
    masks = li.select_parameters(net, (x, y), method=method, ratio=0.5)
    rows = masks["proj.weight"]
    assert rows.shape == (6, 4) and (rows.all(1) | ~rows.any(1)).all()
    assert torch.equal(masks["proj.bias"], rows.all(1))
    h = net.proj(x)  # [7, 5, 6]
    if method == "highest_outputs":
        score = h.detach().sum(dim=(0, 1)).abs()
    else:
        loss = nn.functional.cross_entropy(net.head(torch.tanh(h).mean(dim=1)), y)
        score = torch.autograd.grad(loss, h)[0].sum(dim=(0, 1)).abs()
    assert set(score.topk(3).indices.tolist()) == set(rows.all(1).nonzero().squeeze(1).tolist())


def _two_ranks(fn):
    """Run ``fn(rank)`` as 2 simulated ranks (threads) under ``sharded`` with in-memory
    collectives; returns each rank's result. Give each rank its own model: forward hooks
    are per module, so threads sharing one would record each other's outputs."""
    import threading

    from lightning_influence.data.distributed import Shards, sharded

    barrier, slots, out = threading.Barrier(2), {}, [None, None]

    def collective(rank, combine):
        def op(t):
            slots[rank] = t.clone()
            barrier.wait()
            result = combine([slots[0], slots[1]])
            barrier.wait()
            return result

        return op

    def run(rank):
        shards = Shards(
            rank,
            2,
            all_gather=collective(rank, torch.stack),
            all_reduce=collective(rank, lambda ts: ts[0] + ts[1]),
        )
        with sharded(shards):
            out[rank] = fn(rank)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


@pytest.mark.parametrize("method", ["highest_outputs", "highest_gradients"])
def test_two_ranks_rank_units_on_their_blocks_as_one_process_does(method):
    """Under DDP each process ranks on its block of the forget rows and the sums are
    all-reduced: the same masks as one process (its chunks summed in float64)."""
    torch.manual_seed(0)
    model = Net().eval()
    data = [(torch.randn(100, 1, 6, 6), torch.randint(0, 5, (100,))) for _ in range(3)]
    kw = {"method": method, "ratio": 0.25}
    one = li.select_parameters(model, data, **kw)
    copies = [copy.deepcopy(model) for _ in range(2)]
    ranks = _two_ranks(lambda r: li.select_parameters(copies[r], data, **kw))
    for masks in ranks:
        assert masks is not None and set(masks) == set(one)
        assert all(torch.equal(masks[k], one[k]) for k in one)
    from lightning_influence.unlearn.selection import _scores, selectable_layers

    gen = torch.Generator()
    whole = _scores(model, selectable_layers(model), data, method, None, gen)
    split = _two_ranks(
        lambda r: _scores(copies[r], selectable_layers(copies[r]), data, method, None, gen)
    )
    for name in whole:  # float64 sums of the same chunks, in another order
        assert torch.allclose(split[0][name], whole[name], rtol=1e-12, atol=0)
        assert torch.equal(split[0][name], split[1][name])
