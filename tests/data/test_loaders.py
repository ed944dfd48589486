"""The samples an unlearning run reads are exactly those the user's loaders yield.

Samplers are respected (a train/validation split of one dataset by ``SubsetRandomSampler``,
``WeightedRandomSampler`` with zero weights); a loader whose order cannot be reproduced and
whose batches carry no ids is refused for id-named tasks with the fix (``IndexedDataset``);
a used-up one-shot iterator is a clear error; NaN validation inputs are refused. Every
refusal leaves the weights as they were.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    IterableDataset,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from lightning_influence import IndexedDataset, UnlearnCallback

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(trained_digits):
    return trained_digits(4)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k


def _run(model, train_loader, val_loader, **task):
    cb = UnlearnCallback(progress_bar=False, **task)
    return cb.unlearn_model(model, train_loader, val_loader)


def test_a_split_by_subset_samplers_reads_only_the_training_share(trained, digits):
    train, val, _ = digits
    whole = IndexedDataset(ConcatDataset([train, val]))
    train_idx = list(range(len(train)))
    val_idx = list(range(len(train), len(train) + len(val)))
    g = torch.Generator().manual_seed(0)
    report = _run(
        copy.deepcopy(trained),
        DataLoader(whole, batch_size=64, sampler=SubsetRandomSampler(train_idx, generator=g)),
        DataLoader(whole, batch_size=256, sampler=SubsetRandomSampler(val_idx, generator=g)),
        forget_classes=[3],
    )
    assert report.pool_size == len(train)
    assert report.forget_size == int((train.tensors[1] == 3).sum())


def test_weighted_sampler_reads_the_samples_it_can_draw(trained, digits):
    train, val, _ = digits
    weights = torch.ones(len(train))
    weights[:100] = 0.0  # never drawn: not training data
    sampler = WeightedRandomSampler(weights, num_samples=len(train), replacement=True)
    report = _run(
        copy.deepcopy(trained),
        DataLoader(IndexedDataset(train), batch_size=64, sampler=sampler),
        DataLoader(val, batch_size=256),
        forget_classes=[3],
    )
    assert report.pool_size == len(train) - 100
    assert report.forget_size == int((train.tensors[1][100:] == 3).sum())


class _Reshuffling(IterableDataset):
    """Yields (x, y) in a new random order on every pass, without ids."""

    def __init__(self, data: TensorDataset) -> None:
        self.data, self.passes = data, 0

    def __iter__(self):
        self.passes += 1
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.passes))
        for i in order.tolist():
            yield self.data[i]


def test_unreproducible_order_without_ids_is_refused_for_id_tasks(trained, digits):
    train, val, _ = digits
    model = copy.deepcopy(trained)
    before = _state(model)
    with pytest.raises(ValueError, match="IndexedDataset"):
        _run(
            model,
            DataLoader(_Reshuffling(train), batch_size=64),
            DataLoader(val, batch_size=256),
            forget_ids=[0, 1, 2],
        )
    _assert_unchanged(model, before)


def test_unreproducible_order_is_fine_for_class_removal(trained, digits):
    train, val, _ = digits
    report = _run(
        copy.deepcopy(trained),
        DataLoader(_Reshuffling(train), batch_size=64),
        DataLoader(val, batch_size=256),
        forget_classes=[3],
    )
    # one pass keeps the rows it reads: the forget set is exactly the class's samples
    assert report.forget_size == int((train.tensors[1] == 3).sum())
    assert report.pool_size == len(train)


def test_a_used_up_generator_is_a_clear_error(trained, digits):
    train, val, _ = digits
    batches = iter(DataLoader(train, batch_size=64))
    list(batches)  # fit has read it
    model = copy.deepcopy(trained)
    before = _state(model)
    with pytest.raises(ValueError, match="one-shot iterator"):
        _run(model, batches, DataLoader(val, batch_size=256), forget_classes=[3])
    _assert_unchanged(model, before)


def test_nan_in_validation_inputs_is_refused(trained, digits):
    train, val, _ = digits
    x, y = val.tensors
    x = x.clone()
    x[:] = float("nan")
    model = copy.deepcopy(trained)
    before = _state(model)
    with pytest.raises(FloatingPointError, match="validation inputs contain NaN"):
        _run(
            model,
            DataLoader(IndexedDataset(train), batch_size=64),
            DataLoader(TensorDataset(x, y), batch_size=256),
            forget_classes=[3],
        )
    _assert_unchanged(model, before)


def test_no_sample_id_warning_when_positions_are_stable(trained, digits, recwarn):
    train, val, _ = digits
    report = _run(
        copy.deepcopy(trained),
        DataLoader(train, batch_size=64),  # no ids, but a reproducible order: positions are ids
        DataLoader(val, batch_size=256),
        forget_ids=[0, 5, 9],
    )
    assert report.forget_size == 3
    assert not [w for w in recwarn if "sample ids" in str(w.message)], [
        str(w.message) for w in recwarn
    ]


def test_ddp_wrapper_around_a_subset_sampler_reads_the_subset():
    """Under DDP Lightning wraps the user's sampler in a DistributedSamplerWrapper (a
    DistributedSampler): the samples read are still those the wrapped sampler yields."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    from lightning_influence.data.loaders import data_pass

    data = TensorDataset(torch.arange(100.0).reshape(100, 1), torch.zeros(100, dtype=torch.long))
    inner = SubsetRandomSampler(list(range(10, 40)))
    loader = DataLoader(
        data, batch_size=8, sampler=DistributedSamplerWrapper(inner, num_replicas=2, rank=0)
    )
    read = data_pass(loader)
    assert read.stable and read.position_ids.tolist() == list(range(10, 40))
    assert torch.cat([b[0] for b in read]).reshape(-1).tolist() == [float(i) for i in range(10, 40)]
