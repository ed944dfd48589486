"""``UnlearnCallback``: forget a class, samples, a wrong label or a backdoor after ``fit``.

The callback is Lightning glue only: it builds the forget specification and the settings
from its arguments, finds the data (and a fresh :class:`~lightning_influence.CaptureCallback`
capture), runs :func:`~lightning_influence.unlearn.pipeline.run_unlearning` (under a distributed
strategy on every rank, each pass split over the ranks: :mod:`lightning_influence.data.distributed`;
rank 0's result is then broadcast so every rank ends identical), logs the report to every logger and
keeps it in its checkpoint state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_influence.callbacks.checkpoints import load_best_weights, refresh_checkpoints
from lightning_influence.callbacks.loggers import log_report
from lightning_influence.callbacks.progress import trainer_progress
from lightning_influence.data._modules import compute_dtype, eval_mode, model_device
from lightning_influence.data.batches import Batch
from lightning_influence.data.distributed import Shards, sharded
from lightning_influence.data.loaders import data_pass, first_loader
from lightning_influence.data.model_task import ModelTask
from lightning_influence.sample.capture import CaptureCallback, CaptureResult
from lightning_influence.unlearn.forget import ForgetSpec, forget_spec_from_arguments
from lightning_influence.unlearn.pipeline import run_unlearning
from lightning_influence.unlearn.preflight import preflight
from lightning_influence.unlearn.report import UnlearnReport
from lightning_influence.unlearn.settings import (
    GridArguments,
    HessianArguments,
    ResponseArguments,
    SelectionArguments,
    SolveArguments,
    StepArguments,
    UnlearnSettings,
)
from lightning_influence.unlearn.step import restore_weights, weights_snapshot

__all__ = ["UnlearnCallback", "UnlearnReport"]


class UnlearnCallback(pl.Callback):
    """Unlearn after ``trainer.fit`` (``on_fit_end``) or on demand (:meth:`unlearn`).

    Give exactly one forget task:

    - ``forget_classes``: remove every training sample of these classes;
    - ``forget_ids``: remove these training samples, as if never trained on (their loss is
      raised to the level of held-out data while validation accuracy is kept);
    - ``relabel``: ``{sample id: new label}``: replace (x, y_old) by (x, y_new);
    - ``backdoor_trigger`` + ``backdoor_target`` + ``forget_ids`` (the poisoned samples, stored
      triggered and labelled with the target), optionally ``backdoor_true_labels``.

    Sample ids come from the batches (``(x, y, idx)``, dicts; see
    :class:`~lightning_influence.IndexedDataset`), else the position in a non-shuffled pass
    over the training dataset. The validation data chooses the step and is measured before
    and after; it is never the test set.

    Args:
        forget_classes: class labels to forget.
        forget_ids: training sample ids to forget (with ``backdoor_trigger``: the poisoned ones).
        relabel: ``{sample id: corrected label}``.
        backdoor_trigger: callable adding the trigger to a batch of inputs (same shape back).
        backdoor_target: the label the trigger forces.
        backdoor_true_labels: true labels of the poisoned samples, where known: a dict
            ``{sample id: label}`` or one label per ``forget_ids`` entry.
        backdoor_repair_rows: retained training samples (not of the target class) that the
            repair adds triggered with their own labels, so the corrected set says that the
            trigger means nothing (None: as many as poisoned ids; 0: none).
        hessian: the Hessian subset (sampler, budget, candidate pool size, feature module).
        selection: which parameters move (method, ratio; a ratio list is a validation grid).
        solve: estimator, solver, damping (a list is a validation grid), tol, max_iter.
        step: the step search (radii, refinement, forget target, largest retained drop).
        grid: how grid candidates are ranked and when the grid stops early.
        response: response descent after the influence rounds (steps, learning rate).
        seed: seed of the sampler, the candidate pool and tie-breaks.
        batch_size: batch size of the capture and the solve (scoring runs in chunks of at least
            1024 rows).
        progress_bar: show progress bars (only where the Trainer shows one; drawn with
            Rich under a ``RichProgressBar``, else with tqdm).
        loss_fn: ``loss_fn(logits, targets)``, mean-reduced (default: cross-entropy).
        logits_fn: ``logits_fn(output) -> logits`` for models whose forward returns
            something else than logits, a dict/object with ``logits`` or a tuple whose first
            tensor is the logits (those three are found without it).
        batch_parser: turns a loader's batch into a :class:`~lightning_influence.Batch`
            (default: :func:`~lightning_influence.parse_batch`).
        model_task: the three above as one :class:`~lightning_influence.ModelTask` (give
            either it or the loose keywords).
        weights: which weights ``on_fit_end`` unlearns: ``'last'`` (the model as ``fit``
            leaves it) or ``'best'`` (the best checkpoint of the first ``ModelCheckpoint``
            that monitors a metric, loaded into the model first; ``best_model_score`` is then
            the unlearned model's score before unlearning).
    """

    def __init__(
        self,
        forget_classes: list[int] | None = None,
        forget_ids: list[int] | None = None,
        relabel: dict[int, int] | None = None,
        backdoor_trigger: Callable[[Tensor], Tensor] | None = None,
        backdoor_target: int | None = None,
        backdoor_true_labels: dict[int, int] | list[int] | None = None,
        backdoor_repair_rows: int | None = None,
        hessian: HessianArguments | None = None,
        selection: SelectionArguments | None = None,
        solve: SolveArguments | None = None,
        step: StepArguments | None = None,
        grid: GridArguments | None = None,
        response: ResponseArguments | None = None,
        seed: int = 0,
        batch_size: int = 256,
        progress_bar: bool = True,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        logits_fn: Callable[[Any], Tensor] | None = None,
        batch_parser: Callable[[Any], Batch] | None = None,
        weights: Literal["last", "best"] = "last",
        model_task: ModelTask | None = None,
    ) -> None:
        super().__init__()
        if weights not in ("last", "best"):
            raise ValueError(
                f"weights must be 'last' (the weights at the end of fit) or 'best' (the "
                f"monitored best checkpoint's), got {weights!r}."
            )
        self.weights = weights
        self.spec: ForgetSpec = forget_spec_from_arguments(
            forget_classes,
            forget_ids,
            relabel,
            backdoor_trigger,
            backdoor_target,
            backdoor_true_labels,
            backdoor_repair_rows,
        )
        self.settings = UnlearnSettings(
            hessian=_group(hessian, HessianArguments, "hessian"),
            selection=_group(selection, SelectionArguments, "selection"),
            solve=_group(solve, SolveArguments, "solve"),
            step=_group(step, StepArguments, "step"),
            grid=_group(grid, GridArguments, "grid"),
            response=_group(response, ResponseArguments, "response"),
            seed=seed,
            batch_size=batch_size,
        )
        self.progress_bar = bool(progress_bar)
        self.model_task = ModelTask.of(
            model_task, loss_fn=loss_fn, batch_parser=batch_parser, logits_fn=logits_fn
        )
        self.report: UnlearnReport | None = None
        #: ``trainer.global_step`` when ``on_fit_end`` last unlearned (kept in checkpoints)
        self.unlearned_step: int | None = None
        # whether this fit restored the state above from a checkpoint (only then may an equal
        # step mean "already unlearned"; a reused callback on a new fit must unlearn again)
        self._state_restored = False

    @property
    def task(self) -> str:
        """``class``, ``samples``, ``relabel`` or ``backdoor``."""
        return self.spec.task

    @property
    def loss_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The model task's loss."""
        return self.model_task.loss_fn

    @property
    def logits_fn(self) -> Callable[[Any], Tensor] | None:
        """The model task's ``logits_fn`` (None: the logits are found in the output)."""
        return self.model_task.logits_fn

    @property
    def batch_parser(self) -> Callable[[Any], Batch]:
        """The model task's batch parser."""
        return self.model_task.batch_parser

    @property
    def state_key(self) -> str:
        return self._generate_state_key(task=self.spec.task, forget=_spec_digest(self.spec))

    # ------------------------------------------------------------------ hooks

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._state_restored:  # a new fit (maybe with a reused callback): start clean
            self.report, self.unlearned_step = None, None
        missing = None if trainer.fast_dev_run else _missing_validation(trainer)
        if missing:
            raise ValueError(
                f"UnlearnCallback needs validation data (the step is chosen on it, never on test "
                f"data): {missing}. Checked before training so that the fit is not wasted."
            )
        if _plain_module(trainer):  # one training sample through the model (also fast_dev_run)
            train = first_loader(_source_loaders(_train_source(trainer)))
            val = first_loader(_source_loaders(_val_source(trainer)))
            preflight(pl_module, train, self.spec, self.model_task, val)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted:
            rank_zero_warn("UnlearnCallback: fit was interrupted; not unlearning.")
            return
        if trainer.fast_dev_run:
            rank_zero_warn("UnlearnCallback: fast_dev_run is a smoke test; not unlearning.")
            return
        restored, self._state_restored = self._state_restored, False
        if restored and self.unlearned_step == trainer.global_step:
            rank_zero_info(
                "UnlearnCallback: this model was already unlearned at this step (resumed from "
                "a checkpoint written after unlearning); not unlearning again."
            )
            return
        source = "last"
        if self.weights == "best":
            best = load_best_weights(trainer, pl_module)
            if best is None:
                rank_zero_warn(
                    "UnlearnCallback(weights='best'): no ModelCheckpoint monitors a metric, so "
                    "there is no best checkpoint; unlearning the last weights."
                )
            source = best or "last"
        self.unlearn(trainer, pl_module)
        self.unlearned_step = trainer.global_step
        if self.report is not None:
            self.report.source = source
        if self.report is None or not self.report.applied:
            return  # the weights are those the fit's checkpoints hold
        written, stale = refresh_checkpoints(trainer)
        if written and stale:
            rank_zero_warn(
                f"UnlearnCallback: {', '.join(written)} now hold the unlearned model (ckpt_path="
                f"'best'/'last' load it); these checkpoints of the fit still hold the model "
                f"from before unlearning: {', '.join(stale)}. Delete them if the forgotten data "
                "must not persist."
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "report": None if self.report is None else self.report.as_dict(),
            "unlearned_step": self.unlearned_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rep = state_dict.get("report")
        self.report = None if rep is None else UnlearnReport.from_dict(rep)
        self.unlearned_step = state_dict.get("unlearned_step")
        self._state_restored = True

    # ------------------------------------------------------------------ entry points

    def unlearn(
        self,
        trainer: pl.Trainer,
        model: pl.LightningModule | nn.Module,
        train_dataloader: Iterable[Any] | None = None,
        val_dataloader: Iterable[Any] | None = None,
    ) -> UnlearnReport:
        """Unlearn ``model`` with the trainer's (or the given) data and log to its loggers.

        Args:
            trainer: the Trainer (its strategy, loggers and last ``fit`` loaders are used).
            model: the model to change in place.
            train_dataloader: training data (default: the last fit's, else the datamodule's).
            val_dataloader: validation data (default: the last fit's, else the datamodule's).
        """
        train, val = _fit_loaders(trainer, train_dataloader, val_dataloader)
        show = self.progress_bar and trainer.progress_bar_callback is not None
        capture = _fresh_capture(trainer)
        device = trainer.strategy.root_device
        with trainer_progress(trainer.progress_bar_callback):  # Rich under a RichProgressBar
            if trainer.world_size > 1:
                self._unlearn_sharded(trainer, model, train, val, show, device, capture)
            else:
                self.unlearn_model(
                    model, train, val, progress_bar=show, device=device, capture=capture
                )
        assert self.report is not None
        log_report(trainer, self.report, self.settings)
        return self.report

    def unlearn_model(
        self,
        model: nn.Module,
        train_dataloader: Iterable[Any] | None,
        val_dataloader: Iterable[Any] | None,
        progress_bar: bool | None = None,
        device: torch.device | str | None = None,
        capture: CaptureResult | None = None,
    ) -> UnlearnReport:
        """Unlearn without a trainer (single process); returns and stores the report.

        Args:
            model: the model to change in place.
            train_dataloader: the training data.
            val_dataloader: validation data (chooses the step; never the test set).
            progress_bar: show progress bars (default: the callback's setting).
            device: where to run (default: the model's device).
            capture: logits/features of the training samples at the current weights.

        A model in half precision (``bf16-true``, ``16-true``) or mixing float32 and float64 is
        unlearned in one dtype (float32, resp. float64; floating inputs are cast to it), and
        each parameter is rounded back to its own dtype afterwards.
        """
        _require_loaders(train_dataloader, val_dataloader)
        home = model_device(model)
        dev = torch.device(device) if device is not None else home
        snapshot = weights_snapshot(model)
        try:
            with eval_mode(model), compute_dtype(model) as dtype:
                model.to(dev)
                self.report = run_unlearning(
                    model,
                    data_pass(train_dataloader),
                    data_pass(val_dataloader),
                    self.spec,
                    self.settings,
                    model_task=self.model_task.inputs_as(dtype),
                    device=dev,
                    capture=capture,
                    show_progress=self.progress_bar if progress_bar is None else progress_bar,
                )
        except BaseException:
            model.to(home)
            restore_weights(model, snapshot)
            raise
        model.to(home)
        if not self.report.applied:
            rank_zero_warn(f"UnlearnCallback: the model is unchanged: {self.report.reason}.")
        elif self.report.complete is False:
            rank_zero_warn(
                f"UnlearnCallback: forgetting is incomplete: the validation forget score is "
                f"{self.report.forget_score:.3g}, above the target {self.report.forget_target:g} "
                f"({self.report.reason}). A larger step.max_radius, step.max_retain_drop or "
                "selection.ratio may forget further."
            )
        return self.report

    def _unlearn_sharded(
        self,
        trainer: pl.Trainer,
        model: nn.Module,
        train: Any,
        val: Any,
        show: bool,
        device: torch.device,
        capture: CaptureResult | None,
    ) -> None:
        """Every rank runs the pipeline on its share of each pass (module ``distributed``).

        The ranks take the same decisions on the same summed numbers; rank 0's changed
        parameters and report are then broadcast so that every rank ends bit-identical. A
        failure on any rank restores the weights on every rank and raises on every rank.
        """
        shards = Shards.from_strategy(trainer.strategy)
        before = weights_snapshot(model)
        failure: BaseException | None = None
        try:
            with sharded(shards):
                self.unlearn_model(
                    model, train, val, show and trainer.is_global_zero, device, capture
                )
        except BaseException as err:  # every rank must learn about it (interrupts too)
            failure = err
        if shards.any(failure is not None, device):
            restore_weights(model, before)
            if failure is not None:
                raise failure
            raise RuntimeError("UnlearnCallback failed on another rank; the weights are restored.")
        payload: Any = None
        if trainer.is_global_zero:
            changed = {
                k: p.detach().cpu().clone()
                for k, p in model.named_parameters()
                if not torch.equal(p.detach(), before[k])
            }
            payload = (changed, self.report.as_dict() if self.report else None)
        changed, report = trainer.strategy.broadcast(payload, src=0)
        if not trainer.is_global_zero:
            restore_weights(model, before)
            named = dict(model.named_parameters())
            with torch.no_grad():
                for k, v in changed.items():
                    named[k].copy_(v.to(named[k].device))
            self.report = UnlearnReport.from_dict(report)
        trainer.strategy.barrier("unlearn")


# ---------------------------------------------------------------------- glue helpers


def _group(value: Any, cls: type, name: str) -> Any:
    """A settings group: the default, the given dataclass, or a dict of its fields."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**value)
    raise ValueError(
        f"{name} must be a {cls.__name__} (or a dict of its fields), got {type(value).__name__}."
    )


def _spec_digest(spec: ForgetSpec) -> str:
    """A short, run-stable description of what is forgotten (for the state key)."""
    what = (
        getattr(spec, "classes", None)
        or getattr(spec, "ids", None)
        or getattr(spec, "new_labels", {})
    )
    text = repr(sorted(what.items()) if isinstance(what, Mapping) else what)
    return text if len(text) <= 40 else hashlib.sha1(text.encode()).hexdigest()[:12]


def _fit_loaders(trainer: pl.Trainer, train: Any, val: Any) -> tuple[Any, Any]:
    """The given loaders, else the last fit's, else its data sources', else the datamodule's.

    The fit's sources matter where a loop never ran (``max_epochs=0``, validation less often
    than the epochs, resuming with nothing left to train): Lightning then holds no loader.
    """
    train = train if train is not None else first_loader(trainer.train_dataloader)
    val = val if val is not None else first_loader(trainer.val_dataloaders)
    if train is None:
        train = first_loader(_source_loaders(_train_source(trainer)))
    if val is None:
        val = first_loader(_source_loaders(_val_source(trainer)))
    dm = getattr(trainer, "datamodule", None)
    if train is None and dm is not None:
        train = dm.train_dataloader()
    if val is None and dm is not None:
        val = first_loader(dm.val_dataloader())
    return train, val


def _require_loaders(train: Any, val: Any) -> None:
    if train is None:
        raise ValueError(
            "UnlearnCallback has no training data: fit with a train loader or pass one to unlearn()."
        )
    if val is None:
        raise ValueError(
            "UnlearnCallback needs validation data (the step is chosen on it, never on test "
            "data): pass val_dataloaders to fit, a datamodule with val_dataloader(), or val_dataloader=."
        )


def _plain_module(trainer: pl.Trainer) -> bool:
    """Whether the LightningModule holds its full parameters (one device or DDP), so that it
    can run a forward by itself; sharded strategies (FSDP, DeepSpeed) are not pre-checked."""
    return isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy))


# The one private Lightning state read here: the loaders given to ``fit`` before its loops
# set them up. Lightning has no public accessor for them, and the loops' public
# ``setup_data`` would also wrap them for the strategy (a DistributedSampler under DDP),
# which the unlearning pass must not inherit. Both readers return None on another layout,
# and the callers then fall back to the datamodule or to an error naming the fix.
def _train_source(trainer: pl.Trainer) -> Any:
    return getattr(getattr(trainer, "fit_loop", None), "_data_source", None)


def _val_source(trainer: pl.Trainer) -> Any:
    loop = getattr(
        getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "val_loop", None
    )
    return getattr(loop, "_data_source", None)


def _source_loaders(source: Any) -> Any:
    """The loaders a fit's data source gives (its hook is called if it is a module), or None."""
    try:
        if source is None or source.instance is None or not source.is_defined():
            return None
        return source.dataloader()
    except AttributeError:  # another Lightning layout
        return None


def _missing_validation(trainer: pl.Trainer) -> str | None:
    """Why the fit has no validation data for unlearning, or None when it has some."""
    if trainer.limit_val_batches == 0:
        return "limit_val_batches=0 turns validation off; keep some validation batches"
    source = _val_source(trainer)
    if source is None:  # another Lightning layout: do not block the fit
        return None
    if source.instance is None or not source.is_defined():
        return (
            "pass val_dataloaders to fit, or a datamodule (or LightningModule) with "
            "val_dataloader()"
        )
    if not source.is_module() and first_loader(source.instance) is None:
        return f"val_dataloaders is empty ({source.instance!r}); pass at least one loader"
    return None


def _fresh_capture(trainer: pl.Trainer) -> CaptureResult | None:
    """A CaptureCallback's result recorded at the current weights (no training step since)."""
    for cb in trainer.callbacks:
        if isinstance(cb, CaptureCallback) and cb.result is not None:
            if cb.captured_step == trainer.global_step:
                return cb.result
    return None
