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
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["UNLEARNED_CHECKPOINT", "refresh_checkpoints"]

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
        cb.best_model_path = path  # before saving: the checkpoint records where "best" is
        trainer.save_checkpoint(path)
        written.append(path)
        if cb.last_model_path:
            if os.path.islink(cb.last_model_path) and trainer.is_global_zero:
                os.remove(cb.last_model_path)  # save_last="link": keep the linked file as it was
            trainer.strategy.barrier("unlearn-last-link")
            trainer.save_checkpoint(cb.last_model_path)
            written.append(cb.last_model_path)
    return written, sorted(stale - set(written))
