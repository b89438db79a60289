"""Where a round's time goes: exclusive wall time per named section, summed in this process.

``with section("rule"):`` around a piece of work adds its time to ``rule``, less the time of any
section nested inside it (codec work inside a rule counts as ``messages``). ``take()`` returns
the sums since the last call and starts new ones. Sections are single-threaded by design: the
round loop and the batched engine's grid run in one thread (with Flower's engine the clients' work
happens in other processes, and the server's waiting shows as ``wait``). Work beside the round,
in another thread, is added with ``record`` under a name of its own: ``checkpoint_cpu``, the CPU
seconds of the background checkpoint writer, which overlap the round's sections.

Sections: ``plan`` (batch plans and gathering shards), ``compute`` (vmapped training and
evaluation), ``rule`` (a rule's maths), ``messages`` (building and reading Messages, the codec),
``screening``, ``io`` (results rows and checkpoints), ``wait`` (the grid's push and pull beyond
the sections inside it).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SECTIONS = ("plan", "compute", "rule", "messages", "screening", "io", "wait")

_totals: dict[str, float] = {}
_open: list[list] = []  # [name, time spent in nested sections]
_lock = threading.Lock()  # between ``record`` (any thread) and ``take``


@contextmanager
def section(name: str) -> Iterator[None]:
    """Time the block under ``name`` (exclusive of nested sections)."""
    t0 = time.perf_counter()
    _open.append([name, 0.0])
    try:
        yield
    finally:
        _, nested = _open.pop()
        spent = time.perf_counter() - t0
        _totals[name] = _totals.get(name, 0.0) + spent - nested
        if _open:
            _open[-1][1] += spent


def timed(name: str) -> Callable:
    """Decorator: every call of the function is timed under ``name``."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with section(name):
                return fn(*args, **kwargs)

        return inner

    return wrap


def record(name: str, seconds: float) -> None:
    """Add ``seconds`` under ``name`` (not one of ``SECTIONS``) from any thread: work beside the round."""
    with _lock:
        _totals[name] = _totals.get(name, 0.0) + seconds


def take() -> dict[str, float]:
    """Seconds per section since the last ``take`` (every name of ``SECTIONS``, 0 if unused), and any
    ``record``ed name; resets."""
    with _lock:
        out = {name: _totals.pop(name, 0.0) for name in SECTIONS}
        out.update(_totals)
        _totals.clear()
    return out


def process_started_at() -> float | None:
    """When this process started (epoch seconds, from ``/proc``), or None where there is no ``/proc``."""
    try:
        stat = Path("/proc/self/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22: start time in clock ticks after boot
    return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
