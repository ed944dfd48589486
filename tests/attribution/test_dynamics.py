"""MarginCallback: the area under the margin recorded during fit finds flipped labels."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from trainer_fixtures import quiet_trainer

import lightning_influence as li
from lightning_influence.attribution.dynamics import margins
from lightning_influence.demos.corruptions import flip_uniform
from lightning_influence.demos.datasets import digits_splits
from lightning_influence.demos.models import ImageClassifier

torch.set_num_threads(1)


def test_margins_against_a_loop():
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 3.5], [1.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 2])
    expected = [2.0 - 1.0, 3.0 - 3.5, 0.0 - 1.0]
    assert margins(logits, labels).tolist() == pytest.approx(expected)


def _flipped_digits(seed: int):
    train, val, _ = digits_splits(0)
    x, y = train.tensors
    noisy, flipped = flip_uniform(y, 0.05, seed)
    return x, noisy, flipped, val


def _fit(x, y, val, seed, callbacks, tmp_path, epochs=15):
    L.seed_everything(seed, verbose=False)
    model = ImageClassifier()
    loader = DataLoader(
        li.IndexedDataset(TensorDataset(x, y)),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    trainer = quiet_trainer(tmp_path, callbacks, max_epochs=epochs)
    trainer.fit(model, loader, DataLoader(val, batch_size=256))
    return model.eval(), trainer


def test_aum_finds_flipped_labels_far_better_than_the_final_loss(tmp_path):
    """Digits, 5 % of the labels flipped, the demo recipe (15 epochs). Measured on flip seeds
    0-4: AUM top-k precision 1.000, 0.966, 0.983, 0.948, 0.966; the final loss 0.362, 0.448,
    0.448, 0.414, 0.759."""
    x, noisy, flipped, val = _flipped_digits(seed=0)
    cb = li.MarginCallback()
    model, _ = _fit(x, noisy, val, 0, [cb], tmp_path)
    ids, aum = cb.aum()
    assert torch.equal(ids, torch.arange(len(noisy)))  # every sample seen
    assert int(cb.counts.min()) == 15  # once per epoch
    k = len(flipped)
    truth = torch.zeros(len(noisy), dtype=torch.bool)
    truth[flipped] = True
    aum_precision = float(truth[torch.topk(-aum, k).indices].float().mean())
    with torch.no_grad():
        loss = F.cross_entropy(model(x), noisy, reduction="none")
    loss_precision = float(truth[torch.topk(loss, k).indices].float().mean())
    assert aum_precision >= 0.85
    assert aum_precision >= loss_precision + 0.2
    flagged = cb.flagged()  # flag_share 0.05 of 1168: the 58 lowest AUM, lowest first
    assert len(flagged) == round(0.05 * len(noisy)) and float(truth[flagged].float().mean()) >= 0.85
    assert torch.equal(flagged[:5], ids[torch.argsort(aum)[:5]])


def test_batches_without_ids_are_named(tmp_path):
    x, noisy, _, val = _flipped_digits(seed=0)
    trainer = quiet_trainer(tmp_path, [li.MarginCallback()], max_epochs=1)
    loader = DataLoader(TensorDataset(x, noisy), batch_size=64)
    with pytest.raises(ValueError, match="needs sample ids.*IndexedDataset"):
        trainer.fit(ImageClassifier(), loader, DataLoader(val, batch_size=256))


def test_the_records_are_state_and_a_resumed_fit_adds_to_them(tmp_path):
    x, noisy, _, val = _flipped_digits(seed=0)
    cb = li.MarginCallback()
    _fit(x, noisy, val, 0, [cb], tmp_path, epochs=2)
    state = {k: v.clone() for k, v in cb.state_dict().items()}
    again = li.MarginCallback()
    again.load_state_dict(state)
    assert torch.equal(again.aum()[1], cb.aum()[1])
    _fit(x, noisy, val, 0, [again], tmp_path, epochs=1)
    assert int(again.counts.min()) == 3  # 2 epochs restored + 1 recorded
    with pytest.raises(ValueError, match="start_epoch"):
        li.MarginCallback(start_epoch=-1)


def test_two_margin_callbacks_with_different_start_epochs_fit_side_by_side(tmp_path):
    x, noisy, _, val = _flipped_digits(seed=0)
    early, late = li.MarginCallback(), li.MarginCallback(start_epoch=1)
    assert early.state_key != late.state_key
    _fit(x, noisy, val, 0, [early, late], tmp_path, epochs=2)
    assert int(early.counts.min()) == 2 and int(late.counts.min()) == 1


def test_the_recording_time_is_measured_and_small(tmp_path):
    x, noisy, _, val = _flipped_digits(seed=0)
    cb = li.MarginCallback()
    start = __import__("time").perf_counter()
    _fit(x, noisy, val, 0, [cb], tmp_path, epochs=3)
    fit = __import__("time").perf_counter() - start
    assert 0 < cb.seconds < 0.25 * fit  # measured: about 1-3 % of a digits fit


class _ImageLogger(L.pytorch.loggers.CSVLogger):
    """A CSV logger that also takes images (the figure API of W&B-style loggers)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.images = []

    def log_image(self, key, images, step=None):
        self.images.append((key, images[0].shape, step))


def test_the_aum_histogram_is_logged_with_the_flagging_cut(tmp_path):
    pytest.importorskip("matplotlib")
    x, noisy, _, val = _flipped_digits(seed=0)
    logger = _ImageLogger(tmp_path)
    cb = li.MarginCallback(flag_share=0.1)
    L.seed_everything(0, verbose=False)
    loader = DataLoader(li.IndexedDataset(TensorDataset(x, noisy)), batch_size=64)
    trainer = L.Trainer(max_epochs=1, logger=logger, callbacks=[cb], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(ImageClassifier(), loader, DataLoader(val, batch_size=256))
    assert [(k, s[-1]) for k, s, _ in logger.images] == [("dynamics/aum_histogram", 3)]
    assert len(cb.flagged()) == round(0.1 * len(noisy))
    for bad in (0.0, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="flag_share"):
            li.MarginCallback(flag_share=bad)


def test_score_histogram_counts_the_flagged_side():
    pytest.importorskip("matplotlib")
    from lightning_influence.attribution.figures import score_histogram_figure

    fig = score_histogram_figure(torch.arange(10.0), cut=2.0, flag="below")
    assert "3 at or below the cut" in fig.axes[0].get_title()
    fig = score_histogram_figure(torch.arange(10.0), cut=7.0, xlabel="self-influence", flag="above")
    assert "3 at or above the cut" in fig.axes[0].get_title()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("0.1", "without quotes"),
        (True, "must be a number"),
        (0.0, r"in \(0, 1\]"),
        (1.5, r"in \(0, 1\]"),
    ],
)
def test_flag_share_is_checked_like_the_settings(value, match):
    with pytest.raises(ValueError, match=match):
        li.MarginCallback(flag_share=value)
