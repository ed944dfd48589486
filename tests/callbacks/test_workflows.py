"""Everyday Lightning workflows around UnlearnCallback: checkpoints, test after fit, resume,
two callbacks, fast_dev_run, loggers that fail, missing validation data."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from torch.utils.data import DataLoader
from trainer_fixtures import digits_loaders, quiet_trainer

from lightning_influence import CaptureCallback, IndexedDataset, UnlearnCallback
from lightning_influence.callbacks.checkpoints import UNLEARNED_CHECKPOINT
from lightning_influence.demos.models import ImageClassifier
from lightning_influence.measure.metrics import evaluate

torch.set_num_threads(1)
EPOCHS = 6


@pytest.fixture(scope="module")
def digits():
    return digits_loaders()


def _trainer(tmp_path, callbacks, **kwargs) -> L.Trainer:
    return quiet_trainer(tmp_path, callbacks, **{"max_epochs": EPOCHS, **kwargs})


@pytest.fixture(scope="module")
def fitted(digits, tmp_path_factory):
    """(trainer, model, unlearn callback, checkpoint callback) after fit with unlearning."""
    tmp = tmp_path_factory.mktemp("fit")
    L.seed_everything(0, verbose=False)
    model = ImageClassifier()
    ckpt = ModelCheckpoint(dirpath=tmp / "ckpt", monitor="val_loss", save_last=True)
    unlearn = UnlearnCallback(forget_classes=[3], progress_bar=False)
    trainer = _trainer(tmp, [ckpt, unlearn])
    train, val, _ = digits
    with pytest.warns(UserWarning, match="still hold the model from before unlearning"):
        trainer.fit(model, train, val)
    return trainer, model, unlearn, ckpt


def test_checkpoints_after_fit_hold_the_unlearned_model(fitted, digits):
    trainer, model, unlearn, ckpt = fitted
    assert unlearn.report is not None and unlearn.report.applied
    assert ckpt.best_model_path.endswith(UNLEARNED_CHECKPOINT)
    for path in (ckpt.best_model_path, ckpt.last_model_path):
        state = torch.load(path, weights_only=False)
        assert state["callbacks"][unlearn.state_key]["report"]["applied"]
        restored = ImageClassifier()
        restored.load_state_dict(state["state_dict"])
        for k, v in model.state_dict().items():
            assert torch.equal(restored.state_dict()[k], v), f"{path}: {k} differs"


@pytest.mark.parametrize("ckpt_path", [None, "best", "last"])
def test_test_after_fit_uses_the_unlearned_model(fitted, digits, ckpt_path):
    trainer, model, _, _ = fitted
    _, _, test = digits
    work = copy.deepcopy(model)
    with torch.no_grad():  # scramble the in-memory weights: test must load the checkpoint
        for p in work.parameters():
            p.add_(torch.randn_like(p))
    trainer.test(work, dataloaders=test, ckpt_path=ckpt_path or "best", verbose=False)
    metrics = evaluate(work, test, [3])
    assert metrics["forget_acc"] <= 0.10, metrics


def test_resuming_a_finished_fit_does_not_unlearn_twice(fitted, digits, tmp_path):
    trainer, model, unlearn, ckpt = fitted
    train, val, _ = digits
    again = UnlearnCallback(forget_classes=[3], progress_bar=False)
    resumed = _trainer(tmp_path, [ModelCheckpoint(dirpath=tmp_path / "c2"), again])
    fresh = ImageClassifier()
    resumed.fit(fresh, train, val, ckpt_path=ckpt.best_model_path)
    assert again.report == unlearn.report  # loaded, not recomputed
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_two_unlearn_callbacks_in_one_trainer(tmp_path):
    a = UnlearnCallback(forget_classes=[3])
    b = UnlearnCallback(forget_classes=[5])
    assert a.state_key != b.state_key
    same = UnlearnCallback(forget_classes=[3])
    assert a.state_key == same.state_key  # stable across runs: checkpoints restore it


def test_fast_dev_run_does_not_unlearn(digits, tmp_path):
    train, val, _ = digits
    model = ImageClassifier()
    cb = UnlearnCallback(forget_classes=[3], progress_bar=False)
    trainer = _trainer(tmp_path, [cb], fast_dev_run=True)
    with pytest.warns(UserWarning, match="fast_dev_run"):
        trainer.fit(model, train, val)
    assert cb.report is None


def test_missing_validation_data_fails_before_training(digits, tmp_path):
    train, _, _ = digits
    model = ImageClassifier()
    before = copy.deepcopy(model.state_dict())
    trainer = _trainer(tmp_path, [UnlearnCallback(forget_classes=[3])], max_epochs=50)
    with pytest.raises(ValueError, match="validation data"):
        trainer.fit(model, train)
    assert trainer.global_step == 0
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v)


class _BrokenLogger(Logger):
    name, version = "broken", 0

    def log_metrics(self, metrics, step=None):
        if any(k.startswith("unlearn/") for k in metrics):
            raise OSError("disk full")

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_a_failing_logger_warns_and_keeps_the_unlearned_model(digits, tmp_path):
    train, val, test = digits
    L.seed_everything(0, verbose=False)
    model = ImageClassifier()
    cb = UnlearnCallback(forget_classes=[3], progress_bar=False)
    loggers = [_BrokenLogger(), CSVLogger(tmp_path)]
    trainer = _trainer(tmp_path, [cb], logger=loggers, enable_checkpointing=False)
    with pytest.warns(UserWarning, match="failed to log"):
        trainer.fit(model, train, val)
    assert cb.report is not None and cb.report.applied
    # the model in memory is the unlearned one the report describes (validation values)
    kept = evaluate(model, val, [3])
    assert kept["forget_acc"] == pytest.approx(cb.report.after["forget_acc"])
    assert kept["forget_acc"] < cb.report.before["forget_acc"] - 0.5
    assert any("unlearn/after_f1" in line for line in _csv_lines(tmp_path))


def _csv_lines(root):
    return [line for p in root.rglob("metrics.csv") for line in p.read_text().splitlines()]


def test_two_unlearn_callbacks_fit_and_checkpoint_side_by_side(digits, tmp_path):
    train, val, _ = digits
    L.seed_everything(0, verbose=False)
    model = ImageClassifier()
    a = UnlearnCallback(forget_classes=[3], progress_bar=False)
    b = UnlearnCallback(forget_classes=[5], progress_bar=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, [ckpt, a, b], max_epochs=3)
    trainer.fit(model, train, val)  # raised "Found more than one stateful callback" before
    state = torch.load(ckpt.last_model_path, weights_only=False)["callbacks"]
    assert state[a.state_key]["report"]["task"] == "class"
    assert state[b.state_key]["report"] is not None
    assert a.report is not None and b.report is not None


def test_a_capture_callback_on_the_training_pool_replaces_the_capture_pass(digits, tmp_path):
    train_loader, val, _ = digits
    pool = DataLoader(IndexedDataset(train_loader.dataset.dataset), batch_size=256)
    L.seed_everything(0, verbose=False)
    capture = CaptureCallback(dataloader_idx=1)
    unlearn = UnlearnCallback(forget_classes=[3], progress_bar=False)
    trainer = _trainer(tmp_path, [capture, unlearn], max_epochs=3, enable_checkpointing=False)
    trainer.fit(ImageClassifier(), train_loader, [val, pool])
    assert capture.result is not None and capture.captured_step == trainer.global_step
    assert unlearn.report is not None
    assert unlearn.report.capture_source == "capture_callback"
    assert unlearn.report.pool_size == len(pool.dataset)


def test_without_a_capture_the_callback_captures_by_itself(digits, tmp_path):
    train_loader, val, _ = digits
    unlearn = UnlearnCallback(forget_classes=[3], progress_bar=False)
    trainer = _trainer(tmp_path, [unlearn], max_epochs=1, enable_checkpointing=False)
    trainer.fit(ImageClassifier(), train_loader, val)
    assert unlearn.report.capture_source == "pass"


def test_save_last_link_is_replaced_not_written_through(digits, tmp_path):
    train, val, _ = digits
    L.seed_everything(0, verbose=False)
    model = ImageClassifier()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_last="link")
    cb = UnlearnCallback(forget_classes=[3], progress_bar=False)
    trainer = _trainer(tmp_path, [ckpt, cb], max_epochs=3)
    trainer.fit(model, train, val)
    assert cb.report.applied
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.exists() and not last.is_symlink()
    assert torch.load(last, weights_only=False)["callbacks"][cb.state_key]["report"]["applied"]
    for path in ckpt.best_k_models:  # the fit's own checkpoint still holds the fit's model
        state = torch.load(path, weights_only=False)
        assert state["callbacks"][cb.state_key]["report"] is None


class _BestAtEpoch2(ImageClassifier):
    """Logs a score that is best at epoch 2, so the best checkpoint is not the last."""

    def on_validation_epoch_end(self):
        self.log("score", -abs(self.current_epoch - 2.0))


def test_weights_best_unlearns_the_monitored_best_checkpoint(digits, tmp_path):
    train, val, _ = digits
    L.seed_everything(0, verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="score", mode="max")
    unlearn = UnlearnCallback(forget_classes=[3], progress_bar=False, weights="best")
    trainer = _trainer(tmp_path, [ckpt, unlearn])
    model = _BestAtEpoch2()
    with pytest.warns(UserWarning, match="still hold the model from before unlearning"):
        trainer.fit(model, train, val)
    best_file = unlearn.report.source
    assert best_file.endswith(".ckpt") and "unlearned" not in best_file
    assert "epoch=2-" in best_file
    best = ImageClassifier()
    best.load_state_dict(torch.load(best_file, weights_only=False)["state_dict"])
    before = evaluate(best, val, [3])  # what the callback measured before unlearning
    assert before["forget_acc"] == pytest.approx(unlearn.report.before["forget_acc"])
    assert before["retain_acc"] == pytest.approx(unlearn.report.before["retain_acc"])
    assert ckpt.best_model_path.endswith(UNLEARNED_CHECKPOINT)
    assert unlearn.report.applied


def test_weights_must_be_last_or_best():
    with pytest.raises(ValueError, match="weights must be 'last'.*or 'best'"):
        UnlearnCallback(forget_classes=[3], weights="final")
