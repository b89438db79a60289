"""Finding and stopping the processes we started, from ``/proc`` (Linux).

A PID alone is not enough to find a process again: it may have exited and its PID been
reused. A :class:`Started` record keeps the start time and the command line too, so a
process is only ever signalled while it is still the one we started.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

CMDLINE_SETTLE_S = 0.5  # how long an empty /proc/<pid>/cmdline is read again before it is believed
FOLLOW_S = 1.0  # how long a job's other processes get to follow their exited roots before they are asked


@dataclass(frozen=True)
class Started:
    """A process we started: enough to find it again and to be sure it is still ours."""

    name: str
    pid: int
    start_time: int  # /proc/<pid>/stat field 22: tells a reused PID apart
    cmdline: str  # /proc/<pid>/cmdline when started, arguments joined by spaces: must still match


def cmdline(pid: int, settle_s: float = CMDLINE_SETTLE_S) -> str | None:
    """The command line of process ``pid`` as ``/proc`` shows it (arguments joined by spaces); None if gone.

    A live process can read as empty for a moment (measured: 5 of 200 reads right after a
    ``Popen`` of Flower's SuperLink), so an empty read is retried for up to ``settle_s``; a process
    still empty after that (a zombie) reads as ``""``.
    """
    deadline = time.monotonic() + settle_s
    while True:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if raw or time.monotonic() >= deadline:
            return " ".join(raw.decode(errors="replace").removesuffix("\0").split("\0"))
        time.sleep(0.005)


def proc_table() -> dict[int, tuple[int, int, str, int]]:
    """pid -> (ppid, session id, state, start time) of every readable process.

    Returns
    -------
    dict
        One entry per process whose ``/proc/<pid>/stat`` could be read.
    """
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            f = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            table[int(entry)] = (int(f[1]), int(f[3]), f[0], int(f[19]))
    return table


def process_tree(roots: list[Started]) -> set[int]:
    """Live PIDs of ``roots`` (if still the same processes: PID, start time and command line) and
    everything below them.

    Flower's SuperLink and SuperNode start their SuperExec in a new session; its children
    (ServerApp, ClientApp processes) stay in that session even when orphaned, so sessions
    found under a root are followed too.
    """
    table = proc_table()
    members = {r.pid for r in roots if _same(r, table)}
    forbidden = {0, 1, os.getsid(0)}
    sids = {table[p][1] for p in members} - forbidden
    grew = True
    while grew:
        grew = False
        for pid, (ppid, sid, state, _) in table.items():
            if pid not in members and state != "Z" and (ppid in members or sid in sids):
                members.add(pid)
                sids |= {sid} - forbidden
                grew = True
    return members


def _same(r: Started, table: dict[int, tuple[int, int, str, int]]) -> bool:
    """Whether ``r`` is still running as the very process we started."""
    row = table.get(r.pid)
    return row is not None and row[3] == r.start_time and row[2] != "Z" and cmdline(r.pid) == r.cmdline


def stop_escalating(
    first: Iterable[int], current: Callable[[], set[int]], grace: float = 10.0, poll: float = 0.1
) -> set[int]:
    """SIGTERM ``first`` and wait for them; then SIGTERM, then SIGKILL, whatever ``current()`` still reports.

    Parameters
    ----------
    first
        PIDs to ask first (the roots: their children usually follow them).
    current
        The live PIDs that belong to the job, asked again at every check: a fixed set
        filtered to the living, or a rescan that also finds processes started meanwhile.
    grace
        Seconds the roots get to exit after the first SIGTERM. Once they are gone, what is left
        gets ``FOLLOW_S`` to follow them before the second SIGTERM (an orphan that keeps
        sleeping, such as a SuperExec in its reconnect backoff, is not waited for the whole
        grace); the second SIGTERM and the SIGKILL get 5 s each.
    poll
        Seconds between checks.

    Returns
    -------
    set of int
        The PIDs still alive at the end; empty when all are gone.
    """
    roots = set(first)
    if not current():
        return set()
    _signal(roots, signal.SIGTERM)
    _wait(lambda: alive(roots) & current(), grace, poll)
    _wait(current, FOLLOW_S, poll)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = current()
        if not live:
            return set()
        _signal(live, sig)
        _wait(current, 5.0, poll)
    return current()


def _wait(pending: Callable[[], set[int]], wait: float, poll: float) -> None:
    """Return once ``pending()`` is empty, or after ``wait`` s."""
    deadline = time.monotonic() + wait
    while pending() and time.monotonic() < deadline:
        time.sleep(poll)


def stop_processes(roots: list[Started], grace: float = 10.0) -> set[int]:
    """SIGTERM the roots, then SIGTERM and SIGKILL whatever is left below them; return survivors."""
    tree = process_tree(roots)
    return stop_escalating({r.pid for r in roots} & tree, lambda: alive(tree), grace)


def kill_now(pids: set[int], wait: float = 5.0) -> set[int]:
    """SIGKILL ``pids`` at once and wait up to ``wait`` s for them to go; return survivors."""
    _signal(pids, signal.SIGKILL)
    _wait(lambda: alive(pids), wait, 0.1)
    return alive(pids)


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (zombies count as gone)."""
    table = proc_table()
    return {p for p in pids if p in table and table[p][2] != "Z"}


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each of ``pids``, skipping those already gone."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
