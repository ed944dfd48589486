"""How the pipeline's passes share their rows across processes (DDP), and sum the results.

Under a multi-process Lightning strategy every rank runs the whole pipeline on the same data,
but each data pass touches only this rank's block of the rows and the partial results are
combined with the strategy's collectives:

| pass | split | combined by |
|---|---|---|
| capture of the Hessian candidates | rows | all-gather (then sorted by id) |
| forget gradient g, retained gradients of later rounds | rows of every batch | all-reduce (sum) |
| each Hessian(-vector) product of the solve | rows of every batch | all-reduce (sum) |
| parameter selection's per-unit sums | rows | all-reduce (sum) |
| validation scoring (before/after and every step trial) | rows | all-gather of the logits |

A weighted mean loss is normalised by the weight of *all* rows before it is split, so the sum
over ranks is the single-process quantity up to float round-off, and every rank takes the
same decisions (solver iterations, step radius) on the same combined numbers.

The active :class:`Shards` is a context variable: :func:`sharded` sets it for a block (the
callback does so under DDP); outside it every pass runs whole, as in one process.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

from lightning_influence.data.batches import Batch
from lightning_influence.data.forward import inputs_take

__all__ = ["UNIT", "Shards", "active_shards", "sharded"]

#: rows per chunk of a gradient or HVP pass (the unit that is split over the processes)
UNIT = 64

Gather = Callable[[Tensor], Tensor]
Reduce = Callable[[Tensor], Tensor]


class Shards:
    """This process's share of every pass, and the collectives that combine the shares.

    Args:
        rank: this process's index, ``0 <= rank < world``.
        world: the number of processes.
        all_gather: ``t [c, ...] -> [world, c, ...]``, every rank's equally shaped tensor.
        all_reduce: ``t -> sum of t over the ranks`` (every rank gets the same sum).
    """

    def __init__(
        self,
        rank: int = 0,
        world: int = 1,
        all_gather: Gather | None = None,
        all_reduce: Reduce | None = None,
    ) -> None:
        if world > 1 and (all_gather is None or all_reduce is None):
            raise ValueError("Shards over several processes need all_gather and all_reduce.")
        if not 0 <= rank < world:
            raise ValueError(f"rank must lie in [0, {world}), got {rank}.")
        self.rank, self.world = rank, world
        self._gather, self._reduce = all_gather, all_reduce

    @classmethod
    def from_strategy(cls, strategy: Any) -> Shards:
        """The shards of a Lightning strategy (its ``all_gather`` and sum ``reduce``)."""
        world = int(getattr(strategy, "world_size", 1))
        if world <= 1:
            return cls()
        return cls(
            int(strategy.global_rank),
            world,
            all_gather=lambda t: strategy.all_gather(t).reshape(world, *t.shape),
            all_reduce=lambda t: strategy.reduce(t, reduce_op="sum"),
        )

    @property
    def split(self) -> bool:
        """Whether the passes are split (more than one process)."""
        return self.world > 1

    def block(self, n: int) -> slice:
        """This rank's contiguous block of ``n`` rows (ranks in order; the last may be short)."""
        c = math.ceil(n / self.world)
        return slice(min(self.rank * c, n), min((self.rank + 1) * c, n))

    def gather(self, part: Tensor, n: int) -> Tensor:
        """The ``n`` rows whose blocks (:meth:`block`) the ranks hold, in row order.

        Args:
            part: this rank's block ``[len(block(n)), ...]``.
            n: the number of rows in all.
        """
        if not self.split:
            return part
        c = math.ceil(n / self.world)
        padded = part.new_zeros((c, *part.shape[1:]))
        padded[: part.shape[0]] = part
        assert self._gather is not None
        return self._gather(padded.contiguous()).reshape(self.world * c, *part.shape[1:])[:n]

    def reduce(self, value: Tensor) -> Tensor:
        """The sum of ``value`` over the ranks."""
        if not self.split:
            return value
        assert self._reduce is not None
        return self._reduce(value.clone())

    def reduce_dict(
        self, parts: Mapping[str, Tensor], dtype: torch.dtype | None = None
    ) -> dict[str, Tensor]:
        """The sum over the ranks of a parameter dict, in one flat all-reduce.

        Args:
            parts: this rank's part (e.g. float64 sums of float32 chunks).
            dtype: the result's dtype (None: that of ``parts``).
        """
        keys = list(parts)
        if self.split:
            flat = self.reduce(torch.cat([parts[k].reshape(-1) for k in keys]))
            out, i = {}, 0
            for k in keys:
                n = parts[k].numel()
                out[k] = flat[i : i + n].reshape(parts[k].shape)
                i += n
        else:
            out = dict(parts)
        return {k: t.to(dtype or parts[k].dtype) for k, t in out.items()}

    def chunks(self, batches: list[Batch]) -> list[Batch]:
        """This rank's block of the batches cut into chunks of at most :data:`UNIT` rows.

        The chunks are the same whatever the number of processes (one process keeps them
        all), and each is differentiated on its own; with sums in float64 (:meth:`reduce_dict`)
        a sharded gradient or HVP then equals the single-process one to float64 round-off
        rather than float32's, which a Krylov solve would amplify.
        """
        pieces = [
            Batch(
                inputs_take(b.x, slice(i, i + UNIT)),
                b.y[i : i + UNIT],
                None if b.ids is None else b.ids[i : i + UNIT],
                None if b.weights is None else b.weights[i : i + UNIT],
            )
            for b in batches
            for i in range(0, len(b), UNIT)
        ]
        if len(batches) == len(pieces) and not self.split:
            return batches  # nothing to cut
        return pieces[self.block(len(pieces))]

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """Whether ``flag`` holds on any rank (every rank gets the same answer)."""
        if not self.split:
            return flag
        return bool(self.reduce(torch.tensor([float(flag)], device=device)).item() > 0)


_ONE = Shards()
_ACTIVE: ContextVar[Shards] = ContextVar("lightning_influence_shards", default=_ONE)


def active_shards() -> Shards:
    """The shards the passes use now (one process unless inside :func:`sharded`)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def sharded(shards: Shards) -> Iterator[Shards]:
    """Within the block, the pipeline's passes split their rows as ``shards`` says."""
    token = _ACTIVE.set(shards)
    try:
        yield shards
    finally:
        _ACTIVE.reset(token)
