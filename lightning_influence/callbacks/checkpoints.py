"""Checkpoints after unlearning: what Lightning loads next must hold the unlearned model.

``ModelCheckpoint`` saves during ``fit``, before ``on_fit_end`` where unlearning runs, so
every checkpoint it wrote holds the model from *before* unlearning. ``trainer.test()``,
``validate()`` and ``predict()`` after ``fit`` load the best checkpoint by default, which would
silently bring the forgotten data back. :func:`refresh_checkpoints` therefore, for every
``ModelCheckpoint`` of the trainer:

- writes ``unlearned.ckpt`` (the full trainer checkpoint after unlearning, with the
  callback's report) in the checkpoint folder and points ``best_model_path`` at it, so
  ``ckpt_path="best"`` (the default after ``fit``) loads the unlearned model;
- rewrites ``last_model_path`` (``last.ckpt``) with the same state, since the unlearned model
  *is* the last state of the run, so ``ckpt_path="last"`` loads it too (with
  ``save_last="link"`` the link is replaced by a file; the file it pointed to is left as is).

The other files the fit wrote (top-k checkpoints) are left in place, as they were; they
still hold the model before unlearning, which :func:`refresh_checkpoints` returns so that the
caller can warn (delete them where the forgotten data must not persist).

A file that cannot be written (a read-only folder, a full disk) raises
:class:`CheckpointWriteError` naming the folder; ``best_model_path`` then keeps pointing at
a file that exists.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = [
    "UNLEARNED_CHECKPOINT",
    "CheckpointWriteError",
    "best_checkpoint",
    "load_best_weights",
    "refresh_checkpoints",
]

#: File name of the checkpoint written after unlearning, beside the fit's checkpoints.
UNLEARNED_CHECKPOINT = "unlearned.ckpt"


def refresh_checkpoints(trainer: pl.Trainer) -> tuple[list[str], list[str]]:
    """Point every ``ModelCheckpoint`` at the unlearned model (see the module doc).

    Must run on every rank (``trainer.save_checkpoint`` is collective).

    Args:
        trainer: the trainer whose model was just unlearned.

    Returns:
        ``(written, stale)``: the checkpoint files now holding the unlearned model, and the
        files of the fit that still hold the model from before unlearning.
    """
    written: list[str] = []
    stale: set[str] = set()
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint) or cb.dirpath is None:
            continue
        stale |= {p for p in (cb.best_model_path, *cb.best_k_models) if p}
        path = os.path.join(str(cb.dirpath), UNLEARNED_CHECKPOINT)
        best = cb.best_model_path
        cb.best_model_path = path  # before saving: the checkpoint records where "best" is
        try:
            _save(trainer, path)
        except CheckpointWriteError:
            cb.best_model_path = best  # "best" keeps loading a file that exists
            raise
        written.append(path)
        if cb.last_model_path:
            if os.path.islink(cb.last_model_path) and trainer.is_global_zero:
                os.remove(cb.last_model_path)  # save_last="link": keep the linked file as it was
            trainer.strategy.barrier("unlearn-last-link")
            _save(trainer, cb.last_model_path)
            written.append(cb.last_model_path)
    return written, sorted(stale - set(written))


class CheckpointWriteError(OSError):
    """A checkpoint after unlearning could not be written (the model in memory is unlearned)."""


def _save(trainer: pl.Trainer, path: str) -> None:
    """``trainer.save_checkpoint(path)``, checked: the file must be (re)written afterwards.

    Lightning's atomic save swallows a ``PermissionError`` (a read-only folder), so the file
    is checked after the write; any failure (also a full disk) raises on every rank.
    """
    fs = get_filesystem(path)
    before = _stamp(fs, path) if trainer.is_global_zero else None
    error: str | None = None
    try:
        trainer.save_checkpoint(path)
    except OSError as err:  # raised on rank 0 by the write, before the save's own barrier
        error = f"{type(err).__name__}: {err}"
        trainer.strategy.barrier("Trainer.save_checkpoint")  # the one the other ranks wait at
    if error is None and trainer.is_global_zero:
        after = _stamp(fs, path)
        if after is None or after == before:
            error = "the file was not written (is the folder writable?)"
    error = trainer.strategy.broadcast(error, src=0)
    if error is not None:
        raise CheckpointWriteError(
            f"UnlearnCallback: the model in memory is unlearned, but writing {path} failed "
            f"({error}). The checkpoint folder {os.path.dirname(path)} must be writable with "
            "space left; until then ckpt_path='best'/'last' would load the model from before "
            "unlearning. Fix the folder, then call trainer.save_checkpoint(...)."
        )


def _stamp(fs: Any, path: str) -> tuple[Any, ...] | None:
    """What changes when a file is rewritten (None: no file)."""
    try:
        info = fs.info(path)
    except (FileNotFoundError, OSError):
        return None
    return tuple(info.get(k) for k in ("ino", "mtime", "size", "created", "LastModified"))


def best_checkpoint(trainer: pl.Trainer) -> ModelCheckpoint | None:
    """The first ``ModelCheckpoint`` that monitors a metric and has written a best file."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor is not None and cb.best_model_path:
            return cb
    return None


def load_best_weights(trainer: pl.Trainer, model: pl.LightningModule) -> str | None:
    """Load the monitored best checkpoint's weights into ``model``; returns its path.

    Returns None (and changes nothing) when no ``ModelCheckpoint`` monitors a metric.
    Every rank loads the file (it must be visible to all of them, as for ``ckpt_path="best"``).
    """
    cb = best_checkpoint(trainer)
    if cb is None:
        return None
    checkpoint = trainer.strategy.load_checkpoint(cb.best_model_path)
    model.load_state_dict(checkpoint["state_dict"])
    return cb.best_model_path
