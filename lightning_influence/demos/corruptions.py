"""Corrupted training data for the forget tasks, and the measures of their repair (used by the
tests and benchmarks).

Plain functions on :class:`~torch.utils.data.TensorDataset` s of ``(x, y)`` (e.g. from
:func:`lightning_influence.demos.datasets.digits_splits`); sample ids are positions in the
training dataset, as :class:`lightning_influence.IndexedDataset` gives them.

- :func:`corner_trigger`: a trigger function stamping a square patch into a corner;
- :func:`poison`: store a share of the non-target samples triggered and labelled as the target;
- :func:`flip_labels`: move a share of one class's labels to another class;
- :func:`without_classes` / :func:`without_ids`: the corrected data for retrained references;
- :func:`accuracy`, :func:`class_accuracies`, :func:`attack_success_rate`: test-set measures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

__all__ = [
    "accuracy",
    "attack_success_rate",
    "class_accuracies",
    "corner_trigger",
    "flip_labels",
    "flip_uniform",
    "poison",
    "predictions",
    "random_ids",
    "without_classes",
    "without_ids",
]

Trigger = Callable[[Tensor], Tensor]


def corner_trigger(size: int = 4, value: float = 1.0, corner: str = "bottom_right") -> Trigger:
    """A trigger ``fn(x)`` setting a ``size`` x ``size`` patch of ``x`` (``[..., H, W]``) to
    ``value`` in ``corner`` (``top_left``, ``top_right``, ``bottom_left``, ``bottom_right``).

    Returns a new tensor of the same shape; the input is not changed.
    """
    if corner not in ("top_left", "top_right", "bottom_left", "bottom_right"):
        raise ValueError(f"unknown corner {corner!r}")
    rows = slice(0, size) if corner.startswith("top") else slice(-size, None)
    cols = slice(0, size) if corner.endswith("left") else slice(-size, None)

    def trigger(x: Tensor) -> Tensor:
        out = x.clone()
        out[..., rows, cols] = value
        return out

    return trigger


def random_ids(n: int, k: int, seed: int = 0, pool: Tensor | None = None) -> list[int]:
    """``k`` distinct ids drawn at random (seeded) from ``pool`` (default ``0..n-1``), sorted."""
    candidates = torch.arange(n) if pool is None else pool.reshape(-1)
    if k > len(candidates):
        raise ValueError(f"cannot draw {k} ids from {len(candidates)} candidates")
    perm = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    return sorted(int(i) for i in candidates[perm[:k]])


def poison(
    dataset: TensorDataset,
    trigger: Trigger,
    target: int,
    fraction: float = 0.05,
    seed: int = 0,
) -> tuple[TensorDataset, list[int], dict[int, int]]:
    """Backdoor ``fraction`` of ``dataset`` (rounded, drawn among non-target samples).

    The poisoned samples are stored as the attack leaves them: triggered input, label
    ``target``. Returns ``(poisoned dataset, poisoned ids, {id: true label})``.
    """
    x, y = dataset.tensors[0], dataset.tensors[1]
    k = round(fraction * len(y))
    ids = random_ids(len(y), k, seed, pool=torch.nonzero(y != target).reshape(-1))
    idx = torch.tensor(ids, dtype=torch.long)
    true_labels = {i: int(y[i]) for i in ids}
    x, y = x.clone(), y.clone()
    x[idx] = trigger(x[idx])
    y[idx] = target
    return TensorDataset(x, y), ids, true_labels


def flip_labels(
    dataset: TensorDataset, source: int, dest: int, fraction: float = 0.5, seed: int = 0
) -> tuple[TensorDataset, dict[int, int]]:
    """Relabel ``fraction`` of class ``source`` (rounded, seeded) as ``dest``.

    Returns ``(noisy dataset, {flipped id: true label})``: the dict is the ``relabel``
    argument that repairs the damage.
    """
    y = dataset.tensors[1]
    members = torch.nonzero(y == source).reshape(-1)
    ids = random_ids(len(y), round(fraction * len(members)), seed, pool=members)
    noisy = y.clone()
    noisy[torch.tensor(ids, dtype=torch.long)] = dest
    return TensorDataset(dataset.tensors[0], noisy), {i: source for i in ids}


def flip_uniform(
    labels: Tensor, share: float, seed: int = 0, classes: int = 10
) -> tuple[Tensor, Tensor]:
    """Label noise: ``share`` of the labels (rounded, seeded) moved to another class, uniformly.

    Returns ``(noisy labels, flipped positions)``.
    """
    g = torch.Generator().manual_seed(seed)
    k = round(share * len(labels))
    flipped = torch.randperm(len(labels), generator=g)[:k]
    noisy = labels.clone()
    noisy[flipped] = (labels[flipped] + torch.randint(1, classes, (k,), generator=g)) % classes
    return noisy, flipped


def without_classes(dataset: TensorDataset, classes: Sequence[int]) -> TensorDataset:
    """``dataset`` without the samples whose label is in ``classes``."""
    x, y = dataset.tensors[0], dataset.tensors[1]
    keep = ~torch.isin(y, torch.tensor(list(classes), dtype=y.dtype))
    return TensorDataset(x[keep], y[keep])


def without_ids(dataset: TensorDataset, ids: Sequence[int]) -> TensorDataset:
    """``dataset`` without the samples at positions ``ids``."""
    x, y = dataset.tensors[0], dataset.tensors[1]
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[torch.tensor(list(ids), dtype=torch.long)] = False
    return TensorDataset(x[keep], y[keep])


@torch.no_grad()
def predictions(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Argmax predictions of ``model`` in eval mode (its train/eval flag is restored)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [model(x[i : i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)]
        )
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    """Share of ``dataset`` classified correctly."""
    x, y = dataset.tensors[0], dataset.tensors[1]
    return float((predictions(model, x) == y).float().mean())


def class_accuracies(model: nn.Module, dataset: TensorDataset, num_classes: int = 10) -> Tensor:
    """Accuracy per class ``[num_classes]`` (``nan`` for a class absent from ``dataset``)."""
    x, y = dataset.tensors[0], dataset.tensors[1]
    correct = (predictions(model, x) == y).double()
    counts = torch.bincount(y, minlength=num_classes).double()
    hits = torch.bincount(y, weights=correct, minlength=num_classes)
    return torch.where(counts > 0, hits / counts.clamp_min(1), torch.nan)


def attack_success_rate(
    model: nn.Module, dataset: TensorDataset, trigger: Trigger, target: int
) -> float:
    """Share of the triggered samples of ``dataset`` whose true label is not ``target`` that
    ``model`` classifies as ``target``."""
    x, y = dataset.tensors[0], dataset.tensors[1]
    victims = x[y != target]
    return float((predictions(model, trigger(victims)) == target).float().mean())
