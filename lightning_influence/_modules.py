"""Small helpers on ``nn.Module`` shared by every stage (one copy each)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (else buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in ``eval()`` for the block; restore every submodule's own mode after.

    Restoring per submodule (not ``model.train(was_training)``) keeps a submodule that the
    user froze in eval mode inside a training model frozen.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextmanager
def only_trainable(model: nn.Module, names: Collection[str] | None) -> Iterator[nn.Module]:
    """Within the block only the named parameters require grad (None: leave all as they are).

    The others are held fixed, as if frozen; every ``requires_grad`` flag is restored after.
    """
    if names is None:
        yield model
        return
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unknown = sorted(set(names) - set(trainable))
    if unknown:
        raise ValueError(f"params names {unknown}, which are not trainable parameters.")
    frozen = [p for n, p in trainable.items() if n not in names]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in frozen:
            p.requires_grad_(True)
