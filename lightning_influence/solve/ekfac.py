"""K-FAC and EK-FAC: a Kronecker-factored curvature of Linear and Conv layers, and its inverse.

For one layer with weight W ``[out, in]`` (a bias is an extra input column of ones; a
convolution's weight is flattened to ``[out, in·k…]`` and its input unfolded into patches),
the per-sample gradient is G = Σₜ gₜ aₜᵀ: a sum over positions t (one for a Linear on flat
inputs, every output position of a convolution) of the output gradient g times the input a. The
Fisher F = E[vec(G) vec(G)ᵀ] of the layer is approximated by

    F ≈ A ⊗ S,   A = E[(1/T) Σₜ aₜ aₜᵀ],   S = E[Σₜ gₜ gₜᵀ]   (K-FAC),

whose eigenbasis is Q_A ⊗ Q_S (eigenvectors of A and S). EK-FAC keeps that basis and
replaces the Kronecker eigenvalues s_i a_j by the true second moments in it,

    Λ_ij = E[(Q_Sᵀ G Q_A)_ij²],

the best diagonal fit of F in that basis (George et al., 2018). The inverse applies
(F + λI)⁻¹ v = Q_S [(Q_Sᵀ V Q_A) / (Λ + λ)] Q_Aᵀ, layer by layer (blocks are independent).

The expectations run over the weighted rows of the curvature data. Which labels the rows
carry decides which matrix F is (:func:`fisher_rows`): the *expected* Fisher (every class c
with weight p_c, for cross-entropy exactly the Gauss–Newton matrix), one *sampled* label per
row, or the *empirical* Fisher (the data's labels).

Layers that are not Linear/Conv1d/Conv2d/Conv3d (BatchNorm, LayerNorm, embeddings),
convolutions with groups, non-zero padding modes or asymmetric ``"same"`` padding, and layers whose weight is
frozen are **not covered**: the operators are zero on their parameters, so influence scores
computed with them leave those parameters out (the choice kronfluence makes too).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_influence.data._modules import model_device
from lightning_influence.data.batches import Batch
from lightning_influence.data.forward import call_model, inputs_take, inputs_to, logits_of
from lightning_influence.data.hooks import ForwardRecorder
from lightning_influence.solve.curvature import LossFn, default_loss, per_sample_loss
from lightning_influence.solve.operators import ParamOperator
from lightning_influence.solve.vectors import ParamDict
from lightning_influence.unlearn.selection import output_layer

__all__ = [
    "FISHERS",
    "EKFACOperator",
    "KroneckerLayer",
    "Projection",
    "fisher_rows",
    "fit_ekfac",
    "kronecker_layers",
    "projections",
    "select_layers",
    "covered_output_layer",
]

FISHERS = ("expected", "sampled", "empirical")


@dataclass
class KroneckerLayer:
    """A Linear or Conv1d/2d/3d layer whose curvature is Kronecker-factored.

    Args:
        module: the layer.
        weight: the name of its weight parameter.
        bias: the name of its bias parameter (``None``: no trainable bias).
    """

    module: nn.Module
    weight: str
    bias: str | None

    @property
    def params(self) -> list[str]:
        """The parameter names the layer's block covers."""
        return [self.weight] + ([self.bias] if self.bias else [])


def layer_dims(layer: KroneckerLayer) -> tuple[int, int]:
    """``(in, out)`` of the layer's factors: the width of its inputs ``a`` (a convolution's
    patch, in·k…; +1 with a bias) and of its output gradients ``g``."""
    w = layer.module.weight
    return w[0].numel() + (1 if layer.bias else 0), w.shape[0]


@dataclass
class Projection:
    """Fixed random maps of one layer's inputs ``a`` and output gradients ``g`` to fewer
    dimensions (LoGra-style: a per-sample gradient G = gᵀ a becomes P_S G P_Aᵀ without being
    formed). ``None`` keeps that side whole. Entries are N(0, 1/k), so squared norms and
    inner products of the projected gradients match the originals' in expectation.

    Args:
        p_a: ``[k_in, in]`` for the inputs, or ``None``.
        p_s: ``[k_out, out]`` for the output gradients, or ``None``.
    """

    p_a: Tensor | None
    p_s: Tensor | None

    def factors(self, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """``a [B, T, in]``, ``g [B, T, out]`` projected, in their own dtype: the widest
        tensors of the pass (a Conv2d's unfolded patches) are multiplied as they come, not
        copied to float64 first (a sketch loses nothing to float32 rounding)."""
        if self.p_a is not None:
            a = a @ self.p_a.T.to(a.dtype)
        if self.p_s is not None:
            g = g @ self.p_s.T.to(g.dtype)
        return a, g

    def matrix(self, m: Tensor) -> Tensor:
        """``[k, out, in]`` parameter matrices projected to ``[k, k_out, k_in]``."""
        if self.p_s is not None:
            m = self.p_s.to(m.dtype) @ m
        if self.p_a is not None:
            m = m @ self.p_a.T.to(m.dtype)
        return m

    def unmatrix(self, m: Tensor) -> Tensor:
        """The transpose of :meth:`matrix`: ``[k, k_out, k_in]`` back to ``[k, out, in]``."""
        if self.p_s is not None:
            m = self.p_s.T.to(m.dtype) @ m
        if self.p_a is not None:
            m = m @ self.p_a.to(m.dtype)
        return m


def check_projection(size: object) -> None:
    """Raise ``ValueError`` unless ``size`` is an integer >= 1 (a projection's width)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"projection must be an integer >= 1 or None, got {size!r}.")


def projections(
    layers: Mapping[str, KroneckerLayer], size: int, seed: int = 0
) -> dict[str, Projection]:
    """A :class:`Projection` per layer: each side wider than ``size`` is mapped to ``size``
    dimensions by a seeded Gaussian matrix (float64, on the layer's device); narrower sides
    are kept whole.

    Args:
        layers: the covered layers.
        size: the projected width (>= 1).
        seed: the seed of the matrices (layer i draws from seed + i).
    """
    check_projection(size)
    out = {}
    for i, (name, layer) in enumerate(layers.items()):
        gen = torch.Generator().manual_seed(seed + i)
        device = layer.module.weight.device
        n_in, n_out = layer_dims(layer)
        p_a, p_s = (_gaussian(size, dim, gen, device) for dim in (n_in, n_out))
        out[name] = Projection(p_a, p_s)
    return out


def _gaussian(size: int, dim: int, gen: torch.Generator, device: torch.device) -> Tensor | None:
    """A ``[size, dim]`` N(0, 1/size) matrix, or ``None`` where ``dim <= size``."""
    if dim <= size:
        return None
    return (torch.randn(size, dim, generator=gen, dtype=torch.float64) / size**0.5).to(device)


#: the convolutions EK-FAC covers, as the unit selection does (selection.SELECTABLE)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _conv_padding(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> tuple[int, ...] | None:
    """The conv's symmetric integer padding per spatial dimension, or None when the patches
    cannot express it (groups, a non-zero padding mode, asymmetric 'same')."""
    if conv.groups != 1 or conv.padding_mode != "zeros":
        return None
    if conv.padding == "valid":
        return (0,) * len(conv.kernel_size)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)
    return tuple(conv.padding)  # type: ignore[arg-type]


def kronecker_layers(model: nn.Module) -> dict[str, KroneckerLayer]:
    """The covered layers by module name: Linear and Conv1d/2d/3d with a trainable weight.

    Args:
        model: the model.
    """
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, *CONVS)) or not m.weight.requires_grad:
            continue
        if isinstance(m, CONVS) and _conv_padding(m) is None:
            continue
        prefix = f"{name}." if name else ""
        has_bias = m.bias is not None and m.bias.requires_grad
        out[name] = KroneckerLayer(m, prefix + "weight", prefix + "bias" if has_bias else None)
    return out


def _patches(conv: nn.Conv1d | nn.Conv3d, x: Tensor) -> Tensor:
    """A Conv1d's or Conv3d's input as patches ``[B, T, in·k…]`` (channel-major, as its weight
    is flattened): ``F.unfold`` is 2-d only, so the spatial dimensions are unfolded one by one
    (a window of the dilated kernel's extent, every ``dilation``-th entry kept)."""
    pad = _conv_padding(conv)
    assert pad is not None
    x = F.pad(x, [p for q in reversed(pad) for p in (q, q)])
    dims = len(conv.kernel_size)
    for i, (k, d, s) in enumerate(zip(conv.kernel_size, conv.dilation, conv.stride, strict=True)):
        x = x.unfold(2 + i, d * (k - 1) + 1, s)[..., ::d]
    # [B, C, *positions, *kernel] -> [B, positions, C·kernel]
    b, c = x.shape[:2]
    order = [0, *range(2, 2 + dims), 1, *range(2 + dims, 2 + 2 * dims)]
    return x.permute(order).reshape(b, -1, c * math.prod(conv.kernel_size))


def layer_inputs(layer: KroneckerLayer, x: Tensor) -> Tensor:
    """The layer's inputs a as ``[B, T, in(+1)]`` (a conv: its patches; +1: the bias)."""
    m = layer.module
    if isinstance(m, nn.Conv2d):
        a = F.unfold(x, m.kernel_size, m.dilation, _conv_padding(m), m.stride).transpose(1, 2)
    elif isinstance(m, CONVS):
        a = _patches(m, x)
    else:
        a = x.reshape(x.shape[0], -1, x.shape[-1])
    if layer.bias:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    return a


def layer_output_grads(layer: KroneckerLayer, g: Tensor) -> Tensor:
    """The gradients of the layer's outputs as ``[B, T, out]``."""
    if isinstance(layer.module, CONVS):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


def _recording(layers: Mapping[str, KroneckerLayer]) -> ForwardRecorder:
    """Within the block, every forward of a covered layer records (input, output)."""
    modules = {name: layer.module for name, layer in layers.items()}
    return ForwardRecorder(modules, keep=lambda inp, out: (inp[0].detach(), out))


def _weights(batch: Batch, dtype: torch.dtype, device: torch.device) -> Tensor:
    if batch.weights is None:
        return torch.ones(len(batch), dtype=dtype, device=device)
    return batch.weights.to(device=device, dtype=dtype)


def per_sample_factors(
    model: nn.Module, loss_fn: LossFn, batch: Batch, layers: Mapping[str, KroneckerLayer]
) -> dict[str, tuple[Tensor, Tensor]]:
    """Each row's layer inputs ``a`` ``[B, T, in(+1)]`` and the gradients of its own loss
    with respect to the layer's outputs ``g`` ``[B, T, out]``, per covered layer.

    A row's gradient of the layer's weight matrix (:func:`layer_matrix`) is ``gᵀ a`` (a sum
    over the T positions): the factors hold every per-sample gradient of the block, at the
    cost of one backward pass, and a rotation can use them without forming it.
    """
    device = model_device(model)
    with torch.enable_grad(), _recording(layers) as recorder:
        seen = recorder.records
        out = logits_of(call_model(model, inputs_to(batch.x, device)))
        loss = per_sample_loss(loss_fn, out, batch.y.to(device)).sum()
        calls = {}
        for name, records in seen.items():
            if len(records) != 1:
                raise ValueError(
                    f"Layer {name!r} ran {len(records)} times in one forward: K-FAC/EK-FAC "
                    "need each covered layer to run once (no weight sharing). Use "
                    "curvature='gauss_newton' for this model."
                )
            calls[name] = records[0]
        outputs = [calls[n][1] for n in layers]
        grads = torch.autograd.grad(loss, outputs, allow_unused=True)
    factors = {}
    for (name, layer), g in zip(layers.items(), grads, strict=True):
        x, y = calls[name]
        g = torch.zeros_like(y) if g is None else g
        factors[name] = (layer_inputs(layer, x), layer_output_grads(layer, g.detach()))
    return factors


def _covariance_pass(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch,
    layers: Mapping[str, KroneckerLayer],
    projected: Mapping[str, Projection],
) -> dict[str, tuple[Tensor, Tensor]]:
    """One batch's weighted sums Σ w (1/T) Σₜ a aᵀ and Σ w Σₜ g gᵀ per layer (float64; of
    the projected factors where ``projected`` names the layer)."""
    w = _weights(batch, torch.float64, model_device(model))
    sums = {}
    for name, (a, go) in per_sample_factors(model, loss_fn, batch, layers).items():
        if name in projected:
            a, go = projected[name].factors(a, go)
        a, go = a.double(), go.double()
        A = torch.einsum("n,nti,ntj->ij", w, a, a) / a.shape[1]
        S = torch.einsum("n,nti,ntj->ij", w, go, go)
        sums[name] = (A, S)
    return sums


def _chunks(batches: list[Batch], size: int) -> Iterator[Batch]:
    for b in batches:
        for i in range(0, len(b), size):
            part = slice(i, i + size)
            yield Batch(
                inputs_take(b.x, part),
                b.y[part],
                None if b.ids is None else b.ids[part],
                None if b.weights is None else b.weights[part],
            )


def _total_weight(batches: list[Batch]) -> float:
    return float(sum(len(b) if b.weights is None else b.weights.sum() for b in batches))


def kronecker_factors(
    model: nn.Module,
    loss_fn: LossFn,
    batches: list[Batch],
    layers: Mapping[str, KroneckerLayer],
    chunk: int = 256,
    projected: Mapping[str, Projection] | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """The weighted means A and S of every covered layer (float64).

    Args:
        model: the model, in ``eval()``.
        loss_fn: a mean-reducing loss.
        batches: the curvature rows (their weights enter).
        layers: the covered layers.
        chunk: rows per forward/backward pass.
        projected: the layers whose factors are projected first (:func:`projections`).
    """
    total: dict[str, tuple[Tensor, Tensor]] = {}
    for part in _chunks(batches, chunk):
        for name, (A, S) in _covariance_pass(model, loss_fn, part, layers, projected or {}).items():
            total[name] = (A, S) if name not in total else (total[name][0] + A, total[name][1] + S)
    n = _total_weight(batches)
    return {name: (A / n, S / n) for name, (A, S) in total.items()}


def layer_matrix(layer: KroneckerLayer, vs: Mapping[str, Tensor]) -> Tensor:
    """A batched parameter dict's block of this layer as ``[k, out, in(+1)]`` matrices."""
    w = vs[layer.weight]
    m = w.reshape(w.shape[0], w.shape[1], -1)
    if layer.bias:
        m = torch.cat([m, vs[layer.bias].reshape(w.shape[0], w.shape[1], 1)], dim=-1)
    return m


def _split(layer: KroneckerLayer, m: Tensor, like: Mapping[str, Tensor]) -> ParamDict:
    """The inverse of :func:`layer_matrix`, shaped and typed like ``like``."""
    k = m.shape[0]
    w = like[layer.weight]
    out = {layer.weight: m[..., : w[0].numel() // m.shape[1]].reshape(w.shape).to(w.dtype)}
    if layer.bias:
        b = like[layer.bias]
        out[layer.bias] = m[..., -1].reshape(k, *b.shape[1:]).to(b.dtype)
    return out


@dataclass
class EigenBlock:
    """One layer's eigenbases and (corrected) eigenvalues ``[out, in(+1)]`` (with a
    ``projection``: of the projected layer, ``[k_out, k_in]``; V enters as P_S V P_Aᵀ)."""

    layer: KroneckerLayer
    q_a: Tensor
    q_s: Tensor
    eigenvalues: Tensor
    projection: Projection | None = None

    def rotate(self, vs: Mapping[str, Tensor]) -> Tensor:
        """Q_Sᵀ V Q_A for every vector V of a batched parameter dict."""
        m = layer_matrix(self.layer, vs).to(self.q_a.dtype)
        if self.projection is not None:
            m = self.projection.matrix(m)
        return self.q_s.T @ m @ self.q_a

    def rotate_factors(self, a: Tensor, g: Tensor, factored: bool | None = None) -> Tensor:
        """Q_Sᵀ Gₙ Q_A for the per-sample gradients Gₙ = gₙᵀ aₙ of :func:`per_sample_factors`.

        ``(gₙ Q_S)ᵀ (aₙ Q_A)`` costs T (in² + out² + out·in) per row against
        out·in·(out + in) for rotating the formed Gₙ: far less where T is small against the
        layer's width (a Linear layer, T = 1; the last convolutions of a ResNet). ``None``
        picks the cheaper; True / False force one (both give the same numbers).
        """
        if self.projection is not None:
            a, g = self.projection.factors(a, g)
        a, g = a.to(self.q_a.dtype), g.to(self.q_s.dtype)
        t, n_in, n_out = a.shape[1], a.shape[2], g.shape[2]
        if factored is None:
            factored = t * (n_in**2 + n_out**2 + n_out * n_in) < n_out * n_in * (n_out + n_in + t)
        if factored:
            return torch.einsum("nto,nti->noi", g @ self.q_s, a @ self.q_a)
        return self.q_s.T @ torch.einsum("nto,nti->noi", g, a) @ self.q_a

    def unrotate(self, r: Tensor, like: Mapping[str, Tensor]) -> ParamDict:
        """Q_S R Qᵀ_A back as the layer's parameters (shaped like ``like``; with a projection
        P_Sᵀ Q_S R Qᵀ_A P_A, the transpose of :meth:`rotate`)."""
        m = self.q_s @ r @ self.q_a.T
        if self.projection is not None:
            m = self.projection.unmatrix(m)
        return _split(self.layer, m, like)


class EKFACOperator(ParamOperator):
    """The (E)K-FAC curvature as a symmetric parameter-dict operator (block-diagonal).

    ``F @ v`` applies Q (Λ ⊙ Qᵀ v) per covered layer and is zero on every other parameter.
    :meth:`inverse` gives the damped inverse (F + λI)⁻¹ on the covered layers.

    Args:
        blocks: the eigen-blocks by layer name.
    """

    symmetric = True

    def __init__(self, blocks: Mapping[str, EigenBlock]) -> None:
        self.blocks = dict(blocks)

    @property
    def params(self) -> list[str]:
        """The names of the covered parameters."""
        return [p for b in self.blocks.values() for p in b.layer.params]

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        return {k: t[0] for k, t in self.matmat({k: t.unsqueeze(0) for k, t in v.items()}).items()}

    def matmat(self, vs: Mapping[str, Tensor]) -> ParamDict:
        return self._apply(vs, lambda name, r: r * self.blocks[name].eigenvalues)

    def inverse(self, damping: float | None = None) -> EKFACInverse:
        """(F + λI)⁻¹ on the covered layers.

        Args:
            damping: λ ≥ 0 for every layer; ``None``: 0.1 × the mean eigenvalue of each
                layer (kronfluence's default heuristic).
        """
        return EKFACInverse(self, damping)

    def _apply(self, vs: Mapping[str, Tensor], scale) -> ParamDict:
        out = {k: torch.zeros_like(t) for k, t in vs.items()}
        for name, block in self.blocks.items():
            out.update(block.unrotate(scale(name, block.rotate(vs)), vs))
        return out


class EKFACInverse(ParamOperator):
    """(F + λ_l I)⁻¹ of an :class:`EKFACOperator`, layer l by layer; zero elsewhere.

    Args:
        base: the curvature.
        damping: λ for every layer, or ``None`` for 0.1 × each layer's mean eigenvalue.
    """

    symmetric = True

    def __init__(self, base: EKFACOperator, damping: float | None) -> None:
        if damping is not None and damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}.")
        self.base = base
        self.damping = {
            name: float(0.1 * b.eigenvalues.mean()) if damping is None else float(damping)
            for name, b in base.blocks.items()
        }
        for name, lam in self.damping.items():
            if lam <= 0 and bool((base.blocks[name].eigenvalues <= 0).any()):
                raise ValueError(
                    f"Layer {name!r} has a zero eigenvalue and damping 0: (F + λI) is singular. "
                    "Pass damping > 0."
                )

    def matvec(self, v: Mapping[str, Tensor]) -> ParamDict:
        return {k: t[0] for k, t in self.matmat({k: t.unsqueeze(0) for k, t in v.items()}).items()}

    def matmat(self, vs: Mapping[str, Tensor]) -> ParamDict:
        blocks = self.base.blocks
        return self.base._apply(
            vs, lambda name, r: r / (blocks[name].eigenvalues + self.damping[name])
        )

    def quadratic(self, vs: Mapping[str, Tensor]) -> Tensor:
        """vᵀ (F + λI)⁻¹ v for every vector of a batched dict, ``[k]`` float64 (one rotation)."""
        total = None
        for name, block in self.base.blocks.items():
            r = block.rotate(vs)
            part = (r**2 / (block.eigenvalues + self.damping[name])).sum(dim=(1, 2))
            total = part if total is None else total + part
        assert total is not None
        return total

    def quadratic_of_rows(self, model: nn.Module, loss_fn: LossFn, batch: Batch) -> Tensor:
        """gᵀ (F + λI)⁻¹ g for every row's loss gradient g, ``[B]`` float64: the same numbers
        as :meth:`quadratic` of the per-sample gradients, rotated from
        :func:`per_sample_factors` without forming them, layer by layer and a few rows at a
        time (:func:`rotated_parts`), so that memory stays bounded whatever the batch."""
        blocks = self.base.blocks
        factors = per_sample_factors(model, loss_fn, batch, {n: b.layer for n, b in blocks.items()})
        total = torch.zeros(len(batch), dtype=torch.float64, device=model_device(model))
        for name, block in blocks.items():
            scale = block.eigenvalues + self.damping[name]
            for rows, r in rotated_parts(block, *factors.pop(name)):  # r is ours: in place
                total[rows] += r.square_().div_(scale).sum(dim=(1, 2)).to(total)
        return total


def fisher_rows(
    model: nn.Module, batches: list[Batch], fisher: str, seed: int = 0, chunk: int = 256
) -> list[Batch]:
    """The curvature rows whose weighted second moment is the chosen Fisher (cross-entropy).

    Args:
        model: the classifier, in ``eval()``.
        batches: the curvature data (weights kept).
        fisher: ``expected``: each row repeated once per class c, weight w·p_c (the exact
            expectation over the model's predictions: the Gauss–Newton matrix of
            cross-entropy); ``sampled``: one label drawn from p per row; ``empirical``: the
            rows as given.
        seed: the seed of the ``sampled`` draw.
        chunk: rows per no-grad forward.
    """
    if fisher not in FISHERS:
        raise ValueError(f"Unknown fisher {fisher!r}: choose one of {FISHERS}.")
    if fisher == "empirical":
        return batches
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for b in _chunks(batches, chunk):
            logits = logits_of(call_model(model, inputs_to(b.x, model_device(model))))
            p = torch.softmax(logits.double(), dim=-1).cpu()
            w = _weights(b, torch.float64, torch.device("cpu"))
            if fisher == "sampled":
                out.append(replace(b, y=torch.multinomial(p, 1, generator=gen).reshape(-1)))
                continue
            n, c = p.shape
            rows = torch.arange(n).repeat_interleave(c)
            y = torch.arange(c).repeat(n)
            out.append(Batch(inputs_take(b.x, rows), y, None, (w[:, None] * p).reshape(-1)))
    return out


def covered_output_layer(
    model: nn.Module, layers: Mapping[str, KroneckerLayer], batches: Sequence[Batch]
) -> str:
    """The model's output layer (:func:`~lightning_influence.unlearn.selection.output_layer`: the
    last trainable Linear/Conv layer that runs in the forward pass on the first batch), which
    (E)K-FAC must cover.

    Raises:
        ValueError: when the output layer is not a covered layer (e.g. a grouped conv head).
    """
    name = output_layer(model, batches[:1])
    if name not in layers:
        raise ValueError(
            f"layers='last' is the output layer {name!r}, which (E)K-FAC does not cover "
            f"(Linear/Conv with a trainable weight: {list(layers)}): name covered layers in "
            "layers=[...] or use curvature='gauss_newton'."
        )
    return name


def select_layers(
    layers: Mapping[str, KroneckerLayer],
    which: str | Sequence[str] | None,
    output: str | None = None,
) -> dict[str, KroneckerLayer]:
    """The covered layers that ``which`` names, in model order.

    Args:
        layers: the covered layers (:func:`kronecker_layers`).
        which: ``None``: all of them; ``"last"``: the output layer, ``output`` (from
            :func:`covered_output_layer`); else module names, each of which must be covered.
        output: the output layer's name, needed for ``which="last"``.

    Raises:
        ValueError: for a name that is not a covered layer, or an empty selection.
    """
    if which is None:
        return dict(layers)
    if which == "last":
        if not layers:
            return {}
        if output is None:
            raise TypeError("select_layers(which='last') needs the output layer's name: output=")
        return {output: layers[output]}
    names = [which] if isinstance(which, str) else list(which)
    unknown = [n for n in names if n not in layers]
    if unknown or not names:
        raise ValueError(
            f"layers={which!r}: {unknown or 'nothing'} is not a covered layer; covered "
            f"(Linear/Conv with a trainable weight): {list(layers)}."
        )
    return {n: layer for n, layer in layers.items() if n in names}


def fit_ekfac(
    model: nn.Module,
    loss_fn: LossFn | None,
    batches: list[Batch],
    *,
    correct: bool = True,
    chunk: int = 256,
    layers: str | Sequence[str] | None = None,
    projection: int | None = None,
    seed: int = 0,
) -> EKFACOperator:
    """Fit K-FAC factors on ``batches`` and (``correct=True``) EK-FAC's eigenvalues.

    Args:
        model: the model, in ``eval()``.
        loss_fn: a mean-reducing loss (``None``: cross-entropy).
        batches: the curvature rows, weighted (e.g. from :func:`fisher_rows`).
        correct: refit the eigenvalues in the Kronecker eigenbasis (EK-FAC); ``False``:
            K-FAC's s_i a_j.
        chunk: rows per pass.
        layers: which covered layers enter (:func:`select_layers`): ``None`` all, ``"last"``
            the output layer (the last trainable Linear/Conv that runs on the first batch),
            or module names; the operator is zero on the others.
        projection: project every layer's inputs and output gradients wider than this to
            this many dimensions first (:func:`projections`; LoGra, Choe et al. 2024): the
            factors are at most ``projection`` wide, so the eigendecompositions and the
            per-sample rotations of wide layers cost a fraction, and the operator is the
            curvature of the projected gradients, mapped back (Pᵀ (F̃ + λI)⁻¹ P). ``None``:
            none.
        seed: the seed of the projections.

    Raises:
        ValueError: when the model has no covered layer.
    """
    loss_fn = loss_fn or default_loss
    covered = kronecker_layers(model)
    if not covered:
        raise ValueError(
            "EK-FAC covers nn.Linear and nn.Conv1d/2d/3d layers with trainable weights; the "
            "model has none. Use curvature='gauss_newton' (exact)."
        )
    output = covered_output_layer(model, covered, batches) if layers == "last" else None
    layers = select_layers(covered, layers, output)
    projected = {} if projection is None else projections(layers, projection, seed)
    blocks = {}
    factors = kronecker_factors(model, loss_fn, batches, layers, chunk, projected)
    for name, (A, S) in factors.items():
        a_vals, q_a = factor_eigh(A)
        s_vals, q_s = factor_eigh(S)
        kfac = torch.outer(s_vals.clamp_min(0), a_vals.clamp_min(0))
        blocks[name] = EigenBlock(layers[name], q_a, q_s, kfac, projected.get(name))
    if correct:
        _correct_eigenvalues(model, loss_fn, batches, blocks, chunk)
    return EKFACOperator(blocks)


#: diagonal jitter, relative to the factor's mean diagonal, tried in turn when even the
#: float64 decomposition fails to converge
EIGH_JITTER = (1e-10, 1e-8, 1e-6, 1e-4)


def factor_eigh(factor: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of a symmetric PSD Kronecker factor, in its dtype.

    The LAPACK driver can fail to converge on a large, ill-conditioned factor (torchvision's
    ResNet-18: the 4,608-wide input factors of its last convolutions). Then the factor is
    decomposed in float64 (if it was not), and if that fails too with a diagonal jitter of
    :data:`EIGH_JITTER` times its mean diagonal. A factor that converges the first time is
    decomposed exactly as before.
    """
    try:
        return torch.linalg.eigh(factor)
    except torch.linalg.LinAlgError:
        pass
    work = factor.double()
    work = (work + work.T) / 2
    scale = float(work.diagonal().abs().mean()) or 1.0
    eye = torch.eye(len(work), dtype=work.dtype, device=work.device)
    retries = EIGH_JITTER if factor.dtype == torch.float64 else (0.0, *EIGH_JITTER)
    for jitter in retries:
        try:
            vals, vecs = torch.linalg.eigh(work + jitter * scale * eye if jitter else work)
        except torch.linalg.LinAlgError:
            continue
        return vals.to(factor.dtype), vecs.to(factor.dtype)
    raise torch.linalg.LinAlgError(
        f"the {len(work)}x{len(work)} Kronecker factor could not be decomposed, even in float64 "
        f"with a jitter of {EIGH_JITTER[-1]:g} x its mean diagonal: it holds NaN or inf? Check "
        "the model's activations and loss on the curvature rows."
    )


#: the most entries of rotated per-sample gradients held at once (float64: 512 MiB; they
#: are squared and scaled in place, so no second copy is made)
ROTATED_ENTRIES = 2**26


def rotated_parts(
    block: EigenBlock, a: Tensor, g: Tensor, max_entries: int | None = None
) -> Iterator[tuple[slice, Tensor]]:
    """``(rows, Q_Sᵀ Gₙ Q_A for those rows)`` a few rows at a time: at most ``max_entries``
    rotated entries each (a ResNet-18 convolution of 512 x 4,608 holds 2.4 M per row, so 128
    rows at once took 2.4 GB a layer)."""
    per_row = block.q_s.shape[0] * block.q_a.shape[0]
    step = max(1, (max_entries or ROTATED_ENTRIES) // per_row)
    for start in range(0, a.shape[0], step):
        rows = slice(start, start + step)
        yield rows, block.rotate_factors(a[rows], g[rows])


def _correct_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    batches: list[Batch],
    blocks: dict[str, EigenBlock],
    chunk: int,
) -> None:
    """Λ = weighted mean of (Q_Sᵀ Gₙ Q_A)² over the rows' per-sample gradients, in place."""
    layers = {name: b.layer for name, b in blocks.items()}
    sums = {name: torch.zeros_like(b.eigenvalues) for name, b in blocks.items()}
    for part in _chunks(batches, chunk):
        factors = per_sample_factors(model, loss_fn, part, layers)
        w = _weights(part, torch.float64, sums[next(iter(sums))].device)
        for name, block in blocks.items():
            for rows, rotated in rotated_parts(block, *factors.pop(name)):  # in place: ours
                sums[name] += torch.einsum("n,nij->ij", w[rows], rotated.double().square_())
    total = _total_weight(batches)
    for name, block in blocks.items():
        block.eigenvalues = sums[name] / total
