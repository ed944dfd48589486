"""The LightningCLI example config parses and fits; the demo's --json has the documented keys."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_lightning_cli_config_runs_one_epoch(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "cli.py"),
        "fit",
        "--config",
        str(ROOT / "examples" / "config_unlearn.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = list(tmp_path.rglob("metrics.csv"))
    assert metrics and "unlearn/after_f1" in metrics[0].read_text()


def test_demo_json_keys(tmp_path):
    out = tmp_path / "demo.json"
    cmd = [sys.executable, "-m", "lightning_influence", "demo", "--epochs", "2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data) == {"before", "after", "retrain"}
    for row in data.values():
        assert set(row) == {
            "forget_acc",
            "retain_acc",
            "f1",
            "exclusive_loss",
            "self_loss",
            "seconds",
        }
    assert "retrain" in proc.stdout


def test_demo_missing_fashion_mnist_is_a_clear_error(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "lightning_influence",
        "demo",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV, cwd=ROOT)
    assert proc.returncode == 2
    assert "error" in proc.stderr.lower()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "-1"], "--epochs"),
        (["--epochs", "0"], "--epochs"),
        (["--seed", "-1"], "--seed"),
        (["--forget-class", "10"], "--forget-class"),
        (["--json", "{file}/out.json"], "--json"),
    ],
)
def test_demo_flags_are_checked_before_any_work(tmp_path, capsys, flags, message):
    from lightning_influence.__main__ import main

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    flags = [f.format(file=a_file) for f in flags]
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert time.perf_counter() - start < 5  # refused at parse time, nothing trained


def test_every_setting_has_help_in_the_cli():
    """LightningCLI/jsonargparse shows per-field help of every settings group."""
    from dataclasses import fields

    from jsonargparse import ArgumentParser

    import lightning_influence as li

    for group in (
        li.HessianArguments,
        li.SelectionArguments,
        li.SolveArguments,
        li.StepArguments,
        li.GridArguments,
    ):
        parser = ArgumentParser()
        parser.add_class_arguments(group, "g")
        text = " ".join(parser.format_help().split())
        for f in fields(group):
            assert f.metadata.get("help"), f"{group.__name__}.{f.name} has no help"
            assert " ".join(f.metadata["help"].split())[:40] in text, f.name
    parser = ArgumentParser()
    parser.add_class_arguments(li.UnlearnCallback, "cb")
    text = " ".join(parser.format_help().split())
    assert "class labels to forget" in text and "logits_fn(output) -> logits" in text


def _digits_checkpoint(path: Path) -> Path:
    """A real Lightning checkpoint of the digits ImageClassifier (3 epochs)."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_influence.demos.models import DigitsDataModule, ImageClassifier

    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    ckpt = ModelCheckpoint(dirpath=path, filename="trained")
    trainer = L.Trainer(
        max_epochs=4, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[ckpt], num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(ImageClassifier(), DigitsDataModule())
    return Path(ckpt.best_model_path)


def test_unlearn_command_unlearns_a_saved_checkpoint(tmp_path):
    import torch

    from lightning_influence.__main__ import main
    from lightning_influence.demos.models import DigitsDataModule, ImageClassifier
    from lightning_influence.measure.metrics import evaluate

    trained = _digits_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    config = ROOT / "examples" / "unlearn_checkpoint.yaml"
    args = ["unlearn", "--config", str(config), "--ckpt_path", str(trained)]
    status = main([*args, "--output", str(out), "--accelerator", "cpu"])
    report = json.loads((out / "report.json").read_text())
    assert status == 0 and report["applied"] and report["complete"]
    model = ImageClassifier()
    state = torch.load(out / "unlearned.ckpt", weights_only=False)
    model.load_state_dict(state["state_dict"])
    dm = DigitsDataModule()
    dm.setup()
    assert evaluate(model, dm.val_dataloader(), [3])["forget_acc"] <= 0.05
    assert any("UnlearnCallback" in k for k in state["callbacks"])
    # a step that cannot forget: files written, exit status 3
    status = main(
        [*args, "--output", str(tmp_path / "none"), "--accelerator", "cpu",
         "--unlearn.step", '{"steps": 2, "min_radius": 1e-9, "max_radius": 1e-8}']
    )  # fmt: skip
    assert status == 3 and (tmp_path / "none" / "report.json").exists()
    # a missing checkpoint is an error (2)
    assert (
        main([*args[:3], "--ckpt_path", str(tmp_path / "missing.ckpt"), "--output", str(out)]) == 2
    )
