"""Parameter selection (method.md §5): which whole output neurons/channels may move.

Per Linear/Conv layer, a fraction ``ratio`` of the output units (weights plus bias) is
chosen, ranked on the forget data by |mean output| or |mean ∂loss/∂output|. Normalisation
layers are never selected (they still enter H). The result is a dict of boolean masks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_influence.curvature import LossFn, default_loss
from lightning_influence.data import as_batches

SELECTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
METHODS = ("highest_outputs", "highest_gradients", "lowest_outputs", "lowest_gradients", "random")


def selectable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear/Conv layers whose weight is trainable, keyed by module name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, SELECTABLE) and m.weight is not None and m.weight.requires_grad
    }


def units_per_layer(n_out: int, ratio: float) -> int:
    """How many output units a layer with ``n_out`` of them contributes: round(ratio·n), ≥ 1."""
    return min(n_out, max(1, round(ratio * n_out)))


def _unit_scores(
    model: nn.Module, layers: dict[str, nn.Module], data: Any, loss_fn: LossFn, use_grad: bool
) -> dict[str, Tensor]:
    """Σ over the forget data of each output unit's activation (or loss-gradient)."""
    sums: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}
    hooks = []

    def hook(name: str):
        def fn(_m: nn.Module, _inp: Any, out: Tensor) -> None:
            if use_grad:
                out.retain_grad()
                outputs[name] = out
            else:
                _accumulate(sums, name, out.detach())

        return fn

    for name, layer in layers.items():
        hooks.append(layer.register_forward_hook(hook(name)))
    try:
        for x, y, _ in as_batches(data, "forget_data"):
            device = next(iter(model.parameters())).device
            x, y = x.to(device), y.to(device)
            if use_grad:
                with torch.enable_grad():
                    model.zero_grad(set_to_none=True)
                    loss = loss_fn(model(x), y)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            "The loss on forget_data is NaN/inf: check the inputs and the model."
                        )
                    loss.backward()
                for name, out in outputs.items():
                    _accumulate(sums, name, out.grad)
                outputs.clear()
            else:
                with torch.no_grad():
                    model(x)
    finally:
        for h in hooks:
            h.remove()
        if use_grad:
            model.zero_grad(set_to_none=True)
    return {k: v.abs() for k, v in sums.items()}


def _accumulate(sums: dict[str, Tensor], name: str, t: Tensor) -> None:
    """Sum over every dim but the channel dim (1): batch and spatial positions."""
    per_unit = t.transpose(0, 1).reshape(t.shape[1], -1).sum(dim=1) if t.dim() > 2 else t.sum(dim=0)
    sums[name] = sums.get(name, 0) + per_unit.double()


def select_parameters(
    model: nn.Module,
    forget_data: Any = None,
    method: str = "highest_outputs",
    ratio: float = 0.05,
    loss_fn: LossFn | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Boolean masks {parameter name: mask} selecting whole output units of each layer.

    ``forget_data`` is a batch ``(x, y)`` or an iterable of batches (not needed for
    ``random``). ``ratio`` in (0, 1]: the share of each layer's output units. Ties and the
    ``random`` method are resolved with ``seed``. The model is run in ``eval()`` mode.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown selection method {method!r}: choose one of {METHODS}.")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}.")
    layers = selectable_layers(model)
    if not layers:
        raise ValueError(
            "The model has no selectable layer (trainable nn.Linear or nn.Conv1d/2d/3d): "
            "parameter selection needs at least one; use selection=None to move every parameter."
        )
    gen = torch.Generator().manual_seed(seed)
    if method == "random":
        scores = {
            name: torch.rand(layer.weight.shape[0], generator=gen, dtype=torch.float64)
            for name, layer in layers.items()
        }
    else:
        if forget_data is None:
            raise ValueError(f"method={method!r} ranks units on the forget data: pass forget_data.")
        was_training = model.training
        model.eval()
        try:
            scores = _unit_scores(
                model, layers, forget_data, loss_fn or default_loss, "gradients" in method
            )
        finally:
            model.train(was_training)
    masks: dict[str, Tensor] = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for name, layer in layers.items():
        s = scores[name]
        k = units_per_layer(s.numel(), ratio)
        tie_break = (
            torch.rand(s.numel(), generator=gen, dtype=torch.float64)
            * 1e-12
            * (s.abs().max() + 1e-300)
        )
        order = torch.argsort(s + tie_break, descending=not method.startswith("lowest"))
        units = torch.zeros(s.numel(), dtype=torch.bool)
        units[order[:k]] = True
        for p in (layer.weight, layer.bias):
            if p is None or not p.requires_grad:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            masks[names[id(p)]] = units.view(shape).expand_as(p).clone().to(p.device)
    return masks
