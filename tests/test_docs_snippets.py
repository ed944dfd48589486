"""The README's Python snippets run as written, on digits loaders and a trained model."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_influence import IndexedDataset
from lightning_influence.demos.datasets import digits_splits
from lightning_influence.demos.models import ImageClassifier

README = Path(__file__).resolve().parents[1] / "README.md"
torch.set_num_threads(1)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the Trainer's default logger writes here
    train, val, _ = digits_splits(0)
    L.seed_everything(0, verbose=False)
    labels = train.tensors[1]
    namespace = {
        "model": ImageClassifier(),
        "train_loader": DataLoader(IndexedDataset(train), batch_size=256, shuffle=True),
        "val_loader": DataLoader(val, batch_size=256),
        "reviewed_label": lambda i: int(labels[i] + 1) % 10,  # the one name the text leaves open
    }
    blocks = python_blocks(README.read_text())
    assert len(blocks) == 3  # quick start, find then fix, the engine

    def run(block):
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (our own docs)

    run(blocks[0])
    assert namespace["unlearn"].report.applied
    run(blocks[1])
    assert namespace["scores"].shape == (8, len(train)) and len(namespace["corrected"]) == 20
    assert namespace["unlearn"].task == "relabel"
    run(blocks[2])
    assert namespace["report"].converged, "the engine snippet's solve must converge"
    assert set(namespace["delta"]) <= {n for n, _ in namespace["model"].named_parameters()}
