"""Small helpers on ``nn.Module`` shared by every stage (one copy each)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


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


def named_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer by name, non-persistent buffers included."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


@contextmanager
def compute_dtype(model: nn.Module) -> Iterator[torch.dtype]:
    """Run the block with every floating tensor of ``model`` in one dtype; yields that dtype.

    The dtype is float64 when any parameter is float64, else float32: a ``bf16-true`` or
    ``16-true`` model is solved in float32 and a model mixing float32 and float64 in float64.
    Each parameter and buffer gets its own dtype back after the block (rounded where the
    block changed it; the round trip of an unchanged tensor is exact, since widening is
    lossless).
    """
    tensors = {k: t for k, t in named_tensors(model).items() if t.is_floating_point()}
    dtypes = {k: t.dtype for k, t in tensors.items()}
    wide = any(t.dtype == torch.float64 for t in model.parameters())
    dtype = torch.float64 if wide else torch.float32
    if all(d == dtype for d in dtypes.values()):
        yield dtype
        return
    model.to(dtype)
    try:
        yield dtype
    finally:
        for k, t in named_tensors(model).items():
            if k in dtypes and t.dtype != dtypes[k]:
                t.data = t.data.to(dtypes[k])
