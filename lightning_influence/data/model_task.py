"""How a model gives a loss: one object for batch → inputs, model → logits → loss.

Every stage reads the user's data and model the same way: a loader's batch becomes a
:class:`~lightning_influence.Batch` (``batch_parser``), the model's output gives the logits
(found by :func:`~lightning_influence.data.forward.logits_of`, or ``logits_fn``), and the logits
and labels give the mean loss (``loss_fn``) and the per-sample loss. :class:`ModelTask` holds
the three callables, checks them once, and answers each question in one place (as
kronfluence's ``Task``). The callbacks and :func:`~lightning_influence.run_unlearning` take a
``model_task=``; their loose ``loss_fn=``, ``logits_fn=`` and ``batch_parser=`` keywords are
sugar that builds one (:meth:`ModelTask.of`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_influence.data.batches import Batch, BatchParser, inputs_as, parse_batch
from lightning_influence.data.forward import LogitsModel, call_model, logits_from
from lightning_influence.solve.curvature import (
    LossFn,
    default_loss,
    is_cross_entropy,
    per_sample_loss,
)

__all__ = ["ModelTask", "ParsedLoader"]


@dataclass(frozen=True)
class ModelTask:
    """How batches are read, where the logits are, and which loss the model was trained with.

    Args:
        loss_fn: ``loss_fn(logits, targets) -> scalar``, mean-reduced over the batch (default:
            cross-entropy; ``F.cross_entropy`` and a plain ``nn.CrossEntropyLoss()`` are
            recognised as it).
        batch_parser: turns a loader's batch into a :class:`~lightning_influence.Batch`
            (default: :func:`~lightning_influence.parse_batch`: ``(x, y)``, ``(x, y, ids)``
            or dicts).
        logits_fn: ``logits_fn(output) -> logits`` for a model whose forward returns
            something other than logits, a dict or object with ``logits``, or a tuple whose
            first tensor is the logits (those are found without it).
    """

    loss_fn: LossFn = default_loss
    batch_parser: BatchParser = parse_batch
    logits_fn: Callable[[Any], Tensor] | None = None

    def __post_init__(self) -> None:
        if not callable(self.loss_fn):
            raise ValueError("loss_fn must be a callable (logits, targets) -> mean loss.")
        if not callable(self.batch_parser):
            raise ValueError("batch_parser must be a callable (loader batch -> li.Batch).")
        if self.logits_fn is not None and not callable(self.logits_fn):
            raise ValueError("logits_fn must be a callable (model output -> logits tensor).")

    @classmethod
    def of(
        cls,
        model_task: ModelTask | None = None,
        *,
        loss_fn: LossFn | None = None,
        batch_parser: BatchParser | None = None,
        logits_fn: Callable[[Any], Tensor] | None = None,
    ) -> ModelTask:
        """``model_task``, or one built from the loose keywords (``None``: the default).

        Raises:
            ValueError: both a ``model_task`` and loose keywords are given.
            TypeError: ``model_task`` is not a :class:`ModelTask`.
        """
        given = {"loss_fn": loss_fn, "batch_parser": batch_parser, "logits_fn": logits_fn}
        loose = {k: v for k, v in given.items() if v is not None}
        if model_task is None:
            return cls(**loose)
        if not isinstance(model_task, ModelTask):
            raise TypeError(
                f"model_task must be a lightning_influence.ModelTask, got "
                f"{type(model_task).__name__}."
            )
        if loose:
            raise ValueError(
                f"pass {', '.join(sorted(loose))} inside model_task=ModelTask(...) or on its "
                "own, not both."
            )
        return model_task

    @property
    def is_cross_entropy(self) -> bool:
        """Whether the loss is plain mean cross-entropy (the default's fast paths apply)."""
        return is_cross_entropy(self.loss_fn)

    def parse(self, raw: Any) -> Batch:
        """A loader's batch as a :class:`~lightning_influence.Batch`."""
        return self.batch_parser(raw)

    def logits_of(self, output: Any) -> Tensor:
        """The logits in a model's output."""
        return logits_from(output, self.logits_fn)

    def logits(self, model: nn.Module, x: Any) -> Tensor:
        """The model's logits on inputs ``x`` (a tensor, a tuple of them or a dict)."""
        return self.logits_of(call_model(model, x))

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The mean loss."""
        return self.loss_fn(logits, targets)

    def per_sample_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The loss of each sample alone, shape ``[B]``."""
        return per_sample_loss(self.loss_fn, logits, targets)

    def logits_model(self, model: nn.Module) -> nn.Module:
        """``model`` itself, or wrapped so that its forward returns the logits (``logits_fn``)."""
        return model if self.logits_fn is None else LogitsModel(model, self.logits_fn)

    def parsed(self, data: Any) -> Any:
        """``data`` whose batches go through the batch parser (unchanged for the default
        parser, which every reader applies itself); ``None`` stays ``None``."""
        if data is None or self.batch_parser is parse_batch:
            return data
        return ParsedLoader(data, self.batch_parser)

    def read(self, model: nn.Module, *data: Any) -> tuple[nn.Module, tuple[Any, ...]]:
        """The model as the scores run it (:meth:`logits_model`) and each data argument
        read through the batch parser (:meth:`parsed`)."""
        return self.logits_model(model), tuple(self.parsed(d) for d in data)

    def inputs_as(self, dtype: torch.dtype) -> ModelTask:
        """The same task whose parsed floating-point inputs are cast to ``dtype``."""
        return replace(self, batch_parser=inputs_as(self.batch_parser, dtype))


class ParsedLoader:
    """A loader whose batches go through ``parser``: it yields :class:`Batch` es, whose ids
    are the parser's (else the running position)."""

    def __init__(self, loader: Any, parser: BatchParser) -> None:
        self.loader, self.parser = loader, parser

    def __iter__(self):
        return (self.parser(b) for b in self.loader)

    def __len__(self) -> int:
        return len(self.loader)
