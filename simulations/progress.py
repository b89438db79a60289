"""Progress you can see on a terminal: a sweep's runs (done, elapsed, time left) and the running
round's replies, shown once a round has taken more than ``ROUND_DELAY_S`` seconds.

One rich ``Progress`` per command carries both bars (rich allows one live display at a time);
nothing is shown when stderr is not a terminal, or with ``quiet=true``. The per-run and
per-round log lines stay as they are: the bars are transient and vanish when done.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from peerkd.round.hook import RoundHook, RoundResult

ROUND_DELAY_S = 2.0  # a round shorter than this shows no bar (the log line after it is enough)


def wanted(quiet: bool, stream: Any = None) -> bool:
    """Whether to show bars: not ``quiet``, and ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return not quiet and hasattr(stream, "isatty") and stream.isatty()


class Display:
    """The bars of one command; a no-op when ``enabled`` is false.

    Parameters
    ----------
    enabled : bool
        Show anything at all (``wanted(quiet)``).
    console : rich.console.Console | None
        Where to draw (default: stderr).
    """

    def __init__(self, enabled: bool, console: Console | None = None):
        self.enabled, self._lock, self._live = enabled, threading.Lock(), 0
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        times = (TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
        self.progress = Progress(*columns, *times, console=console or Console(stderr=True), transient=True)

    def add(self, description: str, total: int, completed: int = 0) -> TaskID | None:
        """A new bar (None when disabled); the display starts with its first bar."""
        if not self.enabled:
            return None
        with self._lock:
            if self._live == 0:
                self.progress.start()
            self._live += 1
            return self.progress.add_task(description, total=total, completed=completed)

    def update(self, task: TaskID | None, completed: int) -> None:
        """Move ``task`` to ``completed``."""
        if task is not None:
            self.progress.update(task, completed=completed)

    def close(self) -> None:
        """Stop drawing whatever bars are left (a run that ended in an error)."""
        with self._lock:
            if self._live:
                self.progress.stop()
                self._live = 0

    def remove(self, task: TaskID | None) -> None:
        """Drop ``task``; the display stops with its last bar."""
        if task is None:
            return
        with self._lock:
            self.progress.remove_task(task)
            self._live -= 1
            if self._live == 0:
                self.progress.stop()


class RoundBar(RoundHook):
    """The running round's replies as a bar, once the round has lasted ``delay`` seconds.

    On the batched engine every reply comes at the end of the round, so the bar shows the
    round's elapsed time (a sign of life) and fills at once; on Flower's engine it fills as
    clients answer.
    """

    def __init__(self, display: Display, delay: float = ROUND_DELAY_S):
        self.display, self.delay = display, delay
        self.task: TaskID | None = None
        self._timer: threading.Timer | None = None
        self._state = (0, 0, 0)  # round, received, expected

    def on_replies(self, server_round: int, received: int, expected: int) -> None:
        self._state = (server_round, received, expected)
        if received == 0 and self._timer is None and self.display.enabled:
            self._timer = threading.Timer(self.delay, self._show)
            self._timer.daemon = True
            self._timer.start()
        self.display.update(self.task, received)

    def _show(self) -> None:
        rnd, received, expected = self._state
        self.task = self.display.add(f"round {rnd}: replies", expected, received)

    def after_round(self, result: RoundResult) -> dict[str, Any]:
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()
            self._timer = None
        self.display.remove(self.task)
        self.task = None
        return {}
