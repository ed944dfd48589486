"""Forward hooks, written once: record what named modules see while a model runs.

Every stage that looks inside a forward pass (the sampler's features, the logits of a
validation step, the unit selection's layer outputs, EK-FAC's layer inputs, the scorer's
output-layer inputs, the output-layer rule) uses :class:`ForwardRecorder`: hooks on named
modules that keep, per call, what a ``keep`` function takes from ``(inputs, output)``, in
call order, and are removed on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = ["ForwardRecorder", "Keep", "keep_output"]

#: what a hook keeps of one call: ``keep(inputs, output)``
Keep = Callable[[tuple[Any, ...], Any], Any]


def keep_output(inputs: tuple[Any, ...], output: Any) -> Any:
    """Keep the module's output (the default)."""
    return output


class ForwardRecorder:
    """Forward hooks on ``modules`` that keep ``keep(inputs, output)`` of every call.

    ``records[name]`` lists what was kept, per call (with ``last_only``, only the latest
    call's); ``order`` lists the names of the modules in the order they ran. Use it as a
    context manager, or :meth:`register` and :meth:`remove` it across a callback's hooks.

    Args:
        modules: the modules to hook, by name.
        keep: what to keep of a call (default: its output).
        last_only: keep only the latest call of each module (e.g. a live activation that is
            copied before the next forward), so memory does not grow with the calls.
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        keep: Keep = keep_output,
        last_only: bool = False,
    ) -> None:
        self.modules = dict(modules)
        self.keep, self.last_only = keep, last_only
        self.records: dict[str, list[Any]] = {name: [] for name in self.modules}
        self.order: list[str] = []
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def record(_module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            kept = self.keep(inputs, output)
            if self.last_only:
                self.records[name][:] = [kept]
            else:
                self.records[name].append(kept)
            self.order.append(name)

        return record

    def register(self) -> ForwardRecorder:
        """Add the hooks (again a no-op while they are on)."""
        if not self._handles:
            self._handles = [
                module.register_forward_hook(self._hook(name))
                for name, module in self.modules.items()
            ]
        return self

    def remove(self) -> None:
        """Remove the hooks (what was recorded stays)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def pop(self) -> dict[str, list[Any]]:
        """What was recorded since the last call (or the start), then clear it."""
        records = self.records
        self.records = {name: [] for name in self.modules}
        self.order = []
        return records

    def __enter__(self) -> ForwardRecorder:
        return self.register()

    def __exit__(self, *exc: Any) -> None:
        self.remove()
