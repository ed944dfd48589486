"""Progress of the solve and the step search: tqdm, or Rich under a ``RichProgressBar``.

One interface, :func:`progress_bar`, yields a bar with the two callbacks the pipeline passes
on (``solver_callback``, ``step_callback``). It is silent when not shown. The kind follows the
Trainer's progress bar: :func:`trainer_progress` (entered by ``UnlearnCallback.unlearn``) makes
bars drawn with Rich when that is a :class:`~lightning.pytorch.callbacks.RichProgressBar` (on
its live display while it runs, else on its console), with tqdm otherwise.

The solve bar's total is ``max_iter``, the most a Krylov solve takes (its ETA is an upper
bound: the solve usually stops early, when the residual reaches ``tol``, which it shows).
The read and capture passes have bars of their own (over batches).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["Counted", "ProgressBar", "RichBar", "TqdmBar", "progress_bar", "trainer_progress"]

#: the Trainer's progress bar callback while ``UnlearnCallback.unlearn`` runs
_TRAINER_BAR: ContextVar[Any] = ContextVar("lightning_influence_trainer_bar", default=None)


class ProgressBar:
    """The pipeline's callbacks; this base draws nothing (``progress_bar=False``)."""

    def __init__(self, tol: float | None = None) -> None:
        self.tol = tol
        self.completed = 0

    def solver_callback(self, iteration: int, residual: float) -> None:
        info = f"residual {residual:.2e}"
        self._draw(iteration, info if self.tol is None else f"{info} / tol {self.tol:.1e}")

    def step_callback(self, k: int, trial: Any) -> None:
        self._draw(
            k,
            f"radius {trial.radius:.2e}, forget {trial.forget_acc:.3f}, "
            f"retain {trial.retain_acc:.3f}",
        )

    def advance(self, completed: int, info: str = "") -> None:
        """Show ``completed`` units done, with ``info`` (e.g. the influence scores' samples)."""
        self._draw(completed, info)

    def _draw(self, completed: int, info: str) -> None:
        self.completed = completed

    def close(self) -> None:
        pass


class TqdmBar(ProgressBar):
    """A tqdm bar (``total=None``: a counter without ETA)."""

    def __init__(self, total: int | None, desc: str, tol: float | None = None) -> None:
        from tqdm.auto import tqdm

        super().__init__(tol)
        self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def _draw(self, completed: int, info: str) -> None:
        super()._draw(completed, info)
        self.bar.update(completed - self.bar.n)
        self.bar.set_postfix_str(info, refresh=False)

    def close(self) -> None:
        self.bar.close()


class RichBar(ProgressBar):
    """A task on the ``RichProgressBar``'s live display, else on a transient one of our own."""

    def __init__(
        self, total: int | None, desc: str, tol: float | None = None, trainer_bar: Any = None
    ) -> None:
        super().__init__(tol)
        self.desc, self.trainer_bar = desc, trainer_bar
        progress = getattr(trainer_bar, "progress", None)
        self.shared = bool(getattr(getattr(progress, "live", None), "is_started", False))
        if not self.shared:
            progress = _rich_progress()  # our own transient display, on rich's console
            progress.start()
        self.progress = progress
        if total is None and self.shared:  # Lightning's Progress: inf is "unknown" (no ETA)
            total = float("inf")  # type: ignore[assignment]
        self.task = progress.add_task(desc, total=total)

    def _draw(self, completed: int, info: str) -> None:
        super()._draw(completed, info)
        self.progress.update(self.task, completed=completed, description=f"{self.desc}: {info}")
        if self.shared:  # Lightning's live display redraws when asked
            self.trainer_bar.refresh()

    def close(self) -> None:
        if self.shared:
            self.progress.remove_task(self.task)
            self.trainer_bar.refresh()
        else:
            self.progress.stop()


def _rich_progress() -> Any:
    from rich import progress as rp

    return rp.Progress(
        rp.TextColumn("{task.description}"),
        rp.BarColumn(),
        rp.MofNCompleteColumn(),
        rp.TimeElapsedColumn(),
        transient=True,
    )


def bar_kind(trainer_bar: Any) -> str:
    """``rich`` for a ``RichProgressBar``, else ``tqdm``."""
    try:
        from lightning.pytorch.callbacks import RichProgressBar
    except ImportError:  # pragma: no cover - lightning is a dependency
        return "tqdm"
    return "rich" if isinstance(trainer_bar, RichProgressBar) else "tqdm"


@contextmanager
def trainer_progress(trainer_bar: Any) -> Iterator[None]:
    """Within this block, bars follow ``trainer_bar`` (the Trainer's progress bar callback)."""
    token = _TRAINER_BAR.set(trainer_bar)
    try:
        yield
    finally:
        _TRAINER_BAR.reset(token)


@contextmanager
def progress_bar(
    show: bool,
    total: int | None,
    desc: str,
    kind: str | None = None,
    tol: float | None = None,
) -> Iterator[ProgressBar]:
    """A bar over ``total`` units (None: unknown, no ETA), closed on exit.

    Args:
        show: draw it; otherwise the bar is silent.
        total: the most units, or None where the run stops early (a solve).
        desc: the description.
        kind: ``tqdm`` or ``rich`` (default: the Trainer's kind, see :func:`trainer_progress`).
        tol: shown next to the residual of a solve.
    """
    if not show:
        yield ProgressBar(tol)
        return
    trainer_bar = _TRAINER_BAR.get()
    kind = kind or bar_kind(trainer_bar)
    if kind not in ("tqdm", "rich"):
        raise ValueError(f"Unknown progress bar kind {kind!r}: choose 'tqdm' or 'rich'.")
    bar = RichBar(total, desc, tol, trainer_bar) if kind == "rich" else TqdmBar(total, desc, tol)
    try:
        yield bar
    finally:
        bar.close()


class Counted:
    """``loader`` (its attributes too) whose iteration advances ``bar`` batch by batch."""

    def __init__(self, loader: Iterable[Any], bar: Any, unit: str) -> None:
        self._loader, self._bar, self._unit = loader, bar, unit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __iter__(self) -> Any:
        for k, batch in enumerate(self._loader, start=1):
            yield batch
            self._bar.advance(k, f"{k} {self._unit}")
