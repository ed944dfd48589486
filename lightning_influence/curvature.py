"""Curvature operators: the Hessian of a (weighted) mean loss as a mat-vec over a parameter dict.

Style follows curvlinops: an operator implements ``matvec``; solvers only ever call it.
HVPs are forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``) through
``functional_call``, so the model is never flattened and its weights are never written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from lightning_influence.data import Batch, total_weight
from lightning_influence.vectors import ParamDict

LossFn = Callable[[Tensor, Tensor], Tensor]


def default_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy: the loss of the classifiers this package is about."""
    return nn.functional.cross_entropy(outputs, targets)


def trainable_params(model: nn.Module) -> ParamDict:
    """Detached views of the parameters that require grad, keyed by name."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


class BatchLoss:
    """The loss of one batch as a pure function of the trainable parameters.

    ``weight_total`` normalises across batches: summing ``BatchLoss`` over all batches gives
    the (weighted) mean loss over every sample. Per-sample weights use ``vmap`` over
    single-sample calls of ``loss_fn``, so any mean-reducing loss works unchanged.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch: Batch, weight_total: float):
        self.model, self.loss_fn = model, loss_fn
        device = next(iter(model.parameters())).device
        x, y, w = batch
        self.x, self.y = x.to(device), y.to(device)
        self.w = None if w is None else w.to(device)
        self.n = x.shape[0]
        self.weight_total = weight_total
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if n not in trainable}
        self.frozen.update(dict(model.named_buffers()))

    def __call__(self, params: Mapping[str, Tensor]) -> Tensor:
        out = functional_call(self.model, ({**self.frozen, **params},), (self.x,))
        if self.w is None:
            return self.loss_fn(out, self.y) * (self.n / self.weight_total)
        per_sample = vmap(lambda o, t: self.loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(out, self.y)
        return (per_sample * self.w.to(per_sample.dtype)).sum() / self.weight_total


def batch_losses(model: nn.Module, loss_fn: LossFn, batches: list[Batch]) -> list[BatchLoss]:
    total = total_weight(batches)
    if total <= 0:
        raise ValueError(
            "The per-sample weights sum to zero: give at least one sample a positive weight."
        )
    return [BatchLoss(model, loss_fn, b, total) for b in batches]


def check_finite_loss(losses: list[BatchLoss], params: ParamDict, name: str) -> None:
    """Fail early, naming the data, when the loss is NaN or infinite."""
    with torch.no_grad():
        for i, f in enumerate(losses):
            value = f(params)
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"The loss on {name} batch {i} is {value.item()}: check the inputs for NaN/inf, "
                    "the labels' range and the model's weights before computing influence."
                )


def mean_gradient(
    model: nn.Module, loss_fn: LossFn, batches: list[Batch], name: str = "data"
) -> ParamDict:
    """Gradient of the (weighted) mean loss over ``batches`` w.r.t. the trainable parameters."""
    params = trainable_params(model)
    losses = batch_losses(model, loss_fn, batches)
    check_finite_loss(losses, params, name)
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for f in losses:
        for k, gk in grad(f)(params).items():
            total[k] += gk
    if not all(torch.isfinite(t).all() for t in total.values()):
        raise FloatingPointError(
            f"The gradient on {name} has NaN/inf entries: check the model and inputs."
        )
    return total


class HessianOperator:
    """H = ∇²(weighted mean loss over ``batches``) at the model's current weights.

    ``matvec(v)`` takes and returns dicts keyed like ``trainable_params(model)``; each call
    is one HVP over all batches and is counted in ``hvp_count``. Put the model in
    ``eval()`` first if it has BatchNorm or dropout (``li.influence`` does this for you).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn | None, batches: list[Batch]):
        self.model = model
        self.loss_fn = loss_fn or default_loss
        self.params = trainable_params(model)
        if not self.params:
            raise ValueError("The model has no trainable parameters (requires_grad=True).")
        self.losses = batch_losses(model, self.loss_fn, batches)
        check_finite_loss(self.losses, self.params, "hessian_data")
        self.hvp_count = 0

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        self.hvp_count += 1
        out: ParamDict | None = None
        with torch.enable_grad():  # callers may sit under no_grad (e.g. Lightning hooks)
            for f in self.losses:
                _, hv = jvp(grad(f), (self.params,), (dict(v),))
                out = hv if out is None else {k: out[k] + hv[k] for k in out}
        assert out is not None
        return out

    __matmul__ = matvec


def dense_hessian(
    model: nn.Module, loss_fn: LossFn | None, batches: list[Batch], max_params: int
) -> Tensor:
    """The explicit float64 Hessian (flat, parameter order of ``trainable_params``).

    Only for tiny models: it is the reference the iterative solvers are tested against.
    """
    from lightning_influence.vectors import flatten, unflatten

    params = trainable_params(model)
    n = sum(p.numel() for p in params.values())
    if n > max_params:
        raise ValueError(
            f"solver='dense' builds the explicit {n}x{n} Hessian, above max_params={max_params}. "
            "Use solver='krylov' (or 'lissa'), restrict the parameters, or raise max_params."
        )
    losses = batch_losses_float64(model, loss_fn or default_loss, batches)
    flat = flatten(params).to(torch.float64)
    like = {k: v.to(torch.float64) for k, v in params.items()}

    def total(theta: Tensor) -> Tensor:
        p = unflatten(theta, like)
        return sum(f(p) for f in losses)

    return torch.func.hessian(total)(flat)


def batch_losses_float64(
    model: nn.Module, loss_fn: LossFn, batches: list[Batch]
) -> list[BatchLoss]:
    """Batch losses evaluated in float64 (inputs, weights, frozen tensors and buffers cast)."""
    cast = [
        (x.double() if x.is_floating_point() else x, y, None if w is None else w.double())
        for x, y, w in batches
    ]
    losses = batch_losses(model, loss_fn, cast)
    for f in losses:
        f.frozen = {k: t.double() if t.is_floating_point() else t for k, t in f.frozen.items()}
    return losses
