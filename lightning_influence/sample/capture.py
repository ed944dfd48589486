"""Capture per-sample features, logits, labels and ids for the Hessian-subset samplers.

Two ways in:

- :class:`CaptureCallback` records during validation (no extra forward passes in the usual
  case), gathers across DDP ranks and keeps the result in the callback's state.
- :func:`capture_pool` makes one ``no_grad`` pass over any dataloader (e.g. the training
  pool), which is what the unlearning callback uses.

Both return a :class:`CaptureResult` sorted by sample id, one row per unique id, with
detached CPU tensors that are *not* inference tensors (they can be used with autograd).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_influence.data._modules import eval_mode, model_device
from lightning_influence.data.batches import Batch, BatchParser, parse_batch
from lightning_influence.data.forward import LogitsModel, call_model, logits_of
from lightning_influence.data.hooks import ForwardRecorder
from lightning_influence.data.model_task import ModelTask
from lightning_influence.data.pool import batch_ids
from lightning_influence.unlearn.selection import output_layer

__all__ = [
    "CaptureResult",
    "find_feature_module",
    "FeatureRecorder",
    "capture_pool",
    "CaptureCallback",
]


# --------------------------------------------------------------------------------------------
# Result container
# --------------------------------------------------------------------------------------------


@dataclass
class CaptureResult:
    """Per-sample capture: ``ids [N]``, ``labels [N]``, ``logits [N, C]``, ``features [N, D]``.

    Rows are aligned; ``features`` is ``None`` when features were not stored.
    """

    ids: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = int(self.ids.shape[0])
        if self.ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(self.ids.shape)}")
        for name in ("labels", "logits", "features"):
            t = getattr(self, name)
            if t is not None and int(t.shape[0]) != n:
                raise ValueError(f"{name} has {t.shape[0]} rows but ids has {n}")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held by the tensors, in bytes."""
        return sum(_nbytes(t) for t in (self.ids, self.labels, self.logits, self.features))

    @property
    def classes(self) -> torch.Tensor:
        """The sorted unique labels present."""
        return torch.unique(self.labels)

    def positions(self, ids: Iterable[int] | torch.Tensor) -> torch.Tensor:
        """Row positions of the given ids (in the given order); unknown ids raise ``KeyError``."""
        want = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        order = torch.argsort(self.ids)
        sorted_ids = self.ids[order]
        loc = torch.searchsorted(sorted_ids, want).clamp(max=max(len(self) - 1, 0))
        found = (sorted_ids[loc] == want) if len(self) else torch.zeros_like(want, dtype=torch.bool)
        if not bool(found.all()):
            missing = want[~found][:5].tolist()
            raise KeyError(
                f"ids not in the capture: {missing}{'...' if (~found).sum() > 5 else ''}"
            )
        return order[loc]

    def subset(self, ids: Iterable[int] | torch.Tensor) -> CaptureResult:
        """The rows for ``ids``, in that order."""
        pos = self.positions(ids)
        return CaptureResult(
            ids=self.ids[pos],
            labels=self.labels[pos],
            logits=self.logits[pos],
            features=None if self.features is None else self.features[pos],
        )

    def to_dict(self) -> dict[str, torch.Tensor | None]:
        """Plain dict of tensors (for checkpoints and ``torch.save``)."""
        return {
            "ids": self.ids,
            "labels": self.labels,
            "logits": self.logits,
            "features": self.features,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CaptureResult:
        """Inverse of :meth:`to_dict`."""
        return cls(ids=d["ids"], labels=d["labels"], logits=d["logits"], features=d.get("features"))


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


# --------------------------------------------------------------------------------------------
# Feature module and hooks
# --------------------------------------------------------------------------------------------


def find_feature_module(
    model: nn.Module, name: str | None = None, data: Any = None
) -> tuple[str, nn.Module]:
    """Return ``(name, module)`` whose *input* is the per-sample feature.

    Default: the model's output layer, found by the one rule the package uses everywhere
    (:func:`~lightning_influence.unlearn.selection.output_layer`: the last trainable ``nn.Linear`` /
    ``nn.Conv`` layer that runs in the forward pass on the first batch of ``data``); its
    input is the penultimate representation. A given ``name`` must be in
    ``model.named_modules()`` (no data needed).

    Args:
        model: the model.
        name: a submodule's name, or None for the output layer.
        data: a batch ``(x, y)``, a :class:`~lightning_influence.Batch` or an iterable of
            batches, run once to find the output layer (needed when ``name`` is None).
    """
    modules = dict(model.named_modules())
    if name is not None:
        if name in modules and name != "":
            return name, modules[name]
        if f"model.{name}" in modules and isinstance(model, LogitsModel):  # logits_fn wrapper
            return name, modules[f"model.{name}"]
        some = [n for n in modules if n][:8]
        raise ValueError(
            f"feature_module {name!r} is not a submodule of {type(model).__name__}; valid names "
            f"include {some}{' ...' if len(modules) > 9 else ''}."
        )
    if data is None:
        raise ValueError(
            "find_feature_module(model) finds the output layer by running the model: pass "
            "data=<a batch>, or name=<the submodule whose input is the feature>."
        )
    try:
        found = output_layer(model, data)
    except ValueError as err:
        raise ValueError(
            f"{type(model).__name__} has no trainable nn.Linear/nn.Conv layer that runs in its "
            "forward pass to take features from; pass feature_module=<name of a submodule "
            "whose input is the feature>."
        ) from err
    return found, modules[found]


def _flat_first_input(inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
    x = inputs[0]
    return x.reshape(x.shape[0], -1) if x.ndim != 2 else x


class FeatureRecorder(ForwardRecorder):
    """Context manager: a forward hook that keeps the module's first input, flattened to [B, D].

    ``last`` holds the input of the most recent forward call (``None`` before any); ``reset()``
    clears it. The tensor is the live activation: copy it before the next forward.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__({"feature": module}, _flat_first_input, last_only=True)

    @property
    def last(self) -> torch.Tensor | None:
        kept = self.records["feature"]
        return kept[-1] if kept else None

    def reset(self) -> None:
        self.pop()


def recorded_logits(
    outputs: list[Any], batch_size: int, find: Callable[[Any], torch.Tensor] = logits_of
) -> torch.Tensor | None:
    """The most recent recorded output that looks like logits for this batch:
    ``[batch_size, C]``.

    A LightningModule's forward hook keeps every call, not just the last: under DDP,
    Lightning redirects the wrapped module's ``forward`` to ``validation_step``, so the hook
    also fires with the step's output (e.g. the loss) after the inner ``self(x)`` that
    produced the logits. ``find`` takes the logits out of one output (a ``logits_fn``).
    """
    for out in reversed(outputs):
        t = _logits_from(out, find)
        if t is not None and t.ndim == 2 and int(t.shape[0]) == batch_size:
            return t
    return None


def _logits_from(
    output: Any, find: Callable[[Any], torch.Tensor] = logits_of
) -> torch.Tensor | None:
    """Logits from a model/step output (see :func:`~lightning_influence.data.forward.logits_of`);
    None where ``find`` finds none (a step's loss, an output a ``logits_fn`` cannot read)."""
    try:
        return find(output)
    except (TypeError, KeyError, IndexError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------
# Accumulation shared by the callback and the offline pass
# --------------------------------------------------------------------------------------------


class _Accumulator:
    """Collects per-batch rows as detached, non-inference CPU copies under a memory budget."""

    def __init__(self, dtype: torch.dtype, store_features: bool, max_bytes: int, scale: int = 1):
        self.dtype = dtype
        self.store_features = store_features
        self.max_bytes = int(max_bytes)
        self.scale = int(scale)  # world size: the gathered result is ~scale x the local one
        self.ids: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.features: list[torch.Tensor] = []
        self.bytes = 0
        self.count = 0

    def add(
        self,
        ids: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        features: torch.Tensor | None,
    ) -> None:
        b = int(labels.shape[0])
        if logits.ndim != 2 or int(logits.shape[0]) != b:
            raise ValueError(
                f"expected logits of shape [batch={b}, classes], got {tuple(logits.shape)}"
            )
        if self.store_features:
            if features is None:
                raise RuntimeError(
                    "the feature module did not run during this batch, so no features were "
                    "recorded; pick another feature_module or set store_features=False."
                )
            if int(features.shape[0]) != b:
                raise RuntimeError(
                    f"the feature module saw {features.shape[0]} rows for a batch of {b}; it "
                    "must run once per batch on the whole batch (pick another feature_module)."
                )
        item = torch.empty((), dtype=self.dtype).element_size()
        new = b * 16 + logits.shape[1] * b * item  # ids + labels (int64) + logits
        if self.store_features and features is not None:
            new += features.shape[1] * b * item
        if (self.bytes + new) * self.scale > self.max_bytes:
            scaled = f" x {self.scale} ranks" if self.scale > 1 else ""
            raise MemoryError(
                f"capture would exceed max_bytes={self.max_bytes:,} after {self.count} samples "
                f"(next batch needs {new:,} more bytes{scaled}); raise max_bytes, use "
                "half_precision=True, store_features=False, a narrower feature_module or a "
                "smaller pool."
            )
        # Validation runs under torch.inference_mode: a clone made *inside* it is still an
        # inference tensor, which autograd refuses to save. Copy outside inference mode.
        with torch.inference_mode(False), torch.no_grad():
            self.ids.append(ids.detach().reshape(-1).long().cpu().clone())
            self.labels.append(labels.detach().reshape(-1).long().cpu().clone())
            self.logits.append(logits.detach().to("cpu", self.dtype).clone())
            if self.store_features and features is not None:
                self.features.append(features.detach().to("cpu", self.dtype).clone())
        self.bytes += new
        self.count += b

    def concat(self) -> CaptureResult | None:
        if not self.ids:
            return None
        with torch.inference_mode(False):
            return CaptureResult(
                ids=torch.cat(self.ids),
                labels=torch.cat(self.labels),
                logits=torch.cat(self.logits),
                features=torch.cat(self.features) if self.features else None,
            )


def _dedupe_sorted(result: CaptureResult) -> tuple[CaptureResult, int]:
    """Keep the first row of each id and sort by id; returns (result, number dropped)."""
    with torch.inference_mode(False):
        n = len(result)
        uniq, inverse = torch.unique(result.ids, return_inverse=True)
        first = torch.full((uniq.numel(),), n, dtype=torch.long)
        first = first.scatter_reduce(0, inverse, torch.arange(n), reduce="amin")
        out = CaptureResult(
            ids=result.ids[first],
            labels=result.labels[first],
            logits=result.logits[first],
            features=None if result.features is None else result.features[first],
        )
    return out, n - int(uniq.numel())


def _labels_of(y: Any) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.ndim != 1:
        raise ValueError(
            f"capture needs integer class labels of shape [batch], got dtype {y.dtype} and "
            f"shape {tuple(y.shape)}; pass a batch_parser that returns class indices."
        )
    return y


# --------------------------------------------------------------------------------------------
# Offline pass
# --------------------------------------------------------------------------------------------


def capture_pool(
    model: nn.Module,
    dataloader: Iterable[Any],
    feature_module: str | None = None,
    batch_parser: BatchParser = parse_batch,
    dtype: torch.dtype = torch.float32,
    max_bytes: int = 2**30,
    device: torch.device | str | None = None,
    store_features: bool = True,
) -> CaptureResult:
    """One ``no_grad`` pass of ``model`` in ``eval()`` mode over ``dataloader``.

    Records the input of ``feature_module`` (default: the output layer, found on the first
    batch by :func:`find_feature_module`) as features and
    the model output (a Tensor, a dict's ``"logits"`` or a tuple's first item) as logits. The
    training mode of every submodule is restored afterwards. Batches without ids get their
    running position in the loader as id (with a warning): only stable if the loader does not
    shuffle. Duplicate ids keep their first row; the result is sorted by id.
    """
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    module = None  # a named feature module is found (or refused) before the pass
    if store_features and feature_module is not None:
        module = find_feature_module(model, feature_module)[1]
    acc = _Accumulator(dtype, store_features, max_bytes)
    warned = False
    position = 0
    rec: FeatureRecorder | None = None
    with eval_mode(model), torch.no_grad(), contextlib.ExitStack() as hooks:
        for batch in dataloader:
            parsed = batch_parser(batch)
            labels = _labels_of(parsed.y)
            b = int(labels.shape[0])
            x = move_data_to_device(parsed.x, device)
            if store_features and rec is None:
                if module is None:  # the default, the output layer: found on the first batch
                    found = Batch(x, labels.to(model_device(model)))
                    module = find_feature_module(model, None, [found])[1]
                rec = hooks.enter_context(FeatureRecorder(module))
            ids = parsed.ids
            if ids is None:
                if not warned:
                    rank_zero_warn(
                        "capture_pool: batches carry no sample ids; using running positions "
                        "in the dataloader. Wrap the dataset in "
                        "lightning_influence.IndexedDataset for stable ids."
                    )
                    warned = True
            ids = batch_ids(parsed, position)
            position += b
            if rec is not None:
                rec.reset()
            out = call_model(model, x)
            logits = logits_of(out)
            acc.add(ids, labels, logits, None if rec is None else rec.last)
    result = acc.concat()
    if result is None:
        raise ValueError("capture_pool: the dataloader yielded no batches; nothing captured.")
    result, dropped = _dedupe_sorted(result)
    if dropped:
        rank_zero_warn(f"capture_pool: dropped {dropped} rows with repeated sample ids.")
    return result


# --------------------------------------------------------------------------------------------
# Callback
# --------------------------------------------------------------------------------------------


class CaptureCallback(pl.Callback):
    """Record per-sample features, logits, labels and ids during validation.

    Where the numbers come from, per validation batch:

    - **features**: a forward hook on ``feature_module`` (default: the output layer of the
      LightningModule, found by running it once on the first batch) keeps its input from the
      latest call in that batch;
    - **logits**: the ``validation_step`` output if it is a Tensor ``[B, C]`` or a dict with
      ``"logits"``; otherwise the output of the LightningModule's own ``forward`` (a hook on
      ``pl_module``), so ``validation_step`` must either return logits or call ``self(x)``;
    - **ids**: from the batch (``(x, y, idx)`` or a dict; see :class:`IndexedDataset`). Without
      ids a single process uses running positions (with a warning); DDP refuses, since
      positions repeat across ranks.

    Only validation dataloader ``dataloader_idx`` is captured. The sanity check is skipped.
    Each capturing validation run replaces the previous result (the latest weights win).
    Under DDP the rows are gathered across ranks and the duplicates a ``DistributedSampler``
    pads in are dropped (first occurrence kept); every rank ends with the same result, sorted
    by id. ``max_bytes`` bounds the gathered result; the check runs before each batch is stored.
    Batches are read with ``batch_parser``; a ``model_task``
    (:class:`~lightning_influence.ModelTask`) gives it together with a ``logits_fn`` for
    outputs whose logits are not found by themselves (give either, not both).
    """

    def __init__(
        self,
        feature_module: str | None = None,
        store_features: bool = True,
        half_precision: bool = False,
        max_bytes: int = 2**30,
        every_n_epochs: int = 1,
        dataloader_idx: int = 0,
        batch_parser: BatchParser | None = None,
        model_task: ModelTask | None = None,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.feature_module = feature_module
        self.store_features = store_features
        self.half_precision = half_precision
        self.max_bytes = int(max_bytes)
        self.every_n_epochs = int(every_n_epochs)
        self.dataloader_idx = int(dataloader_idx)
        self.model_task = ModelTask.of(model_task, batch_parser=batch_parser)
        self.result: CaptureResult | None = None
        self.captured_epoch: int | None = None
        #: ``trainer.global_step`` at the capture: the weights it describes (None: not yet)
        self.captured_step: int | None = None
        self._active = False
        self._acc: _Accumulator | None = None
        self._features: FeatureRecorder | None = None
        self._outputs: ForwardRecorder | None = None
        self._position = 0
        self._warned_no_ids = False

    @property
    def batch_parser(self) -> BatchParser:
        """The model task's batch parser."""
        return self.model_task.batch_parser

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            feature_module=self.feature_module, dataloader_idx=self.dataloader_idx
        )

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.half_precision else torch.float32

    def require_result(self) -> CaptureResult:
        """The captured result; raises ``RuntimeError`` if nothing was captured yet."""
        if self.result is None or len(self.result) == 0:
            raise RuntimeError(
                "CaptureCallback has captured nothing yet: it records during validation (not the "
                "sanity check), so run trainer.fit with a validation loader or trainer.validate "
                "first, check every_n_epochs and dataloader_idx, or use capture_pool() instead."
            )
        return self.result

    # --- hooks -------------------------------------------------------------------------------

    def _should_capture(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn == "fit":
            return (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return True

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._cleanup()
        if not self._should_capture(trainer):
            return
        self._features = None  # the default (the output layer's input): on the first batch
        if self.store_features and self.feature_module is not None:
            _, module = find_feature_module(pl_module, self.feature_module)
            self._features = FeatureRecorder(module).register()
        self._outputs = ForwardRecorder({"step": pl_module}).register()
        self._acc = _Accumulator(
            self.dtype, self.store_features, self.max_bytes, scale=max(trainer.world_size, 1)
        )
        self._position = 0
        self._active = True

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._active:
            if self.store_features and self._features is None:
                parsed = self.model_task.parse(batch)
                found = Batch(parsed.x, _labels_of(parsed.y))
                _, module = find_feature_module(pl_module, None, [found])
                self._features = FeatureRecorder(module).register()
            if self._features is not None:
                self._features.reset()
            if self._outputs is not None:
                self._outputs.pop()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or dataloader_idx != self.dataloader_idx or self._acc is None:
            return
        parsed = self.model_task.parse(batch)
        labels = _labels_of(parsed.y)
        b = int(labels.shape[0])
        ids = parsed.ids
        if ids is None:
            if trainer.world_size > 1:
                raise RuntimeError(
                    "CaptureCallback under DDP needs sample ids in the batch (batch positions "
                    "repeat across ranks): wrap the dataset in lightning_influence.IndexedDataset "
                    "or return (x, y, idx)."
                )
            if not self._warned_no_ids:
                rank_zero_warn(
                    "CaptureCallback: validation batches carry no sample ids; using running "
                    "positions (stable only without shuffling). Wrap the dataset in "
                    "lightning_influence.IndexedDataset for stable ids."
                )
                self._warned_no_ids = True
        ids = batch_ids(parsed, self._position)
        self._position += b

        find = self.model_task.logits_of
        logits = _logits_from(outputs, find) if not isinstance(outputs, (tuple, list)) else None
        if logits is None or logits.ndim != 2 or int(logits.shape[0]) != b:
            recorded = self._outputs.records["step"] if self._outputs is not None else []
            logits = recorded_logits(recorded, b, find)
        if logits is None:
            raise RuntimeError(
                "CaptureCallback found no logits for this batch: return the logits (a Tensor or "
                "a dict with 'logits') from validation_step, or compute them with self(x) so "
                "the forward hook on the LightningModule sees them."
            )
        features = self._features.last if self._features is not None else None
        self._acc.add(ids, labels, logits, features)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active or self._acc is None:
            return
        acc = self._acc
        self._cleanup()
        local = acc.concat()
        if trainer.world_size > 1:
            result = self._gather(trainer, pl_module, local)
        else:
            result = local
        if result is None or len(result) == 0:
            rank_zero_warn("CaptureCallback: validation produced no batches; nothing captured.")
            return
        result, dropped = _dedupe_sorted(result)
        if dropped and trainer.world_size == 1:
            rank_zero_warn(f"CaptureCallback: dropped {dropped} rows with repeated sample ids.")
        self.result = result
        self.captured_epoch = trainer.current_epoch
        self.captured_step = trainer.global_step
        rank_zero_info(
            f"CaptureCallback: captured {len(result)} samples "
            f"({result.nbytes / 2**20:.1f} MiB) at epoch {trainer.current_epoch}."
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._cleanup()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self._features is not None:
            self._features.remove()
            self._features = None
        if self._outputs is not None:
            self._outputs.remove()
            self._outputs = None
        self._acc = None
        self._active = False

    # --- DDP ---------------------------------------------------------------------------------

    def _gather(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, local: CaptureResult | None
    ) -> CaptureResult | None:
        """All-gather variable-length rows from every rank (pad to the longest, then trim)."""
        strategy = trainer.strategy
        device = pl_module.device
        world = trainer.world_size
        with torch.inference_mode(False), torch.no_grad():
            n_local = 0 if local is None else len(local)
            counts = strategy.all_gather(torch.tensor([n_local], device=device)).reshape(-1)
            counts = counts.cpu().tolist()
            n_max = int(max(counts))
            if n_max == 0:
                return None
            total_bytes = sum(counts) * (
                (local.nbytes // max(n_local, 1)) if local is not None else 0
            )
            if total_bytes > self.max_bytes:
                raise MemoryError(
                    f"gathered capture ({total_bytes:,} bytes from {world} ranks) would exceed "
                    f"max_bytes={self.max_bytes:,}; raise max_bytes or use half_precision=True."
                )
            # Shapes of the per-sample columns must agree on every rank; ranks with no rows
            # use the widths reported by the others.
            widths = torch.tensor(
                [
                    -1 if local is None else local.logits.shape[1],
                    -1 if (local is None or local.features is None) else local.features.shape[1],
                ],
                device=device,
            )
            widths = strategy.all_gather(widths).reshape(world, 2).max(dim=0).values.cpu()
            c, d = int(widths[0]), int(widths[1])

            def pad(t: torch.Tensor | None, width: int | None, dtype: torch.dtype) -> torch.Tensor:
                shape = (n_max,) if width is None else (n_max, width)
                out = torch.zeros(shape, dtype=dtype, device=device)
                if t is not None and n_local:
                    # Transport floats as float32 (half is not supported by every backend).
                    out[:n_local] = t.to(device, dtype)
                return out

            cols = {
                "ids": pad(None if local is None else local.ids, None, torch.long),
                "labels": pad(None if local is None else local.labels, None, torch.long),
                "logits": pad(None if local is None else local.logits, c, torch.float32),
            }
            if self.store_features and d > 0:
                cols["features"] = pad(None if local is None else local.features, d, torch.float32)
            gathered = {k: strategy.all_gather(v).cpu() for k, v in cols.items()}
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in cols}
            for r, n_r in enumerate(counts):
                for k in cols:
                    parts[k].append(gathered[k].reshape(world, n_max, *cols[k].shape[1:])[r, :n_r])
            return CaptureResult(
                ids=torch.cat(parts["ids"]),
                labels=torch.cat(parts["labels"]),
                logits=torch.cat(parts["logits"]).to(self.dtype),
                features=torch.cat(parts["features"]).to(self.dtype)
                if "features" in parts
                else None,
            )

    # --- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "result": None if self.result is None else self.result.to_dict(),
            "captured_epoch": self.captured_epoch,
            "captured_step": self.captured_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        res = state_dict.get("result")
        self.result = None if res is None else CaptureResult.from_dict(res)
        self.captured_epoch = state_dict.get("captured_epoch")
        self.captured_step = state_dict.get("captured_step")
