"""Progress for every long loop: rich bars in a terminal, plain timed lines anywhere else (CI logs, ``| tee``).

In a terminal each loop draws a transient rich bar. Rich bars written to a file or a pipe were worse than
nothing: they printed nothing while the loop ran (a demo stayed silent for ten minutes) and left one blank line
per bar behind. Outside a terminal every loop therefore logs plain lines to stderr instead — ``[excise] train
original: 120/300 (40%) 12s loss=0.123`` — at most one line every ``EXCISE_PROGRESS_INTERVAL`` seconds
(default 10) across all loops of the process, so nested and short loops cannot flood a log, plus a closing line
for every loop that ran that long. ``--quiet`` (or ``EXCISE_PROGRESS=0``) silences both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_ENABLED = os.environ.get("EXCISE_PROGRESS", "1") != "0"
_last_line = float("-inf")  # when the last plain progress line was written, process-wide


def set_progress(enabled: bool) -> None:
    """Turn progress output on or off process-wide (the CLI's ``--quiet``)."""
    global _ENABLED
    _ENABLED = enabled


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("EXCISE_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


class _Bar:
    def __init__(self, progress: Progress | None, task_id: int | None) -> None:
        self._progress, self._task = progress, task_id

    def advance(self, steps: int = 1, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=steps, info=_format(fields))

    def update(self, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, info=_format(fields))


class _Lines(_Bar):
    """Plain progress lines for a log: throttled process-wide, never a blank line."""

    def __init__(self, description: str, total: int | None) -> None:
        super().__init__(None, None)
        self.description, self.total, self.done, self.info = description, total, 0, ""
        self.start = time.monotonic()

    def advance(self, steps: int = 1, **fields: object) -> None:
        self.done += steps
        self.update(**fields)

    def update(self, **fields: object) -> None:
        if fields:
            self.info = _format(fields)
        if time.monotonic() - _last_line >= _interval():
            self._write()

    def close(self) -> None:
        if time.monotonic() - self.start >= _interval():
            self._write("done ")

    def _write(self, state: str = "") -> None:
        global _last_line
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        elapsed = time.monotonic() - self.start
        line = f"[excise] {self.description}: {state}{count}{share} {elapsed:.0f}s {self.info}".rstrip()
        print(line, file=sys.stderr, flush=True)
        _last_line = time.monotonic()


def _format(fields: dict[str, object]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool | None = None) -> Iterator[_Bar]:
    """A transient progress bar (plain timed lines outside a terminal); ``bar.advance(loss=...)`` shows live
    values next to it."""
    if not (_ENABLED if enabled is None else enabled):
        yield _Bar(None, None)
        return
    console = Console()
    if not console.is_terminal:
        lines = _Lines(description, total)
        try:
            yield lines
        finally:
            lines.close()
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task_id = progress.add_task(description, total=total, info="")
        yield _Bar(progress, task_id)
