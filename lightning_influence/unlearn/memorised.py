"""Which forgotten samples has the model memorised?

A sample whose label agrees with the data around it is predicted about as well by a model
that never saw it, so forgetting it asks for little: its loss should rise to held-out data's
(:class:`~lightning_influence.unlearn.scoring.MembershipScorer`). A sample whose label disagrees
with the data around it (a flipped label, an outlier) is predicted with that label only
because the model was trained on it: a retrained model predicts another class. Its loss says
nothing of this: held-out samples of its labelled class are fitted, so a memorised sample
looks "as familiar as held-out data" while it is still fitted.

The test here asks held-out data instead. A forgotten sample is *memorised* when the model
predicts its label while its ``k`` nearest validation samples, in the space of the output
layer's inputs, give that label a mean predicted probability below ``threshold``. On digits
with 3 % of the labels flipped and trained for 40 epochs, this flags 71 % of the flipped
samples (86 % of the fitted ones) and 1.3 % of the clean training samples.

How many of them would a retrained model still predict as their labels, and how many of the
other forgotten rows? The neighbours' mean probability ``e`` is a raw estimate. Validation
rows *are* unseen rows, so they calibrate it: each validation row's ``e`` from its own
validation neighbours (itself left out), against whether the model predicts its label; a
forgotten row's *calibrated* rate is the share of validation rows with an ``e`` within
0.05 of its own that the model predicts as their labels, counted together with
``PRIOR_ROWS`` pseudo-rows at ``e`` itself (:func:`heldout_fit_rate`: where few validation
rows are alike, the raw estimate stands). On full Fashion-MNIST, random deletions, the
calibrated rate of all forgotten rows is 0.916-0.928 where a retrained model predicts
0.893-0.933 of them (raw ``e``: 0.865-0.884), and that of the memorised rows 0.46-0.50
where it predicts 0.48-0.70 (raw: 0.36-0.38). Where the model has memorised flipped labels
(digits, 40 epochs) the trained features carry the memorisation and every neighbour-based
estimate runs high (0.10-0.20 for rows that retraining fits 0-5 % of): the memorised rows
are therefore made unfitted by default, and the calibrated rates only guard against forgetting
far past what a model that never saw the rows would do
(:meth:`Memorised.unseen_accuracy`, :class:`~lightning_influence.unlearn.scoring.MembershipScorer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_influence.data.batches import Batch
from lightning_influence.data.forward import inputs_take
from lightning_influence.data.pool import Rows
from lightning_influence.unlearn.output_layer import OutputLayerInputs
from lightning_influence.unlearn.selection import output_layer

__all__ = ["Memorised", "memorised_rows"]

#: forgotten rows per block of the distance matrix
_CHUNK = 1024


@dataclass(frozen=True)
class Memorised:
    """The forgotten rows a model fits against held-out data.

    Attributes:
        rows: bool ``[len(forget)]``, the memorised rows.
        expected: float ``[len(forget)]``, for every forgotten row the mean probability
            that its validation neighbours are given its label: what a model that never saw
            it would give that label, estimated from data like it.
        num_classes: the logits' width.
        calibrated: float ``[len(forget)]``, for every forgotten row the rate at which the
            model predicts the labels of unseen (validation) rows with an ``expected`` like
            its own: how often a model that never saw it would predict its label,
            calibrated on held-out data (:func:`heldout_fit_rate`; None where the validation
            rows are too few).
    """

    rows: Tensor
    expected: Tensor
    num_classes: int
    calibrated: Tensor | None = None

    def expected_share(self) -> float:
        """The share of the memorised rows a model that never saw them would still predict
        as their labels (estimated: the mean of their ``expected``)."""
        return float(self.expected[self.rows].mean()) if bool(self.rows.any()) else 0.0

    def calibrated_share(self) -> float:
        """The share of the memorised rows a retrained model would still predict as their
        labels, calibrated on validation rows (the raw :meth:`expected_share` where no
        calibration was possible)."""
        if self.calibrated is None:
            return self.expected_share()
        return float(self.calibrated[self.rows].mean()) if bool(self.rows.any()) else 0.0

    def unseen_accuracy(self) -> float | None:
        """The accuracy on the forgotten rows of a model that never saw them, as far as
        held-out data tells: the memorised rows unfitted, every other row at its calibrated
        rate (None: no calibration)."""
        if self.calibrated is None:
            return None
        return float(torch.where(self.rows, 0.0, self.calibrated).mean())

    def loss_caps(self) -> Tensor:
        """Per forgotten row, the loss a model that never saw it would have on its label,
        ``-log(expected)``, at most a uniform guess's ``log C``: how far removing it should
        raise its loss."""
        return -torch.log(self.expected.clamp(min=1.0 / self.num_classes))


def _neighbour_label_probability(
    feat: Tensor,
    ref_feat: Tensor,
    ref_prob: Tensor,
    labels: Tensor,
    k: int,
    self_index: Tensor | None = None,
) -> Tensor:
    """Per row of ``feat``, the mean probability of its label over its ``k`` nearest rows
    of ``ref_feat`` (row ``i`` of ``feat`` is row ``self_index[i]`` of ``ref_feat`` when
    ``self_index`` is given, and is then left out of its own neighbours)."""
    out = torch.empty(len(labels), dtype=torch.float64, device=labels.device)
    for i in range(0, len(labels), _CHUNK):
        dist = torch.cdist(feat[i : i + _CHUNK], ref_feat)
        if self_index is not None:
            rows = torch.arange(len(dist), device=dist.device)
            dist[rows, self_index[i : i + _CHUNK].to(dist.device)] = float("inf")
        near = dist.topk(k, largest=False).indices
        out[i : i + _CHUNK] = ref_prob[near, labels[i : i + _CHUNK].view(-1, 1)].mean(1)
    return out


#: validation rows below which no calibration is made (the raw estimate is used)
MIN_CALIBRATION_ROWS = 50
#: validation rows with an ``expected`` within this of a row's count as alike
CALIBRATION_WIDTH = 0.05
#: pseudo-rows at the raw estimate that the alike validation rows are counted with
PRIOR_ROWS = 20.0
#: validation rows the calibration is fitted on at most (a seeded random subset of them;
#: their neighbours are still taken among all validation rows), which bounds its cost
MAX_CALIBRATION_ROWS = 8192


def heldout_fit_rate(
    expected: Tensor, v_feat: Tensor, v_prob: Tensor, v_labels: Tensor, k: int
) -> Tensor | None:
    """Per row of ``expected`` (its neighbours' mean probability of its label), the share of
    validation rows with a like value that the model predicts as their labels, counted with
    :data:`PRIOR_ROWS` pseudo-rows at the value itself; each validation row's value comes
    from the other validation rows (None: fewer than :data:`MIN_CALIBRATION_ROWS` rows). At
    most :data:`MAX_CALIBRATION_ROWS` validation rows, drawn with a fixed seed, are set
    against their neighbours among all of them."""
    n = len(v_labels)
    if n < max(MIN_CALIBRATION_ROWS, k + 1):
        return None
    picked = torch.arange(n, device=v_labels.device)
    if n > MAX_CALIBRATION_ROWS:
        draw = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        picked = draw[:MAX_CALIBRATION_ROWS].sort().values.to(v_labels.device)
    labels = v_labels[picked]
    e = _neighbour_label_probability(v_feat[picked], v_feat, v_prob, labels, k, picked)
    predicted = (v_prob[picked].argmax(-1) == labels).double()
    order = e.argsort()
    e, hits = e[order], torch.cat([predicted.new_zeros(1), predicted[order].cumsum(0)])
    lo = torch.searchsorted(e, expected - CALIBRATION_WIDTH, right=False)
    hi = torch.searchsorted(e, expected + CALIBRATION_WIDTH, right=True)
    alike, alike_hits = (hi - lo).double(), hits[hi] - hits[lo]
    return (alike_hits + PRIOR_ROWS * expected) / (alike + PRIOR_ROWS)


def memorised_rows(
    model: nn.Module,
    forget: Rows,
    val: Rows,
    predict,
    k: int = 10,
    threshold: float = 0.5,
) -> Memorised | None:
    """The forgotten rows the model fits against held-out data.

    Args:
        model: the model at the weights to judge (before unlearning).
        forget: the forgotten training rows (inputs, labels) on the model's device.
        val: the validation rows on the model's device.
        predict: ``predict(model, x) -> logits``.
        k: validation neighbours per forgotten row.
        threshold: a fitted row is memorised when its neighbours' mean probability of its
            label is below this.

    Returns:
        None when the output layer's inputs cannot be recorded (e.g. a layer that takes
        several tensors) or the logits are not class scores: then no row is judged.
    """
    if len(val) == 0 or forget.y.ndim != 1:
        return None
    try:
        first = Batch(inputs_take(forget.x, slice(0, 2)), forget.y[:2])  # any input format
        layer = output_layer(model, [first])
    except ValueError:
        return None
    f_rec = OutputLayerInputs.record(model, layer, predict, forget.x)
    v_rec = OutputLayerInputs.record(model, layer, predict, val.x)
    if f_rec is None or v_rec is None:
        return None
    f_logits, v_logits = f_rec.logits(), v_rec.logits()
    if f_logits.ndim != 2 or f_logits.shape[1] < 2:
        return None
    f_feat, v_feat = f_rec.inputs.flatten(1).double(), v_rec.inputs.flatten(1).double()
    v_prob = v_logits.double().softmax(-1)
    labels = forget.y.long()
    k = min(k, len(val))
    expected = _neighbour_label_probability(f_feat, v_feat, v_prob, labels, k)
    fitted = f_logits.argmax(-1) == labels
    rows = fitted & (expected < threshold)
    calibrated = heldout_fit_rate(expected, v_feat, v_prob, val.y.long(), k)
    return Memorised(rows, expected, int(f_logits.shape[1]), calibrated)
