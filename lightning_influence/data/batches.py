"""Batch parsing and a dataset wrapper that gives every sample a stable id.

Influence and unlearning need to know *which* samples a batch holds (to exclude a forget set,
to match captured features to training samples, to drop the duplicates a distributed sampler
pads in). Batch positions are not stable across epochs, shuffles or ranks, so ids must come
from the data: wrap a dataset in :class:`IndexedDataset`, or return an index from your own
dataset, and :func:`parse_batch` will find it. :func:`as_batches` reads the data that
:func:`~lightning_influence.solve.influence` and :func:`~lightning_influence.select_parameters`
take with the same rules, plus per-sample weights from :attr:`Batch.weights`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_influence.data.forward import inputs_float_as, inputs_rows, is_inputs

__all__ = [
    "Batch",
    "BatchParser",
    "IndexedDataset",
    "ParsedBatch",
    "as_batches",
    "iter_batches",
    "parse_batch",
]

_X_KEYS = ("x", "input", "inputs", "image", "images")
_Y_KEYS = ("y", "target", "targets", "label", "labels")
_ID_KEYS = ("idx", "index", "indices", "id", "ids")
_WEIGHT_KEYS = ("weight", "weights", "sample_weight")


class IndexedDataset(Dataset):
    """Wrap a dataset of ``(x, y)`` pairs so that it returns ``(x, y, idx)``.

    ``idx`` is the position in the wrapped dataset (a plain ``int``), which the default
    collate function turns into a LongTensor per batch. It is a stable sample id: the same
    sample gets the same id in every epoch, under any shuffle and on every DDP rank.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        item = self.dataset[index]
        if isinstance(item, Mapping):
            x, y = _pick(item, _X_KEYS), _pick(item, _Y_KEYS)
            if x is _MISSING or y is _MISSING:
                raise ValueError(
                    f"IndexedDataset: item {index} is a dict with keys {sorted(item)}; expected "
                    f"an input key among {_X_KEYS} and a label key among {_Y_KEYS}."
                )
        elif isinstance(item, Sequence) and len(item) >= 2:
            x, y = item[0], item[1]
        else:
            raise ValueError(
                f"IndexedDataset: item {index} is a {type(item).__name__}; expected an (x, y) "
                "tuple or a dict with input and label keys."
            )
        return x, y, int(index)


@dataclass
class Batch:
    """The one batch type: inputs, class labels, optional sample ids and per-sample weights.

    Args:
        x: the model's inputs (a tensor, or whatever the model's forward takes).
        y: class labels, a LongTensor ``[B]``.
        ids: stable sample ids ``[B]`` (LongTensor) or ``None`` when the batch carries none.
        weights: non-negative per-sample weights ``[B]`` or ``None`` (every sample weighs 1).
            Only the Hessian subset is weighted (a sampler's cluster sizes).
    """

    x: Any
    y: torch.Tensor
    ids: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


#: Former name of :class:`Batch`, kept so that custom ``batch_parser`` callables keep working.
ParsedBatch = Batch

#: A callable that turns whatever a dataloader yields into a :class:`ParsedBatch`.
BatchParser = Callable[[Any], ParsedBatch]


class _Missing:
    pass


_MISSING = _Missing()


def _pick(mapping: Mapping, keys: Sequence[str]) -> Any:
    for key in keys:
        if key in mapping:
            return mapping[key]
    return _MISSING


def _as_ids(ids: Any) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"sample ids must be integers, got dtype {ids.dtype}")
    return ids.reshape(-1).long()


def parse_batch(batch: Any) -> ParsedBatch:
    """Split a batch into inputs, labels and (optional) sample ids.

    Understands ``(x, y)``, ``(x, y, idx)`` tuples/lists and dicts whose keys are among
    ``x/input/inputs/image/images``, ``y/target/targets/label/labels`` and
    ``idx/index/indices/id/ids``. A dict with a label key but no input key is a Hugging
    Face-style batch (``{"pixel_values": ..., "labels": ...}``, ``{"input_ids": ...,
    "attention_mask": ..., "labels": ...}``): its other tensors are the inputs, passed as
    ``model(**x)``. Anything else raises ``ValueError``: pass your own ``batch_parser``
    callable returning a :class:`ParsedBatch` instead.
    """
    hint = (
        "Pass a custom `batch_parser` callable that returns "
        "lightning_influence.data.batches.ParsedBatch(x=..., y=..., ids=...)."
    )
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, Mapping):
        x, y, ids = _pick(batch, _X_KEYS), _pick(batch, _Y_KEYS), _pick(batch, _ID_KEYS)
        if x is _MISSING and y is not _MISSING:  # Hugging Face style: the rest is model(**x)
            x = _model_kwargs(batch) or _MISSING
        if x is _MISSING or y is _MISSING:
            raise ValueError(
                f"Cannot parse a dict batch with keys {sorted(map(str, batch))}: expected an "
                f"input key among {_X_KEYS}, a label key among {_Y_KEYS} and optionally an id "
                f"key among {_ID_KEYS}. {hint}"
            )
        return ParsedBatch(x, torch.as_tensor(y), None if ids is _MISSING else _as_ids(ids))
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        x, y = batch[0], torch.as_tensor(batch[1])
        ids = _as_ids(batch[2]) if len(batch) == 3 else None
        if ids is not None and ids.numel() != y.shape[0]:
            raise ValueError(
                f"Batch ids have {ids.numel()} entries but the labels have {y.shape[0]}. {hint}"
            )
        return ParsedBatch(x, y, ids)
    what = f"a {type(batch).__name__}"
    if isinstance(batch, (tuple, list)):
        what += f" of length {len(batch)}"
    raise ValueError(
        f"Cannot parse {what} as a batch: expected (x, y), (x, y, idx) or a dict with input, "
        f"label and optional id keys. {hint}"
    )


def _model_kwargs(batch: Mapping) -> dict[str, Tensor]:
    """The tensors of a dict batch that are not labels, ids or weights (``model(**x)``)."""
    skip = {*_Y_KEYS, *_ID_KEYS, *_WEIGHT_KEYS}
    return {k: v for k, v in batch.items() if k not in skip and isinstance(v, Tensor)}


def as_batches(data: Any, name: str = "data") -> list[Batch]:
    """Return ``data`` as a list of validated :class:`Batch` es (the one batch rule).

    ``data`` is one batch or an iterable of batches (e.g. a DataLoader). Each batch is read
    as :func:`parse_batch` reads it: ``(x, y)`` and ``(x, y, ids)`` tuples, dicts with
    input/label/id keys, :class:`Batch` objects as they are. Per-sample weights come only
    from ``Batch.weights`` or a dict key among ``weight``, ``weights``, ``sample_weight``:
    a tuple's third element is always sample ids, so a float one raises. Batches without
    samples are dropped.

    Args:
        data: a batch or an iterable of batches; inputs ``x`` must be tensors.
        name: what the data is called in error messages (e.g. ``"hessian_data"``).

    Returns:
        The non-empty batches, each with ``x``, ``y`` and optional ``ids`` and ``weights``.

    Raises:
        ValueError: naming ``name`` and the fix, for ``None``, unparsable or empty data,
            mismatched sample counts, a float third tuple element, or weights that are
            negative or not finite.
    """
    if data is None:
        raise ValueError(f"{name} is None: pass a batch (x, y) or an iterable of batches.")
    items = _batch_items(data, name)
    batches = [_checked_batch(item, f"{name}[{i}]") for i, item in enumerate(items)]
    batches = [b for b in batches if len(b) > 0]
    if not batches:
        raise ValueError(f"{name} is empty: it must hold at least one sample.")
    return batches


def iter_batches(data: Any, name: str = "data") -> Iterator[Batch]:
    """:func:`as_batches` one batch at a time: the same rules, without holding them all.

    A DataLoader over a large dataset is read lazily, so the inputs of only one batch are held
    at a time (the influence scores stream the training data this way).

    Args:
        data: a batch or an iterable of batches.
        name: what the data is called in error messages.

    Raises:
        ValueError: as :func:`as_batches`; "empty" only once the iterable is used up.
    """
    if data is None:
        raise ValueError(f"{name} is None: pass a batch (x, y) or an iterable of batches.")
    items = [data] if _is_single_batch(data) else data
    try:
        iterator = iter(items)
    except TypeError as err:
        raise ValueError(
            f"{name} must be a batch (x, y), (x, y, ids), a dict or a Batch, or an iterable of "
            f"them; got {type(data).__name__}."
        ) from err
    found = False
    for i, item in enumerate(iterator):
        batch = _checked_batch(item, f"{name}[{i}]")
        if len(batch) > 0:
            found = True
            yield batch
    if not found:
        raise ValueError(f"{name} is empty: it must hold at least one sample.")


def _is_single_batch(data: Any) -> bool:
    if isinstance(data, (Batch, Mapping)):
        return True
    return (
        isinstance(data, (tuple, list))
        and len(data) in (2, 3)
        and isinstance(data[0], Tensor)
        and isinstance(data[1], Tensor)
    )


def _batch_items(data: Any, name: str) -> list[Any]:
    if _is_single_batch(data):
        return [data]
    try:
        return list(data)
    except TypeError as err:
        raise ValueError(
            f"{name} must be a batch (x, y), (x, y, ids), a dict or a Batch, or an iterable of "
            f"them; got {type(data).__name__}."
        ) from err


def _parse_with_weights(item: Any, where: str) -> Batch:
    if isinstance(item, (tuple, list)) and len(item) == 3 and _is_float_tensor(item[2]):
        raise ValueError(
            f"{where}: the third element of a batch tuple is read as sample ids, but it is a "
            "float tensor. Pass per-sample weights as lightning_influence.Batch(x, y, "
            "weights=w) (or a dict with a 'weights' key)."
        )
    try:
        batch = parse_batch(item)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    if isinstance(item, Mapping):
        weights = _pick(item, _WEIGHT_KEYS)
        if weights is not _MISSING:
            batch = replace(batch, weights=weights)
    return batch


def _checked_batch(item: Any, where: str) -> Batch:
    batch = _parse_with_weights(item, where)
    if not is_inputs(batch.x):
        raise ValueError(
            f"{where}: the inputs x must be a tensor (or a tuple/dict of tensors for several "
            f"inputs), got {type(batch.x).__name__}."
        )
    y = torch.as_tensor(batch.y)
    n = inputs_rows(batch.x)
    if y.dim() == 0 or y.shape[0] != n:
        raise ValueError(f"{where}: x and y must have the same number of samples.")
    if batch.ids is not None and torch.as_tensor(batch.ids).numel() != n:
        raise ValueError(f"{where}: the sample ids must have one entry per sample.")
    weights = None if batch.weights is None else _checked_weights(batch.weights, n, where)
    return replace(batch, y=y, weights=weights)


def _checked_weights(weights: Any, n: int, where: str) -> Tensor:
    w = torch.as_tensor(weights)
    if not w.dtype.is_floating_point:
        w = w.to(torch.get_default_dtype())
    w = w.reshape(-1)
    if w.numel() != n:
        raise ValueError(f"{where}: the weights have {w.numel()} entries for {n} samples.")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{where}: weights must be finite and non-negative.")
    return w


def _is_float_tensor(value: Any) -> bool:
    return isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex())


def inputs_as(parser: BatchParser, dtype: torch.dtype) -> BatchParser:
    """``parser`` whose batches have their floating-point inputs cast to ``dtype``.

    Integer inputs (token ids) and the labels are kept as they are.
    """

    def parse(raw: Any) -> Batch:
        b = parser(raw)
        if not is_inputs(b.x):
            return b  # the pipeline names the problem
        return replace(b, x=inputs_float_as(b.x, dtype))

    return parse
