"""What a run shows and logs: the step-search curve and the before/after table in every logger
(CSV, TensorBoard, a table logger), Rich bars under a RichProgressBar, tqdm otherwise, and
silence with ``progress_bar=False``."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from trainer_fixtures import digits_loaders, quiet_trainer

from lightning_influence import UnlearnCallback
from lightning_influence.callbacks import progress
from lightning_influence.demos.models import ImageClassifier

torch.set_num_threads(1)
EPOCHS = 3
CURVE = ("unlearn/trial_radius", "unlearn/trial_forget_score", "unlearn/trial_retain_acc")
CURVE += ("unlearn/trial_f1",)


@pytest.fixture(scope="module")
def digits():
    return digits_loaders()[:2]


def _trainer(tmp_path, callbacks, **kwargs) -> L.Trainer:
    options = {"max_epochs": EPOCHS, "enable_checkpointing": False, **kwargs}
    return quiet_trainer(tmp_path, callbacks, **options)


class _TableLogger(Logger):
    """A logger with WandbLogger's ``log_table``: records what it is given."""

    name, version = "table", 0

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.tables: list[dict] = []
        self.hparams: dict = {}

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        self.hparams.update(params)

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables.append({"key": key, "columns": columns, "data": data})


@pytest.fixture(scope="module")
def logged(digits, tmp_path_factory):
    """One fit with unlearning, logged to CSV, TensorBoard and a table logger at once."""
    tmp = tmp_path_factory.mktemp("logged")
    L.seed_everything(0, verbose=False)
    model = ImageClassifier()
    cb = UnlearnCallback(forget_classes=[3], progress_bar=False)
    loggers = [
        CSVLogger(tmp, name="csv"),
        TensorBoardLogger(tmp, name="tb"),
        _TableLogger(),
    ]
    trainer = _trainer(tmp, [cb], logger=loggers)
    trainer.fit(*([model] + list(digits)))
    assert cb.report is not None and cb.report.applied
    assert len(cb.report.trials) >= 3  # a curve, not a point
    return trainer, cb.report, loggers


def test_csv_logger_holds_the_curve_and_before_after(logged):
    trainer, rep, (csv_logger, _, _) = logged
    with open(f"{csv_logger.log_dir}/metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    curve = [r for r in rows if r.get("unlearn/trial_radius")]
    assert len(curve) == len(rep.trials)
    start = trainer.global_step  # steps keep increasing after training's
    assert [int(r["step"]) for r in curve] == list(range(start, start + len(rep.trials)))
    for row, trial in zip(curve, rep.trials, strict=True):
        assert float(row["unlearn/trial_radius"]) == pytest.approx(trial["radius"])
        assert float(row["unlearn/trial_forget_score"]) == pytest.approx(trial["forget_acc"])
        assert float(row["unlearn/trial_retain_acc"]) == pytest.approx(trial["retain_acc"])
        assert float(row["unlearn/trial_f1"]) == pytest.approx(trial["f1"])
    assert [float(r["unlearn/trial_index"]) for r in curve] == list(range(len(rep.trials)))
    rounds = [float(r["unlearn/trial_round"]) for r in curve]
    assert rounds == [t["round"] for t in rep.trials] and rounds == sorted(rounds)
    radii = [float(r["unlearn/trial_radius"]) for r in curve]
    assert len(set(radii)) == len(radii) > 1  # every trial its own radius
    summary = [r for r in rows if r.get("unlearn/after_forget_acc")]
    assert len(summary) == 1 and int(summary[0]["step"]) == trainer.global_step
    for k in ("forget_acc", "retain_acc", "f1"):
        assert float(summary[0][f"unlearn/before_{k}"]) == pytest.approx(rep.before[k])
        assert float(summary[0][f"unlearn/after_{k}"]) == pytest.approx(rep.after[k])
    assert float(summary[0]["unlearn/after_forget_acc"]) < float(
        summary[0]["unlearn/before_forget_acc"]
    )


def test_tensorboard_holds_the_curve_and_the_before_after_table(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, rep, (_, tb_logger, _) = logged
    events = EventAccumulator(tb_logger.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert set(CURVE) <= scalars
    assert {"unlearn/before_forget_acc", "unlearn/after_forget_acc"} <= scalars
    curve = events.Scalars("unlearn/trial_forget_score")
    start = trainer.global_step
    assert [e.step for e in curve] == list(range(start, start + len(rep.trials)))
    for e, trial in zip(curve, rep.trials, strict=True):
        assert e.value == pytest.approx(trial["forget_acc"], abs=1e-6)
    radius = events.Scalars("unlearn/trial_radius")
    assert [e.value for e in radius] == pytest.approx([t["radius"] for t in rep.trials])
    after = events.Scalars("unlearn/after_retain_acc")
    assert [e.step for e in after] == [trainer.global_step]
    # the text plugin stores add_text as a string tensor under "<tag>/text_summary"
    texts = [t for t in events.Tags()["tensors"] if t.startswith("unlearn/report")]
    assert texts, events.Tags()["tensors"]
    (event,) = events.Tensors(texts[0])
    text = event.tensor_proto.string_val[0].decode()
    assert "| metric | before | after |" in text
    for k in ("forget_acc", "retain_acc", "f1"):
        assert f"| {k} | {rep.before[k]:.4f} | {rep.after[k]:.4f} |" in text
    assert f"{len(rep.trials)} step trials" in text


def test_a_table_logger_gets_the_table_and_the_curve(logged):
    trainer, rep, (_, _, table) = logged
    (logged_table,) = table.tables
    assert logged_table["key"] == "unlearn/report"
    assert logged_table["columns"] == ["metric", "before", "after"]
    rows = {r[0]: r[1:] for r in logged_table["data"]}
    assert rows["forget_acc"] == [rep.before["forget_acc"], rep.after["forget_acc"]]
    curve = [(step, m) for step, m in table.metrics if set(CURVE) <= set(m)]
    start = trainer.global_step
    assert [step for step, _ in curve] == list(range(start, start + len(rep.trials)))
    assert [m["unlearn/trial_f1"] for _, m in curve] == [t["f1"] for t in rep.trials]


class _BrokenTable(_TableLogger):
    def log_table(self, *args, **kwargs):
        raise OSError("table service down")


def test_a_logger_whose_table_fails_only_warns_and_still_gets_the_curve():
    from lightning_influence.callbacks.loggers import log_report
    from lightning_influence.unlearn.report import UnlearnReport

    rep = UnlearnReport(
        task="class",
        before={"forget_acc": 0.9, "retain_acc": 0.95, "f1": 0.1},
        after={"forget_acc": 0.0, "retain_acc": 0.93, "f1": 0.96},
        trials=[
            {"radius": r, "step_norm": r, "forget_acc": 1 - r, "retain_acc": 0.9, "f1": r}
            for r in (0.1, 0.2)
        ],
    )
    broken = _BrokenTable()
    trainer = L.Trainer(logger=[broken], accelerator="cpu", enable_progress_bar=False)
    with pytest.warns(UserWarning, match="failed to log the before/after table"):
        log_report(trainer, rep)
    assert [step for step, m in broken.metrics if "unlearn/trial_radius" in m] == [0, 1]
    assert any("unlearn/after_f1" in m for _, m in broken.metrics)


# ---------------------------------------------------------------------- progress bars


@pytest.fixture
def bars(monkeypatch):
    """Every bar the pipeline opens: (kind, bar, descriptions it showed)."""
    opened: list[tuple[str, progress.ProgressBar, list[str]]] = []

    def spy(cls, kind):
        class Spy(cls):
            def __init__(self, total, desc, *args):
                super().__init__(total, desc, *args)
                self.total, self.shown = total, [desc]
                opened.append((kind, self, self.shown))

            def _draw(self, completed, info):
                super()._draw(completed, info)
                self.shown.append(info)

        return Spy

    monkeypatch.setattr(progress, "RichBar", spy(progress.RichBar, "rich"))
    monkeypatch.setattr(progress, "TqdmBar", spy(progress.TqdmBar, "tqdm"))
    return opened


def _check_bars(opened, kind: str, grid: int) -> None:
    assert opened and {k for k, _, _ in opened} == {kind}
    solves = [(bar, shown) for _, bar, shown in opened if ": solve" in shown[0]]
    searches = [(bar, shown) for _, bar, shown in opened if ": step search" in shown[0]]
    assert solves and searches
    reads = [bar for _, bar, shown in opened if shown[0] == "unlearn: read"]
    assert len(reads) == 1 and reads[0].completed == reads[0].total  # every batch read
    for bar, shown in solves:
        assert bar.total == 100  # max_iter: the most it takes (it stops early at tol)
        assert bar.completed >= 1
        assert "residual" in shown[-1] and "/ tol 1.0e-02" in shown[-1]
    for bar, shown in searches:
        assert bar.completed >= 1 and "radius" in shown[-1]
    searched = [
        (k, b, s) for k, b, s in opened if s[0] not in ("unlearn: read", "unlearn: capture")
    ]
    if grid > 1:  # "unlearn candidate 1/2 round 1/3: solve (damping 0)" (class removal: 3 rounds)
        label = rf"unlearn candidate \d/{grid}( round \d/\d)?: "
        assert all(re.match(label, s[0]) for _, _, s in searched)
        assert re.match(rf"unlearn candidate 1/{grid}( round 1/\d)?: solve", searched[0][2][0])
    else:
        assert all("candidate" not in shown[0] for _, _, shown in opened)


def test_rich_progress_bar_draws_the_unlearning_with_rich(digits, tmp_path, bars):
    pytest.importorskip("rich")
    from lightning.pytorch.callbacks import RichProgressBar

    L.seed_everything(0, verbose=False)
    cb = UnlearnCallback(forget_classes=[3], selection={"ratio": [0.05, 0.2]})
    rich_bar = RichProgressBar()
    trainer = _trainer(tmp_path, [cb, rich_bar], enable_progress_bar=True, max_epochs=2)
    trainer.fit(*([ImageClassifier()] + list(digits)))
    assert cb.report is not None and cb.report.applied
    _check_bars(bars, "rich", grid=2)
    # on the trainer's own live display (fit is still running), removed when done
    assert all(bar.shared and bar.progress is rich_bar.progress for _, bar, _ in bars)
    assert not {bar.task for _, bar, _ in bars} & set(rich_bar.progress.task_ids)


def test_rich_progress_bar_outside_fit_uses_its_own_display(digits, tmp_path, bars):
    pytest.importorskip("rich")
    from lightning.pytorch.callbacks import RichProgressBar

    train, val = digits
    L.seed_everything(0, verbose=False)
    model = ImageClassifier()
    _trainer(tmp_path, [], max_epochs=2).fit(model, train, val)
    trainer = _trainer(tmp_path, [RichProgressBar()], enable_progress_bar=True)
    UnlearnCallback(forget_classes=[3]).unlearn(trainer, model, train, val)
    _check_bars(bars, "rich", grid=1)
    assert not any(bar.shared for _, bar, _ in bars)
    assert all(not bar.progress.live.is_started for _, bar, _ in bars)  # stopped


def test_tqdm_otherwise(digits, tmp_path, bars, capsys, caplog):
    train, val = digits
    L.seed_everything(0, verbose=False)
    model = ImageClassifier()
    _trainer(tmp_path, [], max_epochs=2).fit(model, train, val)
    capsys.readouterr()
    trainer = _trainer(tmp_path, [TQDMProgressBar()], enable_progress_bar=True)
    with caplog.at_level("INFO"):
        UnlearnCallback(forget_classes=[3], step={"steps": 6}).unlearn(trainer, model, train, val)
    _check_bars(bars, "tqdm", grid=1)
    assert "unlearn round 1/3: solve" in capsys.readouterr().err  # tqdm draws on stderr
    plan = [r.getMessage() for r in caplog.records if "Hessian on" in r.getMessage()]
    assert len(plan) == 1 and "up to 100 solver iterations" in plan[0]  # said up front
    assert "up to 10 step trials per round" in plan[0]


@pytest.mark.parametrize("bar", ["rich", "tqdm"])
def test_progress_bar_false_is_silent(digits, tmp_path, bars, capsys, bar):
    if bar == "rich":
        pytest.importorskip("rich")
        from lightning.pytorch.callbacks import RichProgressBar as Bar
    else:
        Bar = TQDMProgressBar
    train, val = digits
    L.seed_everything(0, verbose=False)
    model = ImageClassifier()
    _trainer(tmp_path, [], max_epochs=2).fit(model, train, val)
    capsys.readouterr()
    trainer = _trainer(tmp_path, [Bar()], enable_progress_bar=True)
    quiet = UnlearnCallback(forget_classes=[3], step={"steps": 6}, progress_bar=False)
    rep = quiet.unlearn(trainer, model, train, val)
    assert rep.trials and not math.isnan(rep.after["f1"])  # it did run
    assert bars == []
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_an_unlearning_run_raises_no_torch_jit_warning():
    """torch warns about its own torch.jit use when forward-mode AD first loads; a user cannot
    act on it, so the library loads that module quietly (fresh process: the import is once)."""
    import subprocess
    import sys

    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "import torch, lightning_influence as li\n"
        "from torch import nn\n"
        "from lightning_influence.solve.curvature import HessianOperator\n"
        "m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))\n"
        "x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    H = HessianOperator(m, None, [(x, y)])\n"
        "    H.matvec({k: torch.ones_like(p) for k, p in m.named_parameters()})\n"
        "print(sum('torch.jit' in str(w.message) for w in caught))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_the_settings_reach_log_hyperparams(logged):
    _, rep, (csv_logger, _, table) = logged
    assert table.hparams["unlearn/task"] == "class"
    assert table.hparams["unlearn/hessian.budget"] == 128
    assert table.hparams["unlearn/hessian.sampler"] == "logit"
    assert table.hparams["unlearn/seed"] == 0
    hparams = (Path(csv_logger.log_dir) / "hparams.yaml").read_text()
    assert "unlearn/solve.damping" in hparams


def test_the_step_search_figure_reaches_image_loggers(logged):
    from lightning_influence.attribution.figures import STEP_SEARCH_TAG, step_search_figure

    trainer, rep, (_, tb_logger, _) = logged
    fig = step_search_figure(rep.trials, rep.radius)
    lines = fig.get_axes()[0].get_lines()
    assert len(lines) >= 3 and fig.get_axes()[0].get_xscale() == "log"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tb_logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert STEP_SEARCH_TAG in events.Tags()["images"]
