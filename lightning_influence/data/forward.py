"""How a model is called on a batch's inputs and where its logits are (one place for all).

Inputs ``x`` of a :class:`~lightning_influence.Batch` may be a tensor (``model(x)``), a tuple
or list of tensors (``model(*x)``, several inputs) or a dict of tensors (``model(**x)``,
Hugging Face style). :func:`call_model` dispatches on that; the helpers below index, join,
move and check such inputs row-wise, so every stage handles them alike.

The model's output may be a tensor of logits, a dict or an object with a ``logits`` entry
(``{"logits": ..., "features": ...}``, a ``ModelOutput`` dataclass) or a tuple whose first
tensor is the logits (``(logits, features)``); :func:`logits_of` finds them. Anything else,
or logits elsewhere, needs ``logits_fn``: :class:`LogitsModel` wraps the model so that its
forward returns ``logits_fn(output)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LogitsModel",
    "LossFn",
    "call_model",
    "check_finite_inputs",
    "call_functional",
    "inputs_cat",
    "inputs_detach_cpu",
    "inputs_finite",
    "inputs_float_as",
    "inputs_rows",
    "inputs_take",
    "inputs_to",
    "is_inputs",
    "logits_from",
    "logits_of",
]

#: A batch's inputs: a tensor, a tuple/list of tensors or a dict of tensors.
Inputs = Any

#: ``loss_fn(logits, targets) -> scalar``, mean-reduced over the batch (the one definition).
LossFn = Callable[[Tensor, Tensor], Tensor]


def call_model(model: nn.Module, x: Inputs) -> Any:
    """``model(x)``, ``model(*x)`` for a tuple/list, ``model(**x)`` for a dict.

    Args:
        model: the model.
        x: the inputs.
    """
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def call_functional(model: nn.Module, params: Mapping[str, Tensor], x: Inputs) -> Any:
    """:func:`call_model` through ``torch.func.functional_call`` with ``params``."""
    from torch.func import functional_call

    if isinstance(x, Mapping):
        return functional_call(model, (dict(params),), (), dict(x))
    if isinstance(x, (tuple, list)):
        return functional_call(model, (dict(params),), tuple(x))
    return functional_call(model, (dict(params),), (x,))


def logits_of(output: Any) -> Tensor:
    """The logits in a model's output (see the module doc); raises naming the fix.

    Args:
        output: what the model's forward returned.
    """
    if isinstance(output, Tensor):
        return output
    found = None
    if isinstance(output, Mapping):
        found = output.get("logits")
    elif isinstance(output, (tuple, list)):
        found = next((o for o in output if isinstance(o, Tensor)), None)
    elif hasattr(output, "logits"):
        found = output.logits
    if isinstance(found, Tensor):
        return found
    raise TypeError(
        f"cannot find logits in the model's output of type {type(output).__name__}: return a "
        "tensor, a dict or object with 'logits', or a tuple whose first tensor is the logits, "
        "or pass logits_fn=(output -> logits tensor) to UnlearnCallback."
    )


def logits_from(output: Any, logits_fn: Callable[[Any], Tensor] | None = None) -> Tensor:
    """The logits of a model's output: ``logits_fn(output)``, checked to be a tensor, or
    :func:`logits_of` without one.

    Args:
        output: what the model's forward returned.
        logits_fn: the user's ``output -> logits``, if any.
    """
    if logits_fn is None:
        return logits_of(output)
    logits = logits_fn(output)
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits_fn must return a tensor, got {type(logits).__name__}.")
    return logits


class LogitsModel(nn.Module):
    """``model`` whose forward returns ``logits_fn(model(...))`` (parameters shared).

    Parameter names gain the prefix ``model.``; :meth:`unwrap_name` strips it.

    Args:
        model: the user's model.
        logits_fn: ``logits_fn(output) -> logits tensor``.
    """

    def __init__(self, model: nn.Module, logits_fn: Callable[[Any], Tensor]) -> None:
        super().__init__()
        self.model, self.logits_fn = model, logits_fn

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return logits_from(self.model(*args, **kwargs), self.logits_fn)

    @staticmethod
    def unwrap_name(name: str) -> str:
        return name[len("model.") :] if name.startswith("model.") else name


def is_inputs(x: Any) -> bool:
    """Whether ``x`` is a tensor or a (nested) tuple/list/dict of tensors."""
    if isinstance(x, Tensor):
        return True
    if isinstance(x, Mapping):
        return bool(x) and all(is_inputs(v) for v in x.values())
    if isinstance(x, Sequence) and not isinstance(x, (str, bytes)):
        return bool(x) and all(is_inputs(v) for v in x)
    return False


def _map(x: Inputs, fn: Callable[[Tensor], Tensor]) -> Inputs:
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: _map(v, fn) for k, v in x.items()}
    return type(x)(_map(v, fn) for v in x)


def inputs_take(x: Inputs, index: Any) -> Inputs:
    """Rows ``index`` (a slice, positions or a bool mask) of every tensor in ``x``."""
    return _map(x, lambda t: t[index])


def inputs_rows(x: Inputs) -> int:
    """The number of rows (dim 0 of the first tensor) of ``x``."""
    while not isinstance(x, Tensor):
        x = next(iter(x.values())) if isinstance(x, Mapping) else x[0]
    return int(x.shape[0]) if x.dim() > 0 else -1


def inputs_float_as(x: Inputs, dtype: torch.dtype) -> Inputs:
    """Floating-point tensors of ``x`` cast to ``dtype`` (integer inputs, e.g. token ids, kept)."""
    return _map(x, lambda t: t.to(dtype) if t.is_floating_point() else t)


def inputs_float64(x: Inputs) -> Inputs:
    """Floating-point tensors of ``x`` cast to float64 (integer inputs, e.g. token ids, kept)."""
    return inputs_float_as(x, torch.float64)


def inputs_to(x: Inputs, device: torch.device | str | None = None, **kwargs: Any) -> Inputs:
    """Every tensor of ``x`` moved/cast with ``Tensor.to(device, **kwargs)``."""
    return _map(x, lambda t: t.to(device, **kwargs) if device is not None else t.to(**kwargs))


def inputs_detach_cpu(x: Inputs) -> Inputs:
    """Every tensor of ``x`` detached on the CPU."""
    return _map(x, lambda t: t.detach().cpu())


def inputs_cat(parts: Sequence[Inputs]) -> Inputs:
    """Join the rows of several inputs of the same structure."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(list(parts))
    if isinstance(first, Mapping):
        return {k: inputs_cat([p[k] for p in parts]) for k in first}
    return type(first)(inputs_cat([p[i] for p in parts]) for i in range(len(first)))


def inputs_finite(x: Inputs) -> bool:
    """Whether every floating-point tensor of ``x`` is free of NaN and inf."""
    if isinstance(x, Tensor):
        return not x.is_floating_point() or bool(torch.isfinite(x).all())
    values = x.values() if isinstance(x, Mapping) else x
    return all(inputs_finite(v) for v in values)


def check_finite_inputs(x: Inputs, what: str) -> None:
    """Raise, naming the data, if the inputs hold NaN or inf."""
    if not inputs_finite(x):
        raise FloatingPointError(
            f"The {what} inputs contain NaN or inf: clean them (or drop those samples) first."
        )
