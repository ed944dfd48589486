"""``lightning-influence unlearn``: unlearn a saved checkpoint without training again.

The model and the data come by class path, as in LightningCLI; the ``unlearn`` group holds
the :class:`~lightning_influence.UnlearnCallback` arguments::

    lightning-influence unlearn --config unlearn.yaml

    # unlearn.yaml
    ckpt_path: runs/epoch=14.ckpt
    output: runs/unlearned
    model:
      class_path: lightning_influence.demos.models.ImageClassifier
      init_args: {num_classes: 10}
    data:
      class_path: lightning_influence.demos.models.DigitsDataModule
    unlearn:
      forget_classes: [3]

Every key can also be given on the command line (``--unlearn.forget_classes [3]``).
The command loads the checkpoint's weights into the model, unlearns on the data module's
training and validation loaders, and writes ``<output>/unlearned.ckpt`` (the input
checkpoint with the unlearned weights and the callback's state) and ``<output>/report.json``.

Exit status: 0 when a step was kept and forgetting is complete, 3 when the model is unchanged
or forgetting is incomplete (the files are written either way), 2 on an error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from lightning_influence.callbacks.unlearn import UnlearnCallback
from lightning_influence.unlearn.report import UnlearnReport

__all__ = ["EXIT_INCOMPLETE", "main", "parser", "unlearn_checkpoint"]

#: exit status when the model is unchanged or forgetting is incomplete
EXIT_INCOMPLETE = 3


def parser() -> ArgumentParser:
    """The command's arguments (``--config`` YAML or flags)."""
    p = ArgumentParser(prog="lightning-influence unlearn", description=__doc__.split("\n")[0])
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file of these arguments")
    p.add_argument("--ckpt_path", type=str, required=True, help="the checkpoint to unlearn")
    p.add_argument(
        "--output", type=str, required=True, help="folder for unlearned.ckpt and report.json"
    )
    p.add_argument("--accelerator", type=str, default="auto", help="the Trainer's accelerator")
    p.add_subclass_arguments(pl.LightningModule, "model", required=True)
    p.add_subclass_arguments(pl.LightningDataModule, "data", required=True)
    p.add_class_arguments(UnlearnCallback, "unlearn")
    return p


def unlearn_checkpoint(
    model: pl.LightningModule,
    data: pl.LightningDataModule,
    callback: UnlearnCallback,
    ckpt_path: str | Path,
    output: str | Path,
    accelerator: str = "auto",
) -> UnlearnReport:
    """Load ``ckpt_path`` into ``model``, unlearn, and write the checkpoint and the report.

    Args:
        model: the LightningModule the checkpoint was written from.
        data: the data module whose training and validation loaders are used.
        callback: what to forget and how.
        ckpt_path: the checkpoint to unlearn.
        output: folder for ``unlearned.ckpt`` and ``report.json`` (created).
        accelerator: the Trainer's accelerator (its device runs the unlearning).
    """
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if "state_dict" not in checkpoint:
        raise ValueError(f"{ckpt_path} is not a Lightning checkpoint (it has no 'state_dict').")
    model.load_state_dict(checkpoint["state_dict"])
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    data.setup("fit")
    model.to(trainer.strategy.root_device)
    report = callback.unlearn(trainer, model, data.train_dataloader(), data.val_dataloader())
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    checkpoint.setdefault("callbacks", {})[callback.state_key] = callback.state_dict()
    torch.save(checkpoint, out / "unlearned.ckpt")
    (out / "report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the command on ``argv``; returns the exit status (see the module doc)."""
    p = parser()
    cfg = p.parse_args(argv)
    init: Any = p.instantiate_classes(cfg)
    try:
        report = unlearn_checkpoint(
            init.model, init.data, init.unlearn, cfg.ckpt_path, cfg.output, cfg.accelerator
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"lightning-influence unlearn: error: {err}", file=sys.stderr)
        return 2
    done = report.applied and report.complete is not False
    print(
        f"lightning-influence unlearn: {'done' if done else 'INCOMPLETE'}: {report.reason}; "
        f"wrote {Path(cfg.output) / 'unlearned.ckpt'} and report.json"
    )
    return 0 if done else EXIT_INCOMPLETE
