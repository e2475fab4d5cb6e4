"""Watch a run live in TensorBoard: a callback that writes the monitored values.

:class:`TensorBoardSink` is a callback of :class:`flowkit.FunctionalGradientDescent`
(``callbacks=[sink]``): every ``every`` steps it evaluates its monitors on the new
particles and writes each number with ``add_scalar``, so a long flow or an Algorithm 1 run
can be followed with ``tensorboard --logdir runs/tb`` while it runs. It needs the optional
``tensorboard`` package (``pip install "flowkit[tensorboard]"``) only when given a folder;
any object with ``add_scalar(tag, value, step)`` can be passed instead of a writer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flowkit.validation import check_int

__all__ = ["TensorBoardSink"]


class TensorBoardSink:
    """A flow callback writing monitor values to a TensorBoard ``SummaryWriter``.

    Parameters
    ----------
    writer : str, os.PathLike or writer object
        A log folder (a ``torch.utils.tensorboard.SummaryWriter`` is opened there, and
        closed by :meth:`close`), or an object with ``add_scalar(tag, value, step)``.
    monitors : sequence of callables
        Monitors of :mod:`flowkit.monitors` (``state -> {name: value}``).
    every : int
        Write at the steps that are multiples of ``every``.
    prefix : str
        Prepended to every tag (``"mmd/"`` groups a run's curves in TensorBoard).

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> from flowkit.tensorboard import TensorBoardSink
    >>> class Printer:
    ...     def add_scalar(self, tag, value, step):
    ...         print(tag, step, round(value, 3))
    >>> data = fk.datasets.eight_gaussians(100, seed=0)
    >>> sink = TensorBoardSink(Printer(), [fk.monitors.ObjectiveValue()], every=2)
    >>> objective = fk.objectives.MMD(data, fk.kernels.Gaussian(0.5))
    >>> x0 = 0.5 * torch.randn(100, 2, generator=torch.Generator().manual_seed(1))
    >>> _ = fk.FunctionalGradientDescent(objective, 1.0, callbacks=[sink],
    ...                                  progress=False).run(x0, 4)  # doctest: +ELLIPSIS
    objective 2 ...
    step_size 2 1.0
    objective 4 ...
    step_size 4 1.0
    """

    def __init__(self, writer: Any, monitors: Sequence[Callable[[Any], Mapping[str, Any]]] = (),
                 *, every: int = 1, prefix: str = ""):
        self.every = check_int(every, "every")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        self.prefix = prefix
        self.monitors = list(monitors)
        for i, m in enumerate(self.monitors):
            if not callable(m):
                raise TypeError(f"monitors[{i}] must be callable (state -> dict), got "
                                f"{type(m).__name__}")
        self._owned = isinstance(writer, (str, os.PathLike))
        if self._owned:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # tensorboard is an optional extra
                raise ImportError("writing TensorBoard logs needs the tensorboard package: "
                                  'pip install "flowkit[tensorboard]"') from err
            writer = SummaryWriter(log_dir=os.fspath(writer))
        elif not callable(getattr(writer, "add_scalar", None)):
            raise TypeError("writer must be a log folder or have add_scalar(tag, value, step), "
                            f"got {type(writer).__name__}")
        self.writer = writer

    def __call__(self, state: Any) -> None:
        """Evaluate the monitors on ``state`` and write their numbers (every ``every`` steps)."""
        if state.step % self.every:
            return
        values: dict[str, Any] = {}
        for monitor in self.monitors:
            values.update(monitor(state))
        if getattr(state, "step_size", None) is not None:
            values["step_size"] = state.step_size
        self.log(values, state.step)

    def log(self, values: Mapping[str, Any], step: int) -> None:
        """Write every finite real number of ``values`` at ``step`` (other entries skipped)."""
        for name, value in values.items():
            if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{self.prefix}{name}", float(value), step)

    def close(self) -> None:
        """Flush the writer; close it too when this sink opened it."""
        flush = getattr(self.writer, "flush", None)
        if flush is not None:
            flush()
        if self._owned:
            self.writer.close()
