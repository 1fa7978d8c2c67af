"""What long loops report their progress to: the pipeline's rich bars, or nothing.

:class:`Progress` is the part of rich's ``Progress`` the loops use (the training loop of
:func:`compressor.training.fine_tune` adds a bar per pass under the pipeline's bar of passes);
:class:`NoProgress` does nothing, so a loop runs the same without the pipeline (a test, a
script building its own :class:`compressor.pipeline.CompressionState`).
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Progress", "NoProgress", "pipeline_progress"]


class Progress(Protocol):
    """Bars by id, each with a description, a total and free fields (``loss``, ``metric``)."""

    def add_task(self, description: str, *, total: float | None = ..., completed: float = ..., **fields: Any) -> Any:
        """Start a bar; returns its id."""

    def update(self, task_id: Any, *, advance: float | None = ..., description: str | None = ...,
               **fields: Any) -> None:
        """Advance a bar, or change its description or fields."""

    def advance(self, task_id: Any, advance: float = ...) -> None:
        """Advance a bar by ``advance`` (1 by default)."""

    def remove_task(self, task_id: Any) -> None:
        """Drop a finished bar."""


class NoProgress:
    """A :class:`Progress` that shows nothing."""

    def add_task(self, description: str, **kwargs: Any) -> int:
        return 0

    def update(self, task_id: Any, **kwargs: Any) -> None:
        pass

    def advance(self, task_id: Any, advance: float = 1) -> None:
        pass

    def remove_task(self, task_id: Any) -> None:
        pass


def pipeline_progress(console, enabled: bool):
    """The pipeline's rich progress display (a context manager; ``enabled=False``: shows nothing):
    spinner, description, bar, done/total, elapsed time, and the ``loss`` and ``metric`` fields."""
    from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[metric]}"))
    return RichProgress(*columns, console=console, disable=not enabled)
