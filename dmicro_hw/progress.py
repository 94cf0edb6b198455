"""Progress display of the commands: rich bars on a terminal, whole periodic lines on stderr
otherwise (a pipe, a log file, CI), so nothing is cut to the terminal width and results on
stdout stay separate from progress.

:func:`make_progress` takes the same columns as :class:`rich.progress.Progress` and returns
either a rich Progress (stdout is a terminal) or a :class:`LineProgress` with the subset of its
API the commands use (``add_task``, ``update``, ``advance``, ``tasks``, ``start``/``stop``,
context manager, ``console``). A line progress writes one line per task every
``DMICRO_PROGRESS_INTERVAL_S`` seconds (default 5) while it advances, and one final line when
the task ends — e.g.::

    12:01:07 acquiring 200/200 100% elapsed 0:00:01 done · 3756 fps · drop 0 · … p50/p99 624/1271 ms

``--quiet`` (:func:`set_quiet`) hides progress altogether.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Hide all progress (``-q/--quiet``)."""
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET


def interval_s() -> float:
    """Seconds between two progress lines of one task when not on a terminal."""
    try:
        return max(0.0, float(os.environ.get("DMICRO_PROGRESS_INTERVAL_S", "5")))
    except ValueError:
        return 5.0


def make_console(stderr: bool = False) -> Any:
    """A rich console; off a terminal it is wide (160 columns unless ``COLUMNS`` says more)
    so tables are not folded at rich's default of 80, and lines of text are never wrapped."""
    from rich.console import Console

    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    width = max(160, int(os.environ.get("COLUMNS", "0") or 0))
    return Console(stderr=stderr, width=width, soft_wrap=True)  # lines of text never wrapped


def make_progress(*columns: Any, console: Any = None, transient: bool = False) -> Any:
    """A rich Progress when the console (default: stdout) is a terminal, else a LineProgress."""
    from rich.progress import Progress

    if console is None:
        console = make_console()
    if console.is_terminal:
        return Progress(*columns, console=console, transient=transient, disable=_QUIET)
    return LineProgress(*columns, console=console)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    return str(timedelta(seconds=max(0, int(seconds))))


@dataclass
class LineTask:
    """What a column needs of a task (same attribute names as rich's Task)."""

    id: int
    description: str
    total: float | None
    completed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    visible: bool = True
    start_time: float = field(default_factory=time.monotonic)
    finished_time: float | None = None

    @property
    def finished(self) -> bool:
        return self.total is not None and self.completed >= self.total

    @property
    def elapsed(self) -> float:
        """Seconds since the task was added (still counting after it reached its total: the
        work after the last count — draining, catching up — is part of it)."""
        return time.monotonic() - self.start_time

    @property
    def percentage(self) -> float:
        return 100.0 * self.completed / self.total if self.total else 0.0

    @property
    def remaining(self) -> float | None:
        return None if self.total is None else self.total - self.completed

    @property
    def time_remaining(self) -> float | None:
        if self.total is None or self.completed <= 0 or self.finished:
            return None
        return self.elapsed / self.completed * (self.total - self.completed)


class LineProgress:
    """Progress as whole lines on stderr (see the module docstring)."""

    def __init__(self, *columns: Any, console: Any = None, out: Any = None) -> None:
        self.columns = columns
        self.console = console if console is not None else make_console()
        self._out = out if out is not None else sys.stderr
        self.tasks: list[LineTask] = []
        self._last: dict[int, float] = {}
        self._dirty: set[int] = set()
        self._pending_final: set[int] = set()

    # -- rich Progress API subset
    def __enter__(self) -> LineProgress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._flush_finals()
        for t in self.tasks:
            if t.id in self._dirty:
                self._emit(t)

    def add_task(
        self,
        description: str,
        start: bool = True,
        total: float | None = 100.0,
        completed: float = 0,
        visible: bool = True,
        **fields: Any,
    ) -> int:
        self._flush_finals()
        t = LineTask(len(self.tasks), description, total, completed, dict(fields), visible)
        self.tasks.append(t)
        self._last[t.id] = time.monotonic()
        return t.id

    def update(
        self,
        task_id: int,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        visible: bool | None = None,
        refresh: bool = False,
        **fields: Any,
    ) -> None:
        t = self.tasks[task_id]
        was_finished = t.finished
        if total is not None:
            t.total = total
        if completed is not None:
            t.completed = completed
        if advance is not None:
            t.completed += advance
        if description is not None:
            t.description = description
        if visible is not None:
            t.visible = visible
        t.fields.update(fields)
        self._dirty.add(task_id)
        if t.finished and not was_finished:
            t.finished_time = time.monotonic()
            self._pending_final.add(task_id)  # emitted with whatever the caller adds next
            return
        if time.monotonic() - self._last.get(task_id, 0.0) >= interval_s():
            self._emit(t)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def refresh(self) -> None:
        pass

    # -- rendering
    def _flush_finals(self) -> None:
        for i in sorted(self._pending_final):
            self._emit(self.tasks[i])

    def render(self, task: LineTask) -> str:
        """The task as one plain line (markup removed, nothing cut)."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        parts: list[str] = []
        for col in self.columns:
            if isinstance(col, str):
                col = TextColumn(col)
            if isinstance(col, TextColumn):
                txt = col.text_format.format(task=task)
                parts.append(Text.from_markup(txt).plain if col.markup else txt)
            elif isinstance(col, MofNCompleteColumn):
                total = "?" if task.total is None else f"{int(task.total)}"
                parts.append(f"{int(task.completed)}/{total}")
            elif isinstance(col, BarColumn):
                if task.total:
                    parts.append(f"{task.percentage:3.0f}%")
            elif isinstance(col, TimeElapsedColumn):
                parts.append(f"elapsed {_clock(task.elapsed)}")
            elif isinstance(col, TimeRemainingColumn):
                if not task.finished:
                    parts.append(f"eta {_clock(task.time_remaining)}")
        if not self.columns:  # rich's default columns: description, bar, percentage, eta
            parts = [task.description]
            if task.total:
                parts.append(f"{int(task.completed)}/{int(task.total)} ({task.percentage:.0f}%)")
            else:
                parts.append(f"{int(task.completed)}")
            parts.append(f"elapsed {_clock(task.elapsed)}")
        return " ".join(p.strip() for p in parts if p and p.strip())

    def _emit(self, task: LineTask) -> None:
        self._last[task.id] = time.monotonic()
        self._dirty.discard(task.id)
        self._pending_final.discard(task.id)
        if _QUIET or not task.visible:
            return
        line = f"{time.strftime('%H:%M:%S')} {self.render(task)}"
        self._out.write(line + "\n")
        self._out.flush()
