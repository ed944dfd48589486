"""Per-sample gradients with ``torch.func``: ``vmap`` of ``grad`` over single-sample calls.

The model is called through ``functional_call`` on one sample at a time (its inputs given a
batch dimension of one), so any mean-reducing loss gives that sample's own loss, and
``vmap`` batches the calls. The weights are never written. Put the model in ``eval()`` first
(BatchNorm must use its running statistics, so that samples do not interact).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor, nn
from torch.func import grad, vmap
from torch.utils._pytree import tree_map

from lightning_influence.data._modules import model_device
from lightning_influence.data.batches import Batch
from lightning_influence.data.forward import call_functional, inputs_to, logits_of
from lightning_influence.solve import vectors as V
from lightning_influence.solve.curvature import LossFn, trainable_params
from lightning_influence.solve.vectors import ParamDict

__all__ = ["flat_rows", "per_sample_gradients"]


def per_sample_gradients(
    model: nn.Module, loss_fn: LossFn, batch: Batch, names: Collection[str] | None = None
) -> ParamDict:
    """∇θ ℓ(zᵢ) of every sample of ``batch``: a batched parameter dict ``[B, *shape]``.

    Args:
        model: the model, in ``eval()``.
        loss_fn: a mean-reducing loss ``loss_fn(outputs, targets)``.
        batch: the samples (their weights are ignored).
        names: the trainable parameters to differentiate (``None``: all of them, in the
            model's order); the others are held fixed.

    Raises:
        FloatingPointError: when a gradient is NaN or infinite.
    """
    trainable = trainable_params(model)
    keep = list(trainable) if names is None else [n for n in trainable if n in set(names)]
    params = {n: trainable[n] for n in keep}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    fixed.update(dict(model.named_buffers()))
    device = model_device(model)
    x, y = inputs_to(batch.x, device), batch.y.to(device)

    def sample_loss(p: ParamDict, xi: Tensor, yi: Tensor) -> Tensor:
        xi = tree_map(lambda t: t.unsqueeze(0), xi)
        out = logits_of(call_functional(model, {**fixed, **p}, xi))
        return loss_fn(out, yi.unsqueeze(0))

    with torch.enable_grad():  # Lightning's hooks may run under no_grad
        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
    if not V.is_finite(grads):
        raise FloatingPointError(
            "A per-sample gradient has NaN/inf entries: check the inputs, labels and weights."
        )
    return grads


def flat_rows(grads: ParamDict, names: Collection[str] | None = None) -> Tensor:
    """A batched parameter dict as a ``[B, P]`` matrix (the keys of ``names``, in that order).

    Args:
        grads: a batched parameter dict.
        names: the keys to keep (``None``: all).
    """
    kept = grads if names is None else {k: grads[k] for k in names}
    return V.flatten(kept, leading=1)
