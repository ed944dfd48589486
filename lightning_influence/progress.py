"""Progress bars for the solve and the step search (tqdm; silent when not shown)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ProgressBar", "progress_bar"]


class ProgressBar:
    """A bar with the two callbacks the pipeline passes on (no-ops when ``bar`` is None)."""

    def __init__(self, bar: Any = None) -> None:
        self.bar = bar

    def solver_callback(self, iteration: int, residual: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(residual=f"{residual:.2e}", refresh=False)

    def step_callback(self, k: int, trial: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                radius=f"{trial.radius:.2e}",
                forget=f"{trial.forget_acc:.3f}",
                retain=f"{trial.retain_acc:.3f}",
                refresh=False,
            )


@contextmanager
def progress_bar(show: bool, total: int, desc: str) -> Iterator[ProgressBar]:
    """A :class:`ProgressBar` over ``total`` units, closed on exit."""
    if not show:
        yield ProgressBar()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    try:
        yield ProgressBar(bar)
    finally:
        bar.close()
