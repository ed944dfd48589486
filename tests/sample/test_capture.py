"""Capture callback, offline capture pass and batch parsing."""

from __future__ import annotations

import io
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_influence.data.batches import IndexedDataset, ParsedBatch, parse_batch
from lightning_influence.sample.capture import (
    CaptureCallback,
    CaptureResult,
    FeatureRecorder,
    capture_pool,
    find_feature_module,
)

N_TRAIN, N_VAL, D_IN, HIDDEN, C = 40, 23, 5, 6, 3

# A shuffled validation loader is deliberate here: ids must come from the data, not positions.
pytestmark = pytest.mark.filterwarnings("ignore:.*shuffling enabled:UserWarning")


class TinyModule(pl.LightningModule):
    """Linear -> ReLU -> Linear; validation_step returns only the loss and calls self(x)."""

    def __init__(self, step_output: str = "loss") -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU())
        self.head = nn.Linear(HIDDEN, C)
        self.step_output = step_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        if self.step_output == "dict":
            # Bypass self.forward so only the returned dict can supply the logits.
            logits = self.head(self.body(x))
            return {"loss": nn.functional.cross_entropy(logits, y), "logits": logits}
        if self.step_output == "hidden":
            # Neither returns logits nor calls self(x): the callback cannot find logits.
            logits = self.head(self.body(x))
            return nn.functional.cross_entropy(logits, y)
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return TensorDataset(x, y)


def _loaders(shuffle_val: bool = False, indexed: bool = True):
    train, val = _data(N_TRAIN, 0), _data(N_VAL, 1)
    if indexed:
        train, val = IndexedDataset(train), IndexedDataset(val)
    return (
        DataLoader(train, batch_size=8, shuffle=True),
        DataLoader(val, batch_size=5, shuffle=shuffle_val),
    )


def _trainer(callbacks, **kw) -> pl.Trainer:
    args = dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=2,
    )
    args.update(kw)
    return pl.Trainer(callbacks=callbacks, **args)


def _fit(cb: CaptureCallback, module: pl.LightningModule | None = None, **kw):
    torch.manual_seed(0)
    module = module or TinyModule()
    train, val = _loaders(**{k: kw.pop(k) for k in ("shuffle_val", "indexed") if k in kw})
    trainer = _trainer([cb], **kw)
    trainer.fit(module, train, val)
    return module, trainer


def _reference(module: TinyModule) -> tuple[torch.Tensor, torch.Tensor]:
    x = _data(N_VAL, 1).tensors[0]
    with torch.no_grad():
        feats = module.body(x)
        return feats, module.head(feats)


@pytest.fixture(scope="module")
def fitted():
    cb = CaptureCallback()
    module, _ = _fit(cb, shuffle_val=True)
    return cb, module


def test_capture_exact_ids_and_values(fitted):
    cb, module = fitted
    res = cb.require_result()
    assert torch.equal(res.ids, torch.arange(N_VAL))  # exact, unique, sorted by id
    assert torch.equal(res.labels, _data(N_VAL, 1).tensors[1])
    feats, logits = _reference(module)
    # The validation loader was shuffled: rows must still line up with their ids.
    torch.testing.assert_close(res.features, feats)
    torch.testing.assert_close(res.logits, logits)
    assert res.features.shape == (N_VAL, HIDDEN) and res.logits.shape == (N_VAL, C)
    assert res.nbytes == N_VAL * (8 + 8 + 4 * C + 4 * HIDDEN)


def test_captured_tensors_work_with_autograd_and_hvp(fitted):
    """Validation runs under inference_mode; the stored copies must not be inference tensors."""
    cb, _ = fitted
    res = cb.require_result()
    for t in (res.ids, res.labels, res.logits, res.features):
        assert not t.is_inference()
        assert t.device.type == "cpu" and not t.requires_grad

    feats = res.features.double()
    head = nn.Linear(HIDDEN, C).double()
    params = {k: v.detach() for k, v in head.named_parameters()}

    def loss_fn(p):
        out = torch.func.functional_call(head, p, (feats,))
        return nn.functional.cross_entropy(out, res.labels)

    v = {k: torch.randn_like(t) for k, t in params.items()}
    _, hvp = torch.func.jvp(torch.func.grad(loss_fn), (params,), (v,))
    # Compare with double backward through the same captured tensors.
    p2 = {k: t.clone().requires_grad_() for k, t in params.items()}
    g = torch.autograd.grad(loss_fn(p2), list(p2.values()), create_graph=True)
    dot = sum((gi * v[k]).sum() for gi, k in zip(g, p2, strict=True))
    hvp2 = torch.autograd.grad(dot, list(p2.values()))
    for k, h2 in zip(p2, hvp2, strict=True):
        torch.testing.assert_close(hvp[k], h2)
    # Gradients w.r.t. the captured features themselves also work.
    f = feats.clone().requires_grad_()
    nn.functional.cross_entropy(head(f), res.labels).backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()


def test_sanity_check_is_not_captured():
    # every_n_epochs=2 with one epoch: only the sanity check validates before the epoch-0 run,
    # and that one is skipped, so nothing may be captured.
    cb = CaptureCallback(every_n_epochs=2)
    _fit(cb, num_sanity_val_steps=2)
    assert cb.result is None
    with pytest.raises(RuntimeError, match="captured nothing"):
        cb.require_result()


def test_logits_from_step_output_dict_and_half_precision():
    cb = CaptureCallback(half_precision=True, store_features=False)
    module, _ = _fit(cb, module=TinyModule(step_output="dict"))
    res = cb.require_result()
    assert res.features is None and res.logits.dtype == torch.float16
    _, logits = _reference(module)
    torch.testing.assert_close(res.logits.float(), logits, atol=2e-3, rtol=2e-3)


def test_missing_logits_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no logits"):
        _fit(CaptureCallback(), module=TinyModule(step_output="hidden"))


def test_no_ids_uses_positions_with_warning():
    cb = CaptureCallback()
    with pytest.warns(UserWarning, match="no sample ids"):
        _fit(cb, indexed=False)
    assert torch.equal(cb.require_result().ids, torch.arange(N_VAL))


def test_state_dict_round_trip(fitted):
    cb, _ = fitted
    buf = io.BytesIO()
    torch.save(cb.state_dict(), buf)
    buf.seek(0)
    other = CaptureCallback()
    other.load_state_dict(torch.load(buf, weights_only=True))
    a, b = cb.require_result(), other.require_result()
    for k in ("ids", "labels", "logits", "features"):
        assert torch.equal(getattr(a, k), getattr(b, k))
    assert other.captured_epoch == cb.captured_epoch
    empty = CaptureCallback()
    empty.load_state_dict(CaptureCallback().state_dict())
    assert empty.result is None


def test_state_survives_a_checkpoint(tmp_path):
    cb = CaptureCallback()
    module, trainer = _fit(cb)
    path = tmp_path / "c.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    restored = CaptureCallback()
    restored.load_state_dict(ckpt["callbacks"][restored.state_key])
    assert torch.equal(restored.require_result().features, cb.require_result().features)


def test_max_bytes_refused_before_exceeding():
    # One batch of 5 rows costs 5 * (16 + 4 * (3 + 6)) = 260 bytes; allow one batch only.
    cb = CaptureCallback(max_bytes=300)
    with pytest.raises(MemoryError, match="max_bytes=300"):
        _fit(cb, num_sanity_val_steps=0)
    assert cb.result is None
    loader = _loaders()[1]
    with pytest.raises(MemoryError, match="max_bytes"):
        capture_pool(TinyModule(), loader, max_bytes=300)


def test_wrong_feature_module_name():
    model = TinyModule()
    with pytest.raises(ValueError, match="valid names include") as err:
        find_feature_module(model, "does.not.exist")
    assert "body.0" in str(err.value)
    with pytest.raises(ValueError, match="not a submodule"):
        _fit(CaptureCallback(feature_module="nope"), num_sanity_val_steps=0)
    x = torch.randn(3, D_IN)
    assert find_feature_module(model, data=(x, torch.zeros(3, dtype=torch.long)))[0] == "head"
    assert find_feature_module(model, "body.0")[1] is model.body[0]
    with pytest.raises(ValueError, match="pass data=<a batch>"):
        find_feature_module(model)
    with pytest.raises(ValueError, match="no trainable nn.Linear/nn.Conv layer that runs"):
        find_feature_module(nn.Sequential(nn.ReLU()), data=(x, torch.zeros(3)))


def test_the_default_feature_is_the_input_of_the_output_layer_that_runs_last():
    """One output-layer rule: the features are the input of the last trainable Linear/Conv
    that runs, not of the last nn.Linear registered (here an auxiliary head the forward
    never calls), in capture_pool (the callback: the test below)."""

    class AuxLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head, self.aux = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x)))

    torch.manual_seed(0)
    model = AuxLast()
    x, y = torch.randn(10, 4), torch.arange(10) % 3
    loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=4)
    got = capture_pool(model, loader)
    assert got.features.shape == (10, 6)
    expected = torch.tanh(model.body(x)).detach()
    assert torch.allclose(got.features, expected, atol=1e-6)


def test_capture_pool_matches_reference_and_restores_mode():
    torch.manual_seed(0)
    model = TinyModule()
    model.train()
    model.body.eval()  # mixed modes must come back as they were
    loader = DataLoader(IndexedDataset(_data(N_VAL, 1)), batch_size=4, shuffle=True)
    res = capture_pool(model, loader, feature_module="head", dtype=torch.float64)
    assert model.training and not model.body.training and model.head.training
    assert torch.equal(res.ids, torch.arange(N_VAL))
    feats, logits = _reference(model)
    torch.testing.assert_close(res.features, feats.double())
    torch.testing.assert_close(res.logits, logits.double())
    # Features from another module: the input of the first Linear is the raw input.
    res0 = capture_pool(model, loader, feature_module="body.0")
    torch.testing.assert_close(res0.features, _data(N_VAL, 1).tensors[0])


def test_capture_pool_without_ids_and_empty_loader():
    model = TinyModule()
    loader = DataLoader(_data(N_VAL, 1), batch_size=4)
    with pytest.warns(UserWarning, match="running positions"):
        res = capture_pool(model, loader)
    assert torch.equal(res.ids, torch.arange(N_VAL))
    with pytest.raises(ValueError, match="no batches"):
        capture_pool(model, [])


def test_capture_result_helpers():
    res = CaptureResult(
        ids=torch.tensor([5, 2, 9]),
        labels=torch.tensor([0, 1, 0]),
        logits=torch.arange(6.0).reshape(3, 2),
        features=None,
    )
    sub = res.subset([9, 5])
    assert sub.ids.tolist() == [9, 5] and sub.logits[:, 0].tolist() == [4.0, 0.0]
    assert len(sub) == 2 and sub.features is None
    with pytest.raises(KeyError, match="7"):
        res.subset([7])
    back = CaptureResult.from_dict(res.to_dict())
    assert torch.equal(back.logits, res.logits)
    with pytest.raises(ValueError, match="rows"):
        CaptureResult(torch.arange(3), torch.zeros(2, dtype=torch.long), torch.zeros(3, 2))


def test_feature_recorder_flattens():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    with FeatureRecorder(conv[1]) as rec:
        conv(torch.randn(7, 1, 6, 6))
    assert rec.last.shape == (7, 32)
    conv(torch.randn(2, 1, 6, 6))  # the hook is off after the block
    assert rec.last.shape == (7, 32)


def test_parse_batch_variants():
    x, y, i = torch.randn(4, 2), torch.arange(4), torch.tensor([7, 8, 9, 10])
    assert parse_batch((x, y)).ids is None
    assert parse_batch([x, y, i]).ids.tolist() == [7, 8, 9, 10]
    for keys in (("x", "y", "idx"), ("image", "label", "index"), ("inputs", "targets", "ids")):
        pb = parse_batch(dict(zip(keys, (x, y, i), strict=True)))
        assert pb.x is x and torch.equal(pb.y, y) and torch.equal(pb.ids, i)
    assert parse_batch({"input": x, "target": y}).ids is None
    pb = ParsedBatch(x, y, None)
    assert parse_batch(pb) is pb and len(pb) == 4
    hf = parse_batch({"pixel_values": x, "labels": y, "idx": i, "name": "a"})  # model(**x)
    assert list(hf.x) == ["pixel_values"] and hf.x["pixel_values"] is x
    assert torch.equal(hf.ids, i)
    with pytest.raises(ValueError, match="batch_parser"):
        parse_batch({"labels": y, "name": "only labels"})
    with pytest.raises(ValueError, match="batch_parser"):
        parse_batch({"pixels": x, "classes": y})
    with pytest.raises(ValueError, match="batch_parser"):
        parse_batch((x,))
    with pytest.raises(ValueError, match="batch_parser"):
        parse_batch(x)
    with pytest.raises(ValueError, match="integers"):
        parse_batch((x, y, i.float()))


def test_indexed_dataset():
    base = _data(6, 3)
    ds = IndexedDataset(base)
    x, y, idx = ds[4]
    assert idx == 4 and isinstance(idx, int) and torch.equal(x, base[4][0])
    batch = next(iter(DataLoader(ds, batch_size=6)))
    assert parse_batch(batch).ids.tolist() == list(range(6))
    dict_ds = IndexedDataset([{"image": torch.zeros(2), "label": 1}])
    assert dict_ds[0][1:] == (1, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ds) == 6


def test_the_callbacks_default_feature_is_the_output_layers_input_too():
    """The callback finds the output layer on the first validation batch: an nn.Linear
    registered after the head (never run) does not become the feature module."""

    class AuxLast(TinyModule):
        def __init__(self) -> None:
            super().__init__()
            self.aux = nn.Linear(D_IN, 2)

    cb = CaptureCallback()
    module, _ = _fit(cb, AuxLast(), num_sanity_val_steps=0)
    feats, logits = _reference(module)
    result = cb.require_result()
    assert torch.allclose(result.features, feats, atol=1e-6)
    assert torch.allclose(result.logits, logits, atol=1e-6)
