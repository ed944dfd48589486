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


DOCS = README.parent / "docs"


def _docs_namespace(tmp_path) -> dict:
    """The names the docs' snippets leave to the reader, on digits (epochs cut to 3)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from torch import nn

    import lightning_influence as li

    train, val, test = digits_splits(0)
    L.seed_everything(0, verbose=False)
    x, y = train.tensors
    small = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double()  # for the engine snippet
    batch = (x[:200].double(), y[:200])
    forget = (x[:5].double(), y[:5])
    return {
        "L": L,
        "li": li,
        "CSVLogger": lambda d: CSVLogger(tmp_path / d),
        "TensorBoardLogger": lambda d: TensorBoardLogger(tmp_path / d),
        "model": ImageClassifier(),
        "retrained": ImageClassifier(),
        "train_loader": DataLoader(IndexedDataset(train), batch_size=256, shuffle=True),
        "train_eval_loader": DataLoader(IndexedDataset(train), batch_size=256),
        "val_loader": DataLoader(val, batch_size=256),
        "forget_loader": DataLoader(torch.utils.data.Subset(train, range(20)), batch_size=64),
        "retain_loader": DataLoader(torch.utils.data.Subset(train, range(20, 500)), batch_size=256),
        "test_loader": DataLoader(test, batch_size=256),
        "x_query": x[:4],
        "y_query": y[:4],
        "engine": {
            "model": small,
            "loss_fn": nn.functional.cross_entropy,
            "hessian_data": batch,
            "forget_data": forget,
            "masks": None,
            "m": 5,
            "n": 200,
        },  # fmt: skip
    }


def _run_doc(path: Path, block: str, namespace: dict) -> None:
    block = block.replace("max_epochs=15", "max_epochs=3")  # the same calls, a shorter fit
    exec(compile(block, str(path), "exec"), namespace)  # noqa: S102 (our own docs)


def test_the_docs_snippets_run(tmp_path, monkeypatch):
    """Every ```python block of docs/ runs as written (training epochs cut to 3), in
    order per page, on digits; the names a page leaves open are given here."""
    monkeypatch.chdir(tmp_path)
    ns = _docs_namespace(tmp_path)
    guide = python_blocks((DOCS / "user_guide.md").read_text())
    assert len(guide) == 4  # quick start, settings, capture, faithfulness
    _run_doc(DOCS / "user_guide.md", guide[0], ns)
    assert ns["unlearn"].report.applied
    _run_doc(DOCS / "user_guide.md", guide[1], ns)  # builds a callback: the settings check
    ns["model"] = ImageClassifier()
    _run_doc(DOCS / "user_guide.md", guide[2], ns)  # asserts the capture was used
    _run_doc(DOCS / "user_guide.md", guide[3], ns)
    assert ns["ref"]["ua"] >= 0.0 and ns["avg_gap"](ns["m"], ns["m"]) == 0.0

    scores = python_blocks((DOCS / "scores.md").read_text())
    assert len(scores) == 2  # the scores, the callback
    _run_doc(DOCS / "scores.md", scores[0], ns)
    assert ns["scores"].shape[0] == 4 and len(ns["suspicious"]) == 50
    _run_doc(DOCS / "scores.md", scores[1], ns)
    assert ns["cb"].explanation.rows()

    engine = python_blocks((DOCS / "influence.md").read_text())
    assert len(engine) == 1
    space = {"li": ns["li"], **ns["engine"]}
    _run_doc(DOCS / "influence.md", engine[0], space)
    assert space["report"].converged  # the documented damping: the solve converges
