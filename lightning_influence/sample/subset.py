"""The Hessian subset, one front end for unlearning and the influence scores.

From a pool of retained training rows (:mod:`lightning_influence.data.pool` reads it), the
subset is built in two steps, each written once:

1. :func:`capture_candidates`: the candidates' logits (and features for
   ``sampler="feature"``) at the current weights, from a ``CaptureCallback``'s capture when
   it covers the pool, else one no-grad pass (split over the processes under DDP);
2. :func:`draw_subset`: the sampler (:mod:`lightning_influence.sample.sampling`) picks ``budget``
   rows and weighs each for the pool share it stands for.

:func:`hessian_subset` runs both on a pool and returns the weighted batches; unlearning
runs them as its ``capture`` and ``sample`` stages (:func:`~lightning_influence.unlearn.pipeline.
run_unlearning`). Which rows, how many and by which rule are the fields of
:class:`~lightning_influence.unlearn.settings.HessianArguments` in both products.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_influence.callbacks.progress import Counted, progress_bar
from lightning_influence.data.batches import Batch
from lightning_influence.data.distributed import Shards, active_shards
from lightning_influence.data.forward import check_finite_inputs
from lightning_influence.data.pool import Rows
from lightning_influence.sample.capture import CaptureResult, capture_pool
from lightning_influence.sample.sampling import SubsetSelection, get_sampler
from lightning_influence.unlearn.settings import HessianArguments

__all__ = ["capture_candidates", "draw_subset", "hessian_subset", "subset_rows"]


def capture_candidates(
    model: nn.Module,
    candidates: Rows,
    hessian: HessianArguments,
    batch_size: int,
    device: torch.device,
    capture: CaptureResult | None = None,
    show_progress: bool = False,
    desc: str = "unlearn: capture",
) -> tuple[CaptureResult, str]:
    """Logits (and features for the feature sampler) of the candidate pool, sorted by id.

    Args:
        model: the model at the weights the subset is drawn for (on ``device``).
        candidates: the retained rows the sampler may pick.
        hessian: the subset's settings (``sampler``, ``feature_module``).
        batch_size: rows per forward pass.
        device: where the forward pass runs.
        capture: a capture recorded at the current weights; used when it holds every
            candidate with the same labels (and features where needed).
        show_progress: show a progress bar.
        desc: the progress bar's title.

    Returns:
        The capture of the candidates and where it came from (``capture_callback``/``pass``).
    """
    if len(candidates) == 0:
        raise ValueError("No retained training sample is left to estimate the Hessian on.")
    check_finite_inputs(candidates.x, "training")
    need_features = hessian.sampler == "feature"
    if capture is not None and (capture.features is not None or not need_features):
        try:
            known = capture.subset(candidates.ids)
        except KeyError:
            known = None  # the capture does not cover the training pool
        if known is not None and torch.equal(known.labels, candidates.y.long()):
            return known, "capture_callback"
    shards = active_shards()  # under DDP each process captures its block of candidates
    mine = candidates
    if shards.split:
        mine = candidates.take(torch.arange(len(candidates))[shards.block(len(candidates))])
    batches = mine.batches(batch_size, device)
    with progress_bar(show_progress, len(batches), desc) as bar:
        pool = capture_pool(
            model,
            Counted(batches, bar, "candidate batches"),
            hessian.feature_module,
            device=device,
            store_features=need_features,
        )
    if shards.split:
        pool = _gathered(pool, shards, len(candidates))
    if not bool(torch.isfinite(pool.logits).all()):
        raise FloatingPointError(
            "The model produces NaN/inf logits on the training data: check the inputs and the "
            "weights first."
        )
    return pool, "pass"


def _gathered(part: CaptureResult, shards: Shards, n: int) -> CaptureResult:
    """Every process's block of the candidates' capture, on every process, sorted by id."""
    ids = shards.gather(part.ids, n)
    order = torch.argsort(ids.cpu())
    fields = (part.labels, part.logits, part.features)
    labels, logits, features = (
        None if t is None else shards.gather(t, n)[order.to(t.device)] for t in fields
    )
    assert labels is not None and logits is not None
    return CaptureResult(ids[order.to(ids.device)], labels, logits, features)


def draw_subset(pool: CaptureResult, hessian: HessianArguments, seed: int) -> SubsetSelection:
    """The weighted Hessian subset the sampler draws from the candidates' capture.

    Args:
        pool: the candidates' capture (retained samples only).
        hessian: the subset's settings (``sampler``, ``budget``).
        seed: the sampler's seed.
    """
    budget = min(hessian.budget, len(pool))
    return get_sampler(hessian.sampler).select(pool, budget, seed=seed)


def subset_rows(candidates: Rows, subset: SubsetSelection) -> Rows:
    """The subset's rows, in the subset's order (its ``weights`` align with them)."""
    return candidates.take(candidates.positions(subset.ids))


def hessian_subset(
    model: nn.Module,
    candidates: Rows,
    hessian: HessianArguments,
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
    capture: CaptureResult | None = None,
) -> list[Batch]:
    """The Hessian subset of ``candidates`` as weighted batches on ``device``.

    A pool no larger than the budget enters whole and unweighted (nothing to choose).

    Args:
        model: the model at the weights the subset is drawn for (on ``device``).
        candidates: the retained rows the sampler may pick (e.g. a bounded pool).
        hessian: the subset's settings.
        seed: the sampler's seed.
        batch_size: rows per batch (and per forward pass of the capture).
        device: where the batches (and the capture's pass) go.
        capture: a capture recorded at the current weights (see :func:`capture_candidates`).
    """
    if len(candidates) <= hessian.budget:
        return candidates.batches(batch_size, device)
    pool, _ = capture_candidates(model, candidates, hessian, batch_size, device, capture)
    subset = draw_subset(pool, hessian, seed)
    return subset_rows(candidates, subset).batches(batch_size, device, subset.weights)
