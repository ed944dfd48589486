"""CaptureCallback under Lightning's DDP strategy: 2 CPU processes (gloo).

The test runs this file as a script in a subprocess (Lightning's DDP launcher re-executes the
script for rank 1), so pytest's own process is never forked or re-launched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

N_VAL = 23  # odd: DistributedSampler pads rank 1 with a repeated sample
D_IN, HIDDEN, C = 5, 6, 3


def _val_data():
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(N_VAL, D_IN, generator=g), torch.randint(0, C, (N_VAL,), generator=g)
    )


def _model():
    from torch import nn

    return nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, C))


def _run(out_dir: str) -> None:
    """Fit one epoch with DDP on 2 CPU processes; every rank saves what it captured."""
    import lightning.pytorch as pl
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_influence.data.batches import IndexedDataset
    from lightning_influence.sample.capture import CaptureCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train = TensorDataset(
        torch.randn(16, D_IN, generator=g), torch.randint(0, C, (16,), generator=g)
    )
    cb = CaptureCallback()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[cb],
    )
    module = Module()
    trainer.fit(
        module,
        DataLoader(IndexedDataset(train), batch_size=4),
        DataLoader(IndexedDataset(_val_data()), batch_size=5),
    )
    rank = trainer.global_rank
    torch.save(
        {"result": cb.require_result().to_dict(), "model": module.net.state_dict()},
        Path(out_dir) / f"rank{rank}.pt",
    )


def test_ddp_gathers_the_union_without_duplicates(tmp_path: Path):
    env = dict(os.environ)
    env.pop("LOCAL_RANK", None)
    env["PYTHONWARNINGS"] = "ignore"
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    res = r0["result"]
    # Exactly the union of both ranks' shards, each id once (the padded repeat dropped).
    assert res["ids"].tolist() == list(range(N_VAL))
    assert res["logits"].shape == (N_VAL, C) and res["features"].shape == (N_VAL, HIDDEN)
    # Every rank holds the same gathered result.
    for k in ("ids", "labels", "logits", "features"):
        assert torch.equal(res[k], r1["result"][k]), k
    # Rows line up with their ids: recompute with the trained weights.
    model = _model()
    model.load_state_dict(r0["model"])
    x, y = _val_data().tensors
    with torch.no_grad():
        feats = model[1](model[0](x))
        logits = model(x)
    assert torch.equal(res["labels"], y)
    torch.testing.assert_close(res["features"], feats)
    torch.testing.assert_close(res["logits"], logits)


if __name__ == "__main__":
    _run(sys.argv[1])
