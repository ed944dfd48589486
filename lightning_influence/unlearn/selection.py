"""Parameter selection: which whole output neurons/channels of each layer may move.

Per Linear/Conv layer, a fraction ``ratio`` of the output units (their weight rows plus bias
entries) is chosen, ranked on the forget data by |Σ output| or |Σ ∂loss/∂output| over the
samples (and positions), or at random. A Linear layer's units are its output features, on the
last dimension of its output whatever the input rank (``[B, D]``, ``[B, T, D]``, ...); a Conv
layer's units are its output channels. Normalisation layers are never selected (they still
enter H). The result is a dict of boolean masks shaped like the parameters.

``layers`` restricts which layers take part: ``"all"`` (every selectable layer),
``"output"`` (only the layer whose output is the model's logits: the last selectable layer
the forward pass runs) or a list of module names. Class removal defaults to ``"output"``:
the forgotten class's own output unit moves and the shared features stay as they are, which
keeps the retained classes' accuracy (measured in ``docs/benchmarks.md``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_influence.data._modules import eval_mode, model_device
from lightning_influence.data.batches import Batch, as_batches
from lightning_influence.data.distributed import active_shards
from lightning_influence.data.forward import call_model, inputs_to, logits_of
from lightning_influence.data.hooks import ForwardRecorder
from lightning_influence.solve.curvature import LossFn, default_loss

SELECTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
METHODS = ("highest_outputs", "highest_gradients", "lowest_outputs", "lowest_gradients", "random")
LAYER_CHOICES = ("all", "output")


def selectable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear/Conv layers whose weight is trainable, keyed by module name.

    Args:
        model: the model.
    """
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, SELECTABLE) and m.weight is not None and m.weight.requires_grad
    }


def units_per_layer(n_out: int, ratio: float, min_units: int = 1) -> int:
    """How many output units a layer with ``n_out`` of them contributes: round(ratio·n), at
    least ``min_units`` (and at most ``n_out``).

    Args:
        n_out: the layer's number of output units.
        ratio: the share to select, in (0, 1].
        min_units: the fewest units (class removal: one per forgotten class).
    """
    return min(n_out, max(1, min_units, round(ratio * n_out)))


def output_layer(model: nn.Module, data: Any) -> str:
    """Name of the selectable layer whose output is the model's logits: the last selectable
    layer that runs in the forward pass on the first batch of ``data``.

    Args:
        model: the model.
        data: a batch ``(x, y)`` or an iterable of batches (only the first is run).
    """
    batch = next(iter(as_batches(data, "forget_data")))
    with ForwardRecorder(selectable_layers(model), keep=lambda *_: None) as recorder:
        with torch.no_grad(), eval_mode(model):
            call_model(model, inputs_to(batch.x, model_device(model)))
    order = recorder.order
    if not order:
        raise ValueError(
            "No selectable layer (trainable nn.Linear or nn.Conv) ran in the forward pass: "
            "selection.layers='output' needs one; use selection.layers='all' or name them."
        )
    return order[-1]


def named_layers(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """The selectable layers called ``names``; raises, listing the valid names, on any other.

    Args:
        model: the model.
        names: module names of trainable Linear/Conv layers.
    """
    available = selectable_layers(model)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(
            f"selection.layers names {unknown}, which are not trainable Linear/Conv layers of "
            f"{type(model).__name__}; choose from {sorted(available)}."
        )
    return {n: available[n] for n in names}


def _layers_to_rank(model: nn.Module, layers: str | list[str], data: Any) -> dict[str, nn.Module]:
    """The selectable layers that ``layers`` names (see the module doc)."""
    if layers == "all":
        return selectable_layers(model)
    if layers == "output":
        name = output_layer(model, data)
        return {name: selectable_layers(model)[name]}
    if isinstance(layers, str) or not layers:
        raise ValueError(
            f"selection.layers must be 'all', 'output' or a non-empty list of module names, "
            f"got {layers!r}."
        )
    return named_layers(model, layers)


def unit_dim(layer: nn.Module) -> int:
    """The dimension of the layer's output that indexes its units (negative: from the end).

    A Linear acts on the last dimension; a ConvNd's channels precede its N spatial dims, so
    negative indices also cover unbatched inputs.

    Args:
        layer: an ``nn.Linear`` or ``nn.Conv1d/2d/3d``.
    """
    if isinstance(layer, nn.Linear):
        return -1
    return -(len(layer.kernel_size) + 1)


def _per_unit_sums(out: Tensor, dim: int) -> Tensor:
    """Σ over every dimension but the unit dimension (batch and positions), in float64."""
    return out.movedim(dim, -1).reshape(-1, out.shape[dim]).sum(dim=0).double()


def _recorded_outputs(
    model: nn.Module, recorder: ForwardRecorder, batch: Batch
) -> dict[str, list[Tensor]]:
    """Every output of the recorded layers on one batch."""
    with torch.no_grad():
        call_model(model, batch.x)
    return recorder.pop()


def _recorded_output_grads(
    model: nn.Module, recorder: ForwardRecorder, batch: Batch, loss_fn: LossFn
) -> dict[str, list[Tensor]]:
    """∂loss/∂output for every output of the recorded layers on one batch.

    Uses ``torch.autograd.grad``, so the parameters' accumulated ``.grad`` stay untouched.
    """
    with torch.enable_grad():
        loss = loss_fn(logits_of(call_model(model, batch.x)), batch.y)
        outputs = recorder.pop()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                "The loss on forget_data is NaN/inf: check the inputs and the model."
            )
        pairs = [(name, o) for name, outs in outputs.items() for o in outs if o.requires_grad]
        if not pairs:
            return {}
        grads = torch.autograd.grad(loss, [o for _, o in pairs], allow_unused=True)
    out: dict[str, list[Tensor]] = {}
    for (name, o), g in zip(pairs, grads, strict=True):
        out.setdefault(name, []).append(torch.zeros_like(o) if g is None else g)
    return out


def _unit_scores(
    model: nn.Module, layers: dict[str, nn.Module], data: Any, loss_fn: LossFn, use_grad: bool
) -> dict[str, Tensor]:
    """|Σ over the forget data of each output unit's activation (or loss-gradient)|.

    The rows are cut into the chunks of :meth:`~lightning_influence.data.distributed.Shards.chunks`
    and summed in float64, so under DDP each process ranks on its block and the all-reduced
    sums equal one process's to float64 round-off.
    """
    device = model_device(model)
    sums = {
        name: torch.zeros(layer.weight.shape[0], dtype=torch.float64, device=device)
        for name, layer in layers.items()
    }
    shards = active_shards()
    recorder = ForwardRecorder(layers).register()  # every output: a layer may run twice
    bad: str | None = None
    try:
        for batch in shards.chunks(as_batches(data, "forget_data")):
            batch = Batch(inputs_to(batch.x, device), batch.y.to(device))
            if use_grad:
                per_layer = _recorded_output_grads(model, recorder, batch, loss_fn)
            else:
                per_layer = _recorded_outputs(model, recorder, batch)
            for name, tensors in per_layer.items():
                for t in tensors:
                    sums[name] += _per_unit_sums(t.detach(), unit_dim(layers[name]))
    except FloatingPointError as err:
        bad = str(err)
    finally:
        recorder.remove()
    if shards.any(bad is not None, device):  # every process raises, none waits
        raise FloatingPointError(
            bad or "The loss on forget_data of another process is NaN/inf: check the inputs."
        )
    sums = shards.reduce_dict(sums)
    return {name: s.abs().cpu() for name, s in sums.items()}


def _scores(
    model: nn.Module,
    layers: dict[str, nn.Module],
    forget_data: Any,
    method: str,
    loss_fn: LossFn | None,
    gen: torch.Generator,
) -> dict[str, Tensor]:
    """One float64 score per output unit of each layer."""
    if method == "random":
        return {
            name: torch.rand(layer.weight.shape[0], generator=gen, dtype=torch.float64)
            for name, layer in layers.items()
        }
    if forget_data is None:
        raise ValueError(f"method={method!r} ranks units on the forget data: pass forget_data.")
    with eval_mode(model):
        return _unit_scores(
            model, layers, forget_data, loss_fn or default_loss, "gradients" in method
        )


def select_parameters(
    model: nn.Module,
    forget_data: Any = None,
    method: str = "highest_outputs",
    ratio: float = 0.05,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    layers: str | list[str] = "all",
    min_units: int = 1,
) -> dict[str, Tensor]:
    """Boolean masks {parameter name: mask} selecting whole output units of each layer.

    The model is run in ``eval()`` mode (every submodule's own mode is restored after); its
    weights and any accumulated ``.grad`` are left untouched.

    Args:
        model: the model; its trainable ``nn.Linear`` and ``nn.Conv1d/2d/3d`` layers are
            selectable.
        forget_data: a batch ``(x, y)`` or an iterable of batches, read by
            :func:`~lightning_influence.as_batches` (not needed for ``random``).
        method: ``highest_outputs``, ``highest_gradients``, ``lowest_outputs``,
            ``lowest_gradients`` (rank units by |Σ output| or |Σ ∂loss/∂output| over the
            forget data) or ``random``.
        ratio: the share of each layer's output units, in (0, 1] (at least one unit each).
        loss_fn: the loss for the gradient methods (``None``: cross-entropy).
        seed: resolves ties and the ``random`` method.
        layers: ``"all"``, ``"output"`` (the layer producing the logits) or module names:
            the layers whose units may be selected (the others never move).
        min_units: the fewest units each layer contributes (at most its own count).

    Returns:
        Masks shaped like the selected layers' weights and biases.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown selection method {method!r}: choose one of {METHODS}.")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}.")
    if not selectable_layers(model):
        raise ValueError(
            "The model has no selectable layer (trainable nn.Linear or nn.Conv1d/2d/3d): "
            "parameter selection needs at least one; use selection=None to move every parameter."
        )
    if layers == "output" and forget_data is None:
        raise ValueError("layers='output' finds the output layer on the forget data: pass it.")
    chosen = _layers_to_rank(model, layers, forget_data)
    gen = torch.Generator().manual_seed(seed)
    scores = _scores(model, chosen, forget_data, method, loss_fn, gen)
    names = {id(p): n for n, p in model.named_parameters()}
    masks: dict[str, Tensor] = {}
    for name, layer in chosen.items():
        units = _top_units(
            scores[name], units_per_layer(scores[name].numel(), ratio, min_units), method, gen
        )
        for p in (layer.weight, layer.bias):
            if p is not None and p.requires_grad:
                shape = (-1,) + (1,) * (p.dim() - 1)
                masks[names[id(p)]] = units.view(shape).expand_as(p).clone().to(p.device)
    return masks


def _top_units(scores: Tensor, k: int, method: str, gen: torch.Generator) -> Tensor:
    """Bool mask of the ``k`` best units (ties broken at random by ``gen``)."""
    tie_break = (
        torch.rand(scores.numel(), generator=gen, dtype=torch.float64)
        * 1e-12
        * (scores.abs().max() + 1e-300)
    )
    order = torch.argsort(scores + tie_break, descending=not method.startswith("lowest"))
    units = torch.zeros(scores.numel(), dtype=torch.bool)
    units[order[:k]] = True
    return units
