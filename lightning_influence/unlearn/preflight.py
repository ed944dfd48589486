"""Checks at ``fit`` start, so that a mistake costs seconds, not a whole training run.

:func:`preflight` reads one training sample the way unlearning will (the loader's dataset
and collate function, the ``batch_parser``), runs the model on it and checks what unlearning
needs: a batch it can parse, logits it can find, labels inside the logits' width, the task's
classes and labels inside it too, and forget ids inside the dataset; one validation sample
is parsed and its label checked the same way. It reads a single sample
of a map-style dataset (``dataset[0]``, collated) and nothing else, so no loader is iterated,
no worker started and no one-shot iterator used up; iterable datasets and other loaders
are left to the run itself. It runs under ``fast_dev_run`` too, Lightning's smoke test.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from lightning_influence.data._modules import compute_dtype, eval_mode, model_device
from lightning_influence.data.batches import Batch, IndexedDataset
from lightning_influence.data.forward import inputs_float_as, inputs_to
from lightning_influence.data.model_task import ModelTask
from lightning_influence.data.pool import check_label_range, parse_checked
from lightning_influence.unlearn.forget import ForgetSpec

__all__ = ["preflight"]


def preflight(
    model: nn.Module,
    train_loader: Any,
    spec: ForgetSpec,
    model_task: ModelTask,
    val_loader: Any = None,
) -> None:
    """Raise, naming the fix, if unlearning ``model`` on these loaders cannot work.

    Args:
        model: the model to unlearn (its weights are not changed).
        train_loader: the training loader (only a map-style ``DataLoader`` is checked).
        spec: what to forget.
        model_task: how batches are read and where the logits are.
        val_loader: the validation loader (checked like the training loader, if given).
    """
    width = None
    for what, loader in (("training", train_loader), ("validation", val_loader)):
        sample = _first_batch(loader)
        if sample is None:
            continue
        batch = parse_checked(model_task.batch_parser, sample, what)
        if what == "training":
            _check_ids(spec, loader, batch)
        width = width or _logits_width(model, batch.x, model_task)
        check_label_range(batch.y, width, what)
    if width is not None:
        spec.check_labels(num_classes=width)


def _first_batch(loader: Any) -> Any:
    """One collated sample of a map-style DataLoader (None: not knowable without iterating)."""
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    try:
        if len(loader.dataset) == 0:  # type: ignore[arg-type]
            return None
    except TypeError:
        return None
    return loader.collate_fn([loader.dataset[0]])


def _check_ids(spec: ForgetSpec, loader: DataLoader, batch: Batch) -> None:
    """Forget ids outside the dataset, where ids are dataset indices (IndexedDataset, none)."""
    wanted = spec.forgotten_ids
    if not wanted or (batch.ids is not None and not isinstance(loader.dataset, IndexedDataset)):
        return  # the batches carry their own ids: their range is the data's to say
    n = len(loader.dataset)  # type: ignore[arg-type]
    outside = [i for i in wanted if not 0 <= i < n]
    if outside:
        raise ValueError(
            f"{len(outside)} forget/relabel ids are not training sample ids, e.g. {outside[:5]}: "
            f"the training dataset has {n} samples (ids 0..{n - 1} are dataset indices)."
        )


def _logits_width(model: nn.Module, x: Any, model_task: ModelTask) -> int:
    """The number of classes the model's logits hold, from one no-grad forward on ``x``."""
    with eval_mode(model), compute_dtype(model) as dtype, torch.no_grad():
        x = inputs_to(inputs_float_as(x, dtype), model_device(model))
        logits = model_task.logits(model, x)
    if logits.ndim != 2:  # a non-tensor raised already, naming logits_fn
        raise ValueError(
            f"the logits must be a [batch, classes] tensor, got {list(logits.shape)}: pass "
            "logits_fn=(model output -> logits)."
        )
    return int(logits.shape[1])
