"""Hostile input, round 2: every case gives a correct result or a clear error naming the fix,
the weights untouched on failure, and nothing silently lost on disk."""

from __future__ import annotations

import copy
import errno
import gzip
import struct
import threading
from pathlib import Path

import lightning as L
import lightning.fabric.plugins.io.torch_io as torch_io
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from trainer_fixtures import quiet_trainer, split_loaders

import lightning_influence as li
from lightning_influence import UnlearnCallback
from lightning_influence.callbacks.checkpoints import CheckpointWriteError
from lightning_influence.demos.datasets import read_idx
from lightning_influence.demos.models import ImageClassifier

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(trained_digits):
    return trained_digits(8)


@pytest.fixture()
def model(trained):
    return copy.deepcopy(trained)


def _loaders(digits):
    return split_loaders(digits)[:2]


def _tensors(dataset):
    xs = torch.stack([dataset[i][0] for i in range(len(dataset))])
    ys = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    return xs, ys


def _snapshot(model):
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {k: v.detach().clone() for k, v in named.items()}


def _assert_unchanged(model, snap):
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for k, v in snap.items():
        assert named[k].dtype == v.dtype and torch.equal(named[k], v), f"{k} changed"


def _fit(digits, tmp_path, callbacks, epochs=3, **kwargs):
    train, val = _loaders(digits)
    L.seed_everything(0, verbose=False)
    model = ImageClassifier()
    trainer = quiet_trainer(tmp_path, callbacks, max_epochs=epochs, **kwargs)
    trainer.fit(model, train, val)
    return trainer, model


def _quiet(**kwargs):
    return UnlearnCallback(progress_bar=False, **kwargs)


# ---------------------------------------------------------------- wrong results, now right


def test_a_reused_callback_unlearns_the_new_model(digits, tmp_path):
    cb = _quiet(forget_classes=[3])
    _fit(digits, tmp_path / "a", [cb])
    first = cb.report
    _, second_model = _fit(digits, tmp_path / "b", [cb])  # same global step at the end
    assert cb.report is not first and cb.report.applied
    assert cb.report.after["forget_acc"] <= 0.05


@pytest.mark.parametrize("fault", ["read_only", "disk_full"])
def test_a_checkpoint_that_cannot_be_written_raises_naming_the_folder(
    digits, tmp_path, monkeypatch, fault
):
    cb = _quiet(forget_classes=[3])
    save = torch_io._atomic_save

    def failing_save(checkpoint, path):
        if cb.report is None:  # the fit's own checkpoints are written
            return save(checkpoint, path)
        if fault == "disk_full":
            raise OSError(errno.ENOSPC, "No space left on device")
        return None  # Lightning swallows the PermissionError of a read-only folder

    monkeypatch.setattr(torch_io, "_atomic_save", failing_save)
    folder = tmp_path / "ckpt"
    ckpt = ModelCheckpoint(dirpath=folder, monitor="val_loss", save_last=True)
    with pytest.raises(CheckpointWriteError, match=f"model in memory is unlearned.*{folder}"):
        _fit(digits, tmp_path, [ckpt, cb])
    assert cb.report.applied
    assert Path(ckpt.best_model_path).exists()  # "best" still loads a file that exists
    assert not (folder / "unlearned.ckpt").exists()


def test_a_bf16_true_model_is_unlearned_and_stays_bf16(digits, tmp_path):
    cb = _quiet(forget_classes=[3])
    _, model = _fit(digits, tmp_path, [cb], epochs=4, precision="bf16-true")
    assert cb.report.applied and cb.report.after["forget_acc"] <= 0.05
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


class _Mixed(ImageClassifier):
    """An output layer in float64 after float32 features."""

    def __init__(self):
        super().__init__()
        self.net.fc2.double()

    def forward(self, x):
        return self.net.fc2(self.net.features(x).double())


def test_a_model_mixing_float32_and_float64_is_unlearned(digits, tmp_path):
    train, val = _loaders(digits)
    L.seed_everything(0, verbose=False)
    model = _Mixed()
    quiet_trainer(tmp_path, [], max_epochs=4).fit(model, train, val)
    dtypes = {k: p.dtype for k, p in model.named_parameters()}
    report = _quiet(forget_classes=[3]).unlearn_model(model, train, val)
    assert report.applied
    assert {k: p.dtype for k, p in model.named_parameters()} == dtypes


def test_a_failure_restores_a_model_in_half_precision_bit_for_bit(digits, model, monkeypatch):
    model = model.to(torch.bfloat16)
    snap = _snapshot(model)
    train, val = _loaders(digits)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("lightning_influence.unlearn.pipeline.step_search", boom)
    with pytest.raises(RuntimeError, match="boom"):
        _quiet(forget_classes=[3]).unlearn_model(model, train, val)
    _assert_unchanged(model, snap)


def test_one_hot_labels_are_named(digits, model):
    snap = _snapshot(model)
    xs, ys = _tensors(digits[0])
    one_hot = DataLoader(TensorDataset(xs, nn.functional.one_hot(ys, 10)), batch_size=64)
    with pytest.raises(ValueError, match=r"labels must be class indices, got shape \[64, 10\]"):
        _quiet(forget_classes=[3]).unlearn_model(model, one_hot, _loaders(digits)[1])
    _assert_unchanged(model, snap)


def test_a_loss_without_reduction_is_named(digits, model):
    snap = _snapshot(model)
    cb = _quiet(forget_classes=[3], loss_fn=nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match="scalar mean loss.*reduction='none'"):
        cb.unlearn_model(model, *_loaders(digits))
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("method", [None, "all"])
def test_every_parameter_frozen_is_named(digits, model, method):
    model.requires_grad_(False)
    snap = _snapshot(model)
    cb = _quiet(forget_classes=[3], selection=None if method is None else {"method": method})
    with pytest.raises(ValueError, match="Every parameter of ImageClassifier is frozen"):
        cb.unlearn_model(model, *_loaders(digits))
    _assert_unchanged(model, snap)


def test_an_empty_validation_list_fails_before_training(digits, tmp_path):
    train, _ = _loaders(digits)
    trainer = quiet_trainer(tmp_path, [_quiet(forget_classes=[3])], max_epochs=5)
    with pytest.raises(ValueError, match=r"val_dataloaders is empty"):
        trainer.fit(ImageClassifier(), train, [])
    assert trainer.global_step == 0


def test_two_threads_unlearn_two_models_at_once(digits, trained):
    train, val = _loaders(digits)
    reference = _quiet(forget_classes=[3]).unlearn_model(copy.deepcopy(trained), train, val)
    results, errors = [], []

    def work():
        try:
            m = copy.deepcopy(trained)
            results.append(_quiet(forget_classes=[3]).unlearn_model(m, train, val).radius)
        except Exception as err:  # noqa: BLE001 (collected for the assertion)
            errors.append(repr(err))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [reference.radius, reference.radius]


def test_nan_inputs_to_self_influence_are_named(digits, model):
    xs, ys = _tensors(digits[0])
    xs[5, 0, 0, 0] = float("nan")
    data = DataLoader(TensorDataset(xs[:128], ys[:128]), batch_size=64)
    with pytest.raises(FloatingPointError, match="train_data inputs contain NaN"):
        li.self_influence(model, data)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 1.5}, "top_k must be a positive integer"),
        ({"num_queries": "8"}, "num_queries must be a positive integer"),
        ({"every_n_epochs": 0.5}, "every_n_epochs must be an integer"),
        ({"scores": "ekfac"}, r"scores must be a ScoreArguments or a dict"),
        ({"loss_fn": "ce"}, "loss_fn must be a callable"),
        ({"batch_parser": 3}, "batch_parser must be a callable"),
    ],
)
def test_influence_callback_checks_its_arguments_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        li.InfluenceCallback(**kwargs)


# ---------------------------------------------------------------- confusing, now named


@pytest.mark.parametrize("where", ["training", "validation"])
def test_a_label_outside_the_logits_is_named(digits, model, where):
    snap = _snapshot(model)
    train, val = _loaders(digits)
    xs, ys = _tensors(digits[0] if where == "training" else digits[1])
    ys[0] = 12
    bad = DataLoader(TensorDataset(xs, ys), batch_size=64)
    data = (bad, val) if where == "training" else (train, bad)
    with pytest.raises(ValueError, match=f"A {where} label is 12, outside the model's 10 outputs"):
        _quiet(forget_classes=[3]).unlearn_model(model, *data)
    _assert_unchanged(model, snap)


def test_relabelling_to_the_current_labels_is_named(digits, model):
    snap = _snapshot(model)
    _, ys = _tensors(digits[0])
    current = {i: int(ys[i]) for i in range(5)}
    with pytest.raises(ValueError, match="relabel changes no label"):
        _quiet(relabel=current).unlearn_model(model, *_loaders(digits))
    _assert_unchanged(model, snap)


def test_relabelling_some_to_their_current_labels_warns(digits, model):
    _, ys = _tensors(digits[0])
    labels = {0: int(ys[0]), 1: (int(ys[1]) + 1) % 10}
    cb = _quiet(relabel=labels, step={"steps": 2, "max_radius": 1e-3})
    with pytest.warns(UserWarning, match="1 of 2 ids already have their new label"):
        cb.unlearn_model(model, *_loaders(digits))


def test_incomplete_forgetting_warns_with_the_score(digits, model):
    cb = _quiet(forget_classes=[0, 1, 2, 3, 4], step={"max_radius": 0.5})
    with pytest.warns(UserWarning, match="forgetting is incomplete: the validation forget score"):
        report = cb.unlearn_model(model, *_loaders(digits))
    assert report.applied and report.complete is False
    assert report.forget_score > report.forget_target


def test_complete_forgetting_is_reported(digits, model):
    report = _quiet(forget_classes=[3]).unlearn_model(model, *_loaders(digits))
    assert report.complete is True and report.forget_score <= report.forget_target


def test_a_list_of_batches_is_one_loader(digits, model):
    train, val = _loaders(digits)
    report = _quiet(forget_classes=[3]).unlearn_model(model, list(train), list(val))
    assert report.applied and report.pool_size == len(digits[0])


class _FeaturesAndLogits(ImageClassifier):
    def forward(self, x):
        z = self.net.features(x)
        return z, self.net.fc2(z)


def test_a_features_logits_tuple_is_named_and_logits_fn_fixes_it(digits, trained):
    model = _FeaturesAndLogits()
    model.load_state_dict(trained.state_dict())
    train, val = _loaders(digits)
    warning = r"first, \[2, 32\], is taken as the logits.*logits_fn"
    with pytest.warns(UserWarning, match=warning):  # the features never argmax to 3
        report = _quiet(forget_classes=[3]).unlearn_model(model, train, val)
    assert not report.applied and report.outcome == "already_complete"
    with (  # made to search anyway, the solve finds no direction and names logits_fn
        pytest.warns(UserWarning, match=warning),
        pytest.raises(ValueError, match="delta is zero.*logits_fn"),
    ):
        _quiet(forget_classes=[3], solve={"polish": True}).unlearn_model(model, train, val)
    report = _quiet(forget_classes=[3], logits_fn=lambda out: out[1]).unlearn_model(
        model, train, val
    )
    assert report.applied


class _CountingForward(ImageClassifier):
    """A non-persistent buffer the no-grad forwards change; they fail after some calls."""

    def __init__(self, fail_after: int):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()), persistent=False)
        self.fail_after = fail_after

    def forward(self, x):
        if not torch.is_grad_enabled():  # the no-grad passes: capture and scoring
            self.calls.add_(1)
            if int(self.calls) > self.fail_after:
                raise RuntimeError("boom")
        return super().forward(x)


def test_non_persistent_buffers_are_restored_after_a_failure(digits, trained):
    model = _CountingForward(fail_after=7 + 20)  # a run makes 25 no-grad forwards
    model.load_state_dict(trained.state_dict())
    model.calls.fill_(7.0)
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        _quiet(forget_classes=[3]).unlearn_model(model, *_loaders(digits))
    _assert_unchanged(model, snap)
    assert float(model.calls) == 7.0


@pytest.mark.parametrize(
    "options",
    [{"max_epochs": 0}, {"max_epochs": 2, "check_val_every_n_epoch": 5}],
    ids=["max_epochs_0", "validation_never_ran"],
)
def test_validation_that_never_ran_is_still_found(digits, tmp_path, options):
    cb = _quiet(forget_classes=[3])
    epochs = options.pop("max_epochs")
    _fit(digits, tmp_path, [cb], epochs=epochs, **options)
    assert cb.report is not None and cb.report.task == "class"


def test_resuming_a_pre_unlearning_checkpoint_with_nothing_left_unlearns(digits, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _fit(digits, tmp_path, [ckpt], epochs=3)  # no unlearning: the checkpoint is from before
    cb = _quiet(forget_classes=[3])
    train, val = _loaders(digits)
    trainer = quiet_trainer(tmp_path, [cb], max_epochs=3)
    trainer.fit(ImageClassifier(), train, val, ckpt_path=ckpt.last_model_path)
    assert cb.report is not None and cb.report.applied


def test_a_step_chosen_on_a_handful_of_samples_warns(digits, model):
    train, _ = _loaders(digits)
    val = digits[1]
    ys = [int(val[i][1]) for i in range(len(val))]
    tiny = DataLoader(Subset(val, [ys.index(3), ys.index(4), ys.index(5)]), batch_size=3)
    with pytest.warns(UserWarning, match="chosen on 3 validation samples, too few"):
        _quiet(forget_classes=[3]).unlearn_model(model, train, tiny)


def test_query_data_of_the_wrong_size_is_named(digits, model):
    train, _ = _loaders(digits)
    queries = (torch.randn(3, 5), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"cannot run on query_data \(inputs \[3, 5\]\)"):
        li.influence_scores(model, train, queries, budget=32)


# ---------------------------------------------------------------- files


def _idx_gz(path, shape, payload):
    header = bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    path.write_bytes(gzip.compress(header + payload))
    return path


def test_an_idx_gz_is_decompressed_within_its_bound(tmp_path):
    huge = _idx_gz(tmp_path / "huge.gz", (60000, 4096, 4096), b"\x00" * 16)
    with pytest.raises(ValueError, match="more than max_bytes"):
        read_idx(huge)
    bomb = _idx_gz(tmp_path / "bomb.gz", (2, 2), b"\x00" * 10_000_000)
    with pytest.raises(ValueError, match="holds more than 4"):
        read_idx(bomb)
    ok = _idx_gz(tmp_path / "ok.gz", (2, 2), bytes([1, 2, 3, 4]))
    np.testing.assert_array_equal(read_idx(ok), [[1, 2], [3, 4]])


# ---------------------------------------------------------------- errors before training


class _DictNoLogits(ImageClassifier):
    def forward(self, x):
        return {"scores": self.net(x)}


class _HFStyle(ImageClassifier):
    """A Hugging Face-style module: keyword inputs, an output object with ``logits``."""

    def forward(self, pixel_values):
        return {"logits": self.net(pixel_values)}

    def _loss_acc(self, batch):
        logits = self(batch["pixel_values"])["logits"]
        loss = nn.functional.cross_entropy(logits, batch["labels"])
        return loss, (logits.argmax(-1) == batch["labels"]).float().mean(), len(logits)


class _HFDataset(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return {"pixel_values": x, "labels": y, "idx": i}


@pytest.mark.parametrize(
    ("module", "kwargs", "match"),
    [
        (ImageClassifier, {"forget_classes": [11]}, r"forget_classes \[11\] are outside"),
        (ImageClassifier, {"forget_ids": [99999]}, "the training dataset has 1168 samples"),
        (ImageClassifier, {"relabel": {0: 12}}, "relabel has labels outside 0..9"),
        (_DictNoLogits, {"forget_classes": [3]}, "cannot find logits"),
    ],
    ids=["class_outside", "id_outside", "relabel_outside", "dict_without_logits"],
)
@pytest.mark.parametrize("fast_dev_run", [False, True])
def test_mistakes_fail_before_training(digits, tmp_path, module, kwargs, match, fast_dev_run):
    train, val = _loaders(digits)
    trainer = quiet_trainer(tmp_path, [_quiet(**kwargs)], max_epochs=5, fast_dev_run=fast_dev_run)
    with pytest.raises((ValueError, TypeError), match=match):
        trainer.fit(module(), train, val)
    assert trainer.global_step == 0


def test_hugging_face_style_batches_and_outputs_unlearn(digits, tmp_path):
    train, val, _ = digits
    loaders = [DataLoader(_HFDataset(d), batch_size=64) for d in (train, val)]
    cb = _quiet(forget_classes=[3])
    L.seed_everything(0, verbose=False)
    quiet_trainer(tmp_path, [cb], max_epochs=4).fit(_HFStyle(), *loaders)
    assert cb.report.applied and cb.report.after["forget_acc"] <= 0.05


def test_a_validation_label_outside_the_logits_fails_before_training(digits, tmp_path):
    train, _ = _loaders(digits)
    xs, ys = _tensors(digits[1])
    ys[0] = 10
    val = DataLoader(TensorDataset(xs, ys), batch_size=64)
    trainer = quiet_trainer(tmp_path, [_quiet(forget_classes=[3])], max_epochs=5)
    with pytest.raises(ValueError, match="A validation label is 10, outside"):
        trainer.fit(ImageClassifier(), train, val)
    assert trainer.global_step == 0


def test_a_failed_write_on_rank_zero_still_meets_the_other_ranks_barrier(tmp_path):
    """Only rank 0 writes; if the write raises, rank 0 skips Trainer.save_checkpoint's barrier,
    which the other ranks wait at: the check must take that barrier before its broadcast."""
    from lightning_influence.callbacks.checkpoints import _save

    calls = []

    class Strategy:
        def barrier(self, name):
            calls.append(("barrier", name))

        def broadcast(self, obj, src=0):
            calls.append(("broadcast", obj is not None))
            return obj

    class Trainer:
        is_global_zero = True
        strategy = Strategy()

        def save_checkpoint(self, path):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointWriteError, match="No space left"):
        _save(Trainer(), str(tmp_path / "unlearned.ckpt"))
    assert calls == [("barrier", "Trainer.save_checkpoint"), ("broadcast", True)]
