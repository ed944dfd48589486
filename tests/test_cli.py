"""The LightningCLI example config parses and fits; the demo's --json has the documented keys."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
