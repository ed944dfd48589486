"""Curvature operators: the Hessian of a (weighted) mean loss as a linear operator.

:class:`HessianOperator` applies H by Hessian-vector products, forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad``) through ``functional_call``, so the model is never
flattened and its weights are never written. :class:`DenseHessianOperator` holds the explicit
float64 Hessian of a tiny model instead, the reference the HVP path is tested against. Both are
:class:`~lightning_influence.solve.operators.ParamOperator` s, so the estimators build their systems
from either with the same operator algebra.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, jacrev, jvp, vjp, vmap

from lightning_influence.data._modules import model_device
from lightning_influence.data.batches import Batch, as_batches
from lightning_influence.data.distributed import Shards, active_shards
from lightning_influence.data.forward import (
    LossFn,
    call_functional,
    inputs_float64,
    inputs_to,
    logits_of,
)
from lightning_influence.solve.operators import DenseMatrixOperator, ParamOperator
from lightning_influence.solve.vectors import ParamDict, flatten, unflatten

#: PyTorch's forward-mode AD levels are process-global, so two ``torch.func.jvp`` calls in two
#: threads break each other ("no level exists"); every forward-mode product takes this lock.
FORWARD_AD_LOCK = threading.Lock()


@functools.cache
def _load_jvp_decompositions() -> None:
    """Import torch's forward-mode decompositions once, without the FutureWarning torch
    raises about its own use of ``torch.jit.script`` there (a user cannot act on it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        try:
            import torch._decomp.decompositions_for_jvp  # noqa: F401
        except ImportError:  # another torch layout: the warning, if any, stays
            pass


def default_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy: the loss of the classifiers this package is about.

    Args:
        outputs: logits ``[B, C]``.
        targets: class labels ``[B]``.
    """
    return nn.functional.cross_entropy(outputs, targets)


def is_cross_entropy(loss_fn: LossFn) -> bool:
    """Whether ``loss_fn`` is plain mean cross-entropy on logits and class labels.

    True for :func:`default_loss`, ``torch.nn.functional.cross_entropy`` and an
    ``nn.CrossEntropyLoss()`` without class weights or label smoothing that reduces by the
    mean: the losses whose Fisher may draw labels from the softmax and whose per-sample
    values take the fast path. Any other callable counts as a custom loss.

    Args:
        loss_fn: a mean-reducing loss ``loss_fn(outputs, targets)``.
    """
    if loss_fn is default_loss or loss_fn is nn.functional.cross_entropy:
        return True
    return (
        type(loss_fn) is nn.CrossEntropyLoss
        and loss_fn.reduction == "mean"
        and loss_fn.weight is None
        and loss_fn.label_smoothing == 0.0
    )


def per_sample_loss(loss_fn: LossFn, outputs: Tensor, targets: Tensor) -> Tensor:
    """``loss_fn`` on each sample alone (``vmap`` over single-sample calls), shape ``[B]``.

    Any mean-reducing loss works unchanged; the default cross-entropy takes its fast path.

    Args:
        loss_fn: a mean-reducing loss ``loss_fn(outputs, targets)``.
        outputs: logits ``[B, ...]``.
        targets: targets ``[B, ...]``.
    """
    if is_cross_entropy(loss_fn):
        return nn.functional.cross_entropy(outputs, targets, reduction="none")
    return vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(outputs, targets)


def trainable_params(model: nn.Module) -> ParamDict:
    """Detached views of the parameters that require grad, keyed by name.

    Args:
        model: the model.
    """
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


class BatchLoss:
    """The loss of one batch as a pure function of the trainable parameters.

    ``weight_total`` normalises across batches: summing ``BatchLoss`` over all batches gives
    the (weighted) mean loss over every sample. Per-sample weights use ``vmap`` over
    single-sample calls of ``loss_fn``, so any mean-reducing loss works unchanged.

    Args:
        model: the model (only read: its parameters are replaced by the ``params`` argument).
        loss_fn: a mean-reducing loss ``loss_fn(outputs, targets)``.
        batch: the batch; ``batch.weights`` (if any) weight its samples.
        weight_total: the total weight (or sample count) over all batches.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch: Batch, weight_total: float):
        self.model, self.loss_fn = model, loss_fn
        device = model_device(model)
        self.x, self.y = inputs_to(batch.x, device), batch.y.to(device)
        self.w = None if batch.weights is None else batch.weights.to(device)
        self.n = len(batch)
        self.weight_total = weight_total
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if n not in trainable}
        self.frozen.update(dict(model.named_buffers()))

    def __call__(self, params: Mapping[str, Tensor]) -> Tensor:
        return self.loss_on(self.outputs(params))

    def outputs(self, params: Mapping[str, Tensor]) -> Tensor:
        """The batch's logits at ``params``."""
        return logits_of(call_functional(self.model, {**self.frozen, **params}, self.x))

    def loss_on(self, out: Tensor) -> Tensor:
        """The batch's share of the (weighted) mean loss, given its logits ``out``."""
        if self.w is None:
            return self.loss_fn(out, self.y) * (self.n / self.weight_total)
        per_sample = per_sample_loss(self.loss_fn, out, self.y)
        return (per_sample * self.w.to(per_sample.dtype)).sum() / self.weight_total


def total_weight(batches: list[Batch]) -> float:
    """The sum of the per-sample weights (a sample without weights counts 1).

    Args:
        batches: the batches.
    """
    return float(sum(len(b) if b.weights is None else b.weights.sum() for b in batches))


def batch_losses(
    model: nn.Module, loss_fn: LossFn, batches: list[Batch], shards: Shards | None = None
) -> list[BatchLoss]:
    """One :class:`BatchLoss` per batch, normalised to the (weighted) mean over all of them.

    Args:
        model: the model.
        loss_fn: a mean-reducing loss.
        batches: the batches.
        shards: keep only this process's block of every batch (normalised by the weight of
            all of them, so the sum over the processes is the whole mean loss).

    Raises:
        ValueError: when the weights sum to zero.
    """
    total = total_weight(batches)
    if total <= 0:
        raise ValueError(
            "The per-sample weights sum to zero: give at least one sample a positive weight."
        )
    local = batches if shards is None else shards.chunks(batches)
    return [BatchLoss(model, loss_fn, b, total) for b in local]


def check_finite_loss(losses: list[BatchLoss], params: ParamDict, name: str) -> None:
    """Fail early, naming the data, when the loss is NaN or infinite.

    Args:
        losses: the batch losses.
        params: the parameters to evaluate them at.
        name: what the data is called in the error message.
    """
    bad = None
    with torch.no_grad():
        for i, f in enumerate(losses):
            value = f(params)
            if not torch.isfinite(value):
                bad = f"batch {i} is {value.item()}"
                break
    device = next(iter(params.values())).device if params else "cpu"
    if active_shards().any(bad is not None, device):  # every process raises, none waits
        raise FloatingPointError(
            f"The loss on {name} {bad or 'of another process'}: check the inputs for NaN/inf, "
            "the labels' range and the model's weights before computing influence."
        )


def mean_gradient(model: nn.Module, loss_fn: LossFn, batches: Any, name: str = "data") -> ParamDict:
    """Gradient of the (weighted) mean loss over ``batches`` w.r.t. the trainable parameters.

    Args:
        model: the model (put it in ``eval()`` first if it has BatchNorm or dropout).
        loss_fn: a mean-reducing loss ``loss_fn(outputs, targets)``.
        batches: a batch or an iterable of batches, read by
            :func:`~lightning_influence.data.batches.as_batches`.
        name: what the data is called in error messages.

    Returns:
        The gradient keyed by parameter name.
    """
    params = trainable_params(model)
    shards = active_shards()
    losses = batch_losses(model, loss_fn, as_batches(batches, name), shards)
    check_finite_loss(losses, params, name)
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    for f in losses:  # chunks summed in float64: the same sum however many processes share it
        for k, gk in grad(f)(params).items():
            total[k] += gk
    total = shards.reduce_dict(total, dtype=next(iter(params.values())).dtype)
    if not all(torch.isfinite(t).all() for t in total.values()):
        raise FloatingPointError(
            f"The gradient on {name} has NaN/inf entries: check the model and inputs."
        )
    return total


class CurvatureOperator(ParamOperator):
    """A curvature matrix of the weighted mean loss over ``batches``, at the current weights.

    The one data loop of the curvature operators (as curvlinops' ``_matmat_batch``): a
    mat-vec sums :meth:`batch_product` over the batches in float64 (and over the processes
    under DDP); a subclass writes only the product on one batch. Mat-vecs take and return
    dicts keyed like ``trainable_params(model)`` and are counted in ``hvp_count``. Put the
    model in ``eval()`` first if it has BatchNorm or dropout (``li.influence`` does this
    for you).

    Args:
        model: the model; only its parameters with ``requires_grad`` are differentiated.
        loss_fn: a mean-reducing loss (``None``: :func:`default_loss`).
        batches: a batch or an iterable of batches, read by
            :func:`~lightning_influence.data.batches.as_batches` (``Batch.weights`` weight samples).
    """

    symmetric = True

    def __init__(self, model: nn.Module, loss_fn: LossFn | None, batches: Any):
        self.model = model
        self.loss_fn = loss_fn or default_loss
        self.params = trainable_params(model)
        if not self.params:
            raise ValueError("The model has no trainable parameters (requires_grad=True).")
        self.shards = active_shards()  # under DDP each process applies its block of rows
        batches = as_batches(batches, "hessian_data")
        self.losses = batch_losses(model, self.loss_fn, batches, self.shards)
        check_finite_loss(self.losses, self.params, "hessian_data")
        self.hvp_count = 0
        _load_jvp_decompositions()  # before the first forward-mode product

    @property
    def num_params(self) -> int:
        """The number of trainable parameters (the operator's dimension)."""
        return sum(p.numel() for p in self.params.values())

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        """One product with the curvature, summed over the batches.

        Args:
            v: a parameter dict keyed like :attr:`params`.
        """
        self.hvp_count += 1
        out: ParamDict | None = None
        with torch.enable_grad():  # callers may sit under no_grad (e.g. Lightning hooks)
            for f in self.losses:
                out = self._add(out, self.batch_product(f, dict(v)))
        return self._summed(out, v)

    def batch_product(self, f: BatchLoss, v: ParamDict) -> ParamDict:
        """One batch's part of the product (its loss ``f`` is a function of the parameters)."""
        raise NotImplementedError

    @staticmethod
    def _add(out: ParamDict | None, part: ParamDict) -> ParamDict:
        """Chunks are summed in float64, so the order of the sum (processes) hardly matters."""
        part = {k: t.to(torch.float64) for k, t in part.items()}
        return part if out is None else {k: out[k] + part[k] for k in out}

    def _summed(self, out: ParamDict | None, v: Mapping[str, Tensor]) -> ParamDict:
        """This process's part of ``H v`` summed over the processes (zeros if it has none)."""
        if out is None:
            out = {k: torch.zeros_like(t, dtype=torch.float64) for k, t in v.items()}
        return self.shards.reduce_dict(out, dtype=next(iter(v.values())).dtype)


class HessianOperator(CurvatureOperator):
    """H = ∇²(weighted mean loss over ``batches``): each mat-vec is one Hessian-vector
    product (forward-over-reverse) per batch. Arguments as :class:`CurvatureOperator`."""

    def batch_product(self, f: BatchLoss, v: ParamDict) -> ParamDict:
        with FORWARD_AD_LOCK:
            _, hv = jvp(grad(f), (self.params,), (v,))
        return hv


class GaussNewtonOperator(CurvatureOperator):
    """G = Σ Jᵀ (∇²_z ℓ) J: the generalised Gauss–Newton matrix of the same loss and data.

    J is the Jacobian of the logits z with respect to the parameters and ∇²_z ℓ the Hessian
    of the loss in the logits (for cross-entropy diag(p) − p pᵀ per sample). G drops the
    term of H that the network's curvature adds, so it is positive semi-definite even where
    a trained net's H is indefinite; for a model linear in its parameters G = H. One
    mat-vec costs about one HVP: a forward-mode ``jvp`` for J v, a Hessian-vector product
    in the (small) logit space, and a ``vjp`` for Jᵀ(·).

    Args:
        model: the model (put it in ``eval()`` first if it has BatchNorm or dropout).
        loss_fn: a mean-reducing loss of the logits (``None``: :func:`default_loss`).
        batches: a batch or an iterable of batches, as for :class:`HessianOperator`.
    """

    def batch_product(self, f: BatchLoss, v: ParamDict) -> ParamDict:
        with FORWARD_AD_LOCK:
            z, jv = jvp(f.outputs, (self.params,), (v,))
            _, hjv = jvp(grad(f.loss_on), (z,), (jv,))
        _, pullback = vjp(f.outputs, self.params)
        (gv,) = pullback(hjv)
        return gv


def dense_gauss_newton(
    model: nn.Module, loss_fn: LossFn | None, batches: list[Batch], params: ParamDict
) -> Tensor:
    """The explicit float64 Gauss–Newton matrix Σ Jᵀ (∇²_z ℓ) J (the reference of
    :class:`GaussNewtonOperator`), from ``jacrev`` and ``torch.func.hessian``.

    Args:
        model: the model.
        loss_fn: a mean-reducing loss (``None``: :func:`default_loss`).
        batches: the batches of the (weighted) mean loss.
        params: float64 trainable parameters, keyed like ``trainable_params(model)``.
    """
    total = None
    for f in batch_losses_float64(model, loss_fn or default_loss, batches):
        theta = flatten(params)
        jac = jacrev(lambda t, f=f: f.outputs(unflatten(t, params)).reshape(-1))(theta)
        z = f.outputs(params)
        h = torch.func.hessian(lambda zz, f=f, s=z.shape: f.loss_on(zz.reshape(s)))(z.reshape(-1))
        g = jac.T @ h @ jac
        total = g if total is None else total + g
    assert total is not None
    return total


class DenseHessianOperator(DenseMatrixOperator):
    """The explicit float64 Hessian of a tiny model, applied to parameter dicts.

    The reference the HVP path is tested against: built with ``torch.func.hessian`` on the
    flat parameters, in float64 (inputs, weights, frozen tensors and buffers cast). Results
    are float64 dicts keyed like :attr:`params`.

    Args:
        model: the model (put it in ``eval()`` first if it has BatchNorm or dropout).
        loss_fn: a mean-reducing loss (``None``: :func:`default_loss`).
        batches: a batch or an iterable of batches, as for :class:`HessianOperator`.
        max_params: refuse models with more trainable parameters than this.
        curvature: ``hessian`` or ``gauss_newton`` (:func:`dense_gauss_newton`).

    Raises:
        ValueError: when the model has more than ``max_params`` trainable parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn | None,
        batches: Any,
        max_params: int = 5000,
        curvature: str = "hessian",
    ):
        self.params = {k: v.to(torch.float64) for k, v in trainable_params(model).items()}
        if not self.params:
            raise ValueError("The model has no trainable parameters (requires_grad=True).")
        if self.num_params > max_params:
            raise ValueError(
                f"solver='dense' builds the explicit {self.num_params}x{self.num_params} Hessian, "
                f"above max_params={max_params}. Use solver='krylov' (or 'lissa'), restrict the "
                "parameters, or raise max_params."
            )
        build = dense_gauss_newton if curvature == "gauss_newton" else dense_hessian
        matrix = build(model, loss_fn, as_batches(batches, "hessian_data"), self.params)
        super().__init__(matrix, self.params, symmetric=True)
        self.hvp_count = 0  # an explicit matrix needs no Hessian-vector products

    @property
    def num_params(self) -> int:
        """The number of trainable parameters (the operator's dimension)."""
        return sum(p.numel() for p in self.params.values())


def dense_hessian(
    model: nn.Module, loss_fn: LossFn | None, batches: list[Batch], params: ParamDict
) -> Tensor:
    """The explicit float64 Hessian at ``params`` (flat, in the parameter order of ``params``).

    Args:
        model: the model.
        loss_fn: a mean-reducing loss (``None``: :func:`default_loss`).
        batches: the batches of the (weighted) mean loss.
        params: float64 trainable parameters, keyed like ``trainable_params(model)``.
    """
    losses = batch_losses_float64(model, loss_fn or default_loss, batches)

    def total(theta: Tensor) -> Tensor:
        p = unflatten(theta, params)
        return sum(f(p) for f in losses)

    return torch.func.hessian(total)(flatten(params))


def batch_losses_float64(
    model: nn.Module, loss_fn: LossFn, batches: list[Batch]
) -> list[BatchLoss]:
    """Batch losses evaluated in float64 (inputs, weights, frozen tensors and buffers cast).

    Args:
        model: the model.
        loss_fn: a mean-reducing loss.
        batches: the batches.
    """
    cast = [
        replace(
            b,
            x=inputs_float64(b.x),
            weights=None if b.weights is None else b.weights.double(),
        )
        for b in batches
    ]
    losses = batch_losses(model, loss_fn, cast)
    for f in losses:
        f.frozen = {k: t.double() if t.is_floating_point() else t for k, t in f.frozen.items()}
    return losses
