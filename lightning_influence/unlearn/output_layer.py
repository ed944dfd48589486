"""Score cheaply while only the output layer moves.

When every parameter a step changes belongs to the layer that produces the logits (class
removal's default selection), that layer's *inputs* on fixed scoring data do not change. They
are recorded once, and each trial of the step search then costs one call of that layer
instead of a forward pass through the whole model. The recording is used only when the
layer's outputs on it are exactly the model's logits (so a model that transforms the layer's
output, or runs the layer twice, is scored the ordinary way).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_influence.data._modules import eval_mode
from lightning_influence.data.hooks import ForwardRecorder

__all__ = ["OutputLayerInputs", "moving_module"]

#: recordings above this many elements are not kept (the ordinary scoring is used)
MAX_ELEMENTS = 1 << 26


def moving_module(model: nn.Module, names: Iterable[str]) -> str | None:
    """The one module that owns every parameter in ``names`` directly, or None."""
    owners = {name.rpartition(".")[0] for name in names}
    if len(owners) != 1:
        return None
    (owner,) = owners
    module = dict(model.named_modules()).get(owner)
    if module is None:
        return None
    own = {f"{owner}.{n}" if owner else n for n, _ in module.named_parameters(recurse=False)}
    return owner if set(names) <= own else None


def _one_tensor_in_and_out(args: tuple[Any, ...], out: Any) -> tuple[Tensor, Tensor] | None:
    """A call's (input, output), or None when it is not one tensor in, one tensor out (not
    recordable)."""
    if len(args) == 1 and isinstance(args[0], Tensor) and isinstance(out, Tensor):
        return args[0].detach(), out.detach()
    return None


class OutputLayerInputs:
    """The inputs of ``model``'s submodule ``layer_name`` recorded on ``x`` (see the module doc).

    Build it with :meth:`record`, which returns None when the recording cannot stand in for
    the model.
    """

    def __init__(self, layer: nn.Module, inputs: Tensor) -> None:
        self.layer, self.inputs = layer, inputs

    @classmethod
    @torch.no_grad()
    def record(
        cls, model: nn.Module, layer_name: str, predict: Any, x: Any
    ) -> OutputLayerInputs | None:
        """Run ``predict(model, x)`` once, recording the layer's inputs and outputs.

        Args:
            model: the model at the current weights.
            layer_name: the submodule whose parameters alone will move.
            predict: ``predict(model, x) -> logits`` (the scorer's own forward pass).
            x: the scoring inputs.
        """
        layer = dict(model.named_modules())[layer_name]
        with ForwardRecorder({layer_name: layer}, keep=_one_tensor_in_and_out) as recorder:
            logits = predict(model, x)
        calls = recorder.records[layer_name]
        if not calls or any(c is None for c in calls):
            return None
        inputs, outputs = [i for i, _ in calls], [o for _, o in calls]
        if sum(i.numel() for i in inputs) > MAX_ELEMENTS:
            return None
        recorded = cls(layer, torch.cat(inputs))
        out = torch.cat(outputs)
        if out.shape != logits.shape or not torch.equal(out, logits):
            return None
        return recorded

    @torch.no_grad()
    def logits(self) -> Tensor:
        """The logits at the layer's current weights."""
        with eval_mode(self.layer):
            return self.layer(self.inputs)
