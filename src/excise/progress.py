"""Rich progress bars for every long loop, silenced in tests and non-interactive runs on request."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_ENABLED = os.environ.get("EXCISE_PROGRESS", "1") != "0"


def set_progress(enabled: bool) -> None:
    """Turn progress bars on or off process-wide (the CLI's ``--quiet``)."""
    global _ENABLED
    _ENABLED = enabled


class _Bar:
    def __init__(self, progress: Progress | None, task_id: int | None) -> None:
        self._progress, self._task = progress, task_id

    def advance(self, steps: int = 1, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=steps, info=_format(fields))

    def update(self, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, info=_format(fields))


def _format(fields: dict[str, object]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool | None = None) -> Iterator[_Bar]:
    """A transient progress bar; ``bar.advance(loss=...)`` shows live values next to it."""
    if not (_ENABLED if enabled is None else enabled):
        yield _Bar(None, None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, transient=True) as progress:
        task_id = progress.add_task(description, total=total, info="")
        yield _Bar(progress, task_id)
