"""``InfluenceCallback``: after validation, the training samples behind the worst errors.

For the validation samples with the highest loss among the misclassified ones (the highest
loss overall when there are too few errors), :func:`~lightning_influence.influence_scores`
ranks every training sample; the top-k proponents (highest scores: upweighting them would
lower the query's loss) and opponents (lowest scores: upweighting them would raise it; for a
misclassified query, often the mislabelled or look-alike samples behind the error) are kept
in :class:`Explanation` and logged to the Trainer's loggers: scalars to all, the table as a CSV file under a logger's ``log_dir``,
markdown text and image grids to TensorBoard, ``log_table`` / ``log_image`` where a logger
has them (W&B). The hook is thin; the work is :func:`explain`.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_influence.attribution.figures import log_gallery
from lightning_influence.attribution.scores import ScoreArguments, chunks, influence_scores
from lightning_influence.data._modules import eval_mode, model_device
from lightning_influence.data.batches import Batch, BatchParser
from lightning_influence.data.forward import (
    call_model,
    inputs_cat,
    inputs_take,
    inputs_to,
    logits_of,
)
from lightning_influence.data.loaders import first_loader
from lightning_influence.data.model_task import ModelTask
from lightning_influence.solve.curvature import LossFn, per_sample_loss
from lightning_influence.unlearn.settings import _check_positive_int

__all__ = ["Explanation", "InfluenceCallback", "explain"]


@dataclass
class Explanation:
    """The top-k proponents and opponents of some validation queries.

    Args:
        query_ids: ``[q]`` validation ids (the batches' ids, else dataset index / position).
        query_labels: ``[q]`` their labels.
        query_predictions: ``[q]`` the model's predictions.
        query_losses: ``[q]`` their losses.
        proponent_ids: ``[q, k]`` training ids, highest score first.
        proponent_scores: ``[q, k]`` their influence scores.
        opponent_ids: ``[q, k]`` training ids, lowest score first.
        opponent_scores: ``[q, k]``.
        train_labels: ``{training id: label}`` of the listed training samples.
        seconds: the wall-clock time.
    """

    query_ids: Tensor
    query_labels: Tensor
    query_predictions: Tensor
    query_losses: Tensor
    proponent_ids: Tensor
    proponent_scores: Tensor
    opponent_ids: Tensor
    opponent_scores: Tensor
    train_labels: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    def rows(self) -> list[dict[str, Any]]:
        """One row per (query, kind, rank): the table the loggers get."""
        out = []
        for i in range(len(self.query_ids)):
            for kind, ids, scores in (
                ("proponent", self.proponent_ids, self.proponent_scores),
                ("opponent", self.opponent_ids, self.opponent_scores),
            ):
                for r in range(ids.shape[1]):
                    tid = int(ids[i, r])
                    out.append(
                        {
                            "query_id": int(self.query_ids[i]),
                            "query_label": int(self.query_labels[i]),
                            "query_prediction": int(self.query_predictions[i]),
                            "query_loss": float(self.query_losses[i]),
                            "kind": kind,
                            "rank": r,
                            "train_id": tid,
                            "train_label": self.train_labels.get(tid, -1),
                            "score": float(scores[i, r]),
                        }
                    )
        return out


def worst_errors(
    model: nn.Module, val_data: Any, num_queries: int, loss_fn: LossFn, batch_size: int
) -> tuple[Batch, Tensor, Tensor]:
    """The ``num_queries`` validation samples to explain, their predictions and losses.

    Misclassified samples by decreasing loss first, then the highest-loss correct ones.
    """
    xs, ys, ids, preds, losses = [], [], [], [], []
    with torch.no_grad(), eval_mode(model):
        device = model_device(model)
        for b, bid in chunks(val_data, "val_data", batch_size):
            out = logits_of(call_model(model, inputs_to(b.x, device)))
            losses.append(per_sample_loss(loss_fn, out, b.y.to(device)).float().cpu())
            preds.append(out.argmax(-1).cpu())
            xs.append(b.x)
            ys.append(b.y)
            ids.append(bid)
    y, pred, loss = torch.cat(ys), torch.cat(preds), torch.cat(losses)
    key = loss + (pred != y).float() * (loss.max() + 1)  # errors first, by loss
    pick = torch.argsort(key, descending=True, stable=True)[:num_queries]
    batch = Batch(inputs_take(inputs_cat(xs), pick), y[pick], torch.cat(ids)[pick])
    return batch, pred[pick], loss[pick]


def explain(
    model: nn.Module,
    train_data: Any,
    val_data: Any,
    *,
    top_k: int = 5,
    num_queries: int = 8,
    loss_fn: LossFn | None = None,
    scores: ScoreArguments | None = None,
    model_task: ModelTask | None = None,
) -> tuple[Explanation, Batch, dict[int, Any]]:
    """Explain the worst validation errors by their top-k proponents and opponents.

    Args:
        model: the model (weights never written).
        train_data: the training data (any form ``li.influence_scores`` takes).
        val_data: the validation data.
        top_k: proponents and opponents per query.
        num_queries: how many validation samples to explain.
        loss_fn: a mean-reducing loss (``None``: cross-entropy).
        scores: how the scores are computed.
        model_task: loss, batch parser and ``logits_fn`` as one
            :class:`~lightning_influence.ModelTask` (give either it or ``loss_fn``).

    Returns:
        The :class:`Explanation`, the query batch and ``{training id: input}`` of the listed
        training samples (for images).
    """
    start = time.perf_counter()
    task = ModelTask.of(model_task, loss_fn=loss_fn)
    model, (train_data, val_data) = task.read(model, train_data, val_data)
    loss_fn = task.loss_fn
    args = scores or ScoreArguments()
    queries, pred, loss = worst_errors(model, val_data, num_queries, loss_fn, args.batch_size)
    s, train_ids = influence_scores(
        model, train_data, queries, loss_fn=loss_fn, return_ids=True, **asdict(args)
    )
    k = min(top_k, s.shape[1])
    top = torch.topk(s, k, dim=1)
    bottom = torch.topk(-s, k, dim=1)
    listed = set(train_ids[top.indices].reshape(-1).tolist())
    listed |= set(train_ids[bottom.indices].reshape(-1).tolist())
    inputs, labels = _train_rows(train_data, listed, args.batch_size)
    exp = Explanation(
        query_ids=queries.ids,
        query_labels=queries.y,
        query_predictions=pred,
        query_losses=loss,
        proponent_ids=train_ids[top.indices],
        proponent_scores=top.values,
        opponent_ids=train_ids[bottom.indices],
        opponent_scores=-bottom.values,
        train_labels=labels,
        seconds=time.perf_counter() - start,
    )
    return exp, queries, inputs


def _train_rows(train_data: Any, ids: set[int], size: int) -> tuple[dict[int, Any], dict]:
    """Inputs and labels of the training samples ``ids`` (one more pass)."""
    inputs, labels = {}, {}
    for b, bid in chunks(train_data, "train_data", size):
        for j, i in enumerate(bid.tolist()):
            if i in ids:
                inputs[i] = inputs_take(b.x, j)
                labels[i] = int(b.y[j])
    return inputs, labels


class InfluenceCallback(pl.Callback):
    """Log the training samples behind the worst validation errors, after validation.

    Every ``every_n_epochs`` validation epochs (never in the sanity check), or on demand with
    :meth:`explain_now`, the ``num_queries`` worst validation samples get their ``top_k``
    proponents and opponents among the training samples (:func:`explain`). Rank zero logs:

    - scalars ``influence/top_proponent_score``, ``influence/top_opponent_score`` (means
      over the queries) and ``influence/seconds`` to every logger;
    - the table (query id, label, prediction, loss, kind, rank, training id, label, score)
      as ``influence/epoch=<e>.csv`` under the logger's ``log_dir`` (CSVLogger,
      TensorBoardLogger), as ``log_table`` (W&B) or markdown ``add_text`` (TensorBoard);
    - for image inputs ``[C, H, W]``, one grid per query (the query, then its proponents,
      then its opponents) with ``add_image`` (TensorBoard) or ``log_image`` (W&B).

    Args:
        top_k: proponents and opponents per query.
        num_queries: validation samples to explain.
        every_n_epochs: explain after every n-th validation epoch (0: only on demand).
        scores: :class:`~lightning_influence.attribution.scores.ScoreArguments`, a dict of its fields, or
            ``None`` for the defaults.
        loss_fn: a mean-reducing loss (``None``: cross-entropy).
        batch_parser: reads the loaders' batches (default: ``li.parse_batch``).
        log_images: log the image grids where the inputs are images.
        model_task: loss, batch parser and ``logits_fn`` as one
            :class:`~lightning_influence.ModelTask` (give either it or the loose keywords;
            with a ``logits_fn`` the scored model is wrapped, so named layers take the
            prefix ``model.``).

    Attributes:
        explanation: the latest :class:`Explanation` (``None`` before the first).
    """

    def __init__(
        self,
        top_k: int = 5,
        num_queries: int = 8,
        every_n_epochs: int = 1,
        scores: ScoreArguments | dict | None = None,
        loss_fn: LossFn | None = None,
        batch_parser: BatchParser | None = None,
        log_images: bool = True,
        model_task: ModelTask | None = None,
    ) -> None:
        _check_positive_int(top_k, "InfluenceCallback top_k")
        _check_positive_int(num_queries, "InfluenceCallback num_queries")
        if (
            isinstance(every_n_epochs, bool)
            or not isinstance(every_n_epochs, int)
            or every_n_epochs < 0
        ):
            raise ValueError(
                f"InfluenceCallback every_n_epochs must be an integer >= 0 (0: never), got "
                f"{every_n_epochs!r}."
            )
        if scores is not None and not isinstance(scores, (ScoreArguments, dict)):
            raise ValueError(
                f"InfluenceCallback scores must be a ScoreArguments or a dict of its fields "
                f"(e.g. {{'curvature': 'ekfac'}}), got {scores!r}."
            )
        self.model_task = ModelTask.of(model_task, loss_fn=loss_fn, batch_parser=batch_parser)
        self.top_k, self.num_queries, self.every_n_epochs = top_k, num_queries, every_n_epochs
        self.scores = ScoreArguments(**scores) if isinstance(scores, dict) else scores
        self.log_images = bool(log_images)
        self.explanation: Explanation | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n_epochs:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if trainer.is_global_zero:
            self.explain_now(trainer, pl_module)

    def explain_now(
        self,
        trainer: pl.Trainer,
        model: nn.Module,
        train_dataloader: Any = None,
        val_dataloader: Any = None,
    ) -> Explanation:
        """Explain now (default loaders: the trainer's) and log; returns the explanation."""
        train = train_dataloader or first_loader(trainer.train_dataloader)
        val = val_dataloader or first_loader(trainer.val_dataloaders)
        if train is None or val is None:
            raise ValueError(
                "InfluenceCallback needs training and validation loaders: pass them to "
                "explain_now(trainer, model, train_dataloader, val_dataloader)."
            )
        exp, queries, inputs = explain(
            model,
            train,
            val,
            top_k=self.top_k,
            num_queries=self.num_queries,
            scores=self.scores,
            model_task=self.model_task,
        )
        self.explanation = exp
        for logger in trainer.loggers:
            _guarded(
                logger,
                lambda lg: log_explanation(lg, exp, trainer.current_epoch, trainer.global_step),
            )
            if self.log_images:
                _guarded(
                    logger, lambda lg: log_grids(lg, exp, queries, inputs, trainer.global_step)
                )
        return exp


def _guarded(logger: Any, log: Callable[[Any], None]) -> None:
    try:
        log(logger)
    except Exception as err:  # a logger must not stop training
        rank_zero_warn(
            f"InfluenceCallback: {type(logger).__name__} failed to log ({type(err).__name__}: "
            f"{err}); callback.explanation holds every value."
        )


def log_explanation(logger: Any, exp: Explanation, epoch: int, step: int) -> None:
    """Scalars, then the table as a CSV file / ``log_table`` / markdown text."""
    logger.log_metrics(
        {
            "influence/top_proponent_score": float(exp.proponent_scores[:, 0].mean()),
            "influence/top_opponent_score": float(exp.opponent_scores[:, 0].mean()),
            "influence/seconds": exp.seconds,
        },
        step=step,
    )
    rows = exp.rows()
    log_dir = getattr(logger, "log_dir", None)
    if log_dir:
        path = Path(log_dir) / "influence" / f"epoch={epoch}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    log_table = getattr(logger, "log_table", None)
    if callable(log_table):
        log_table(
            key="influence/table", columns=list(rows[0]), data=[list(r.values()) for r in rows]
        )
    add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
    if callable(add_text):
        add_text("influence/table", _markdown(rows), global_step=step)
    logger.save()


def _markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values())
            + " |"
        )
    return "\n".join(lines)


def log_grids(
    logger: Any, exp: Explanation, queries: Batch, inputs: dict[int, Any], step: int
) -> None:
    """The captioned top-k gallery (query, proponents, opponents; labels and scores) as one
    image under ``influence/gallery``, where the inputs are images (module ``figures``)."""
    if _is_image(queries.x):
        log_gallery(logger, exp, queries, inputs, step)


def _is_image(x: Any) -> bool:
    return isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] in (1, 3)
