"""The processes started from one state directory, recorded in ``DIR/processes.json``.

Every record holds the command line (as ``/proc`` shows it) and start time, so ``stop``
never signals a process that merely reused a PID. A state directory is owned: while a
process it recorded runs, no second SuperLink or cluster starts in it (nor a second process
of that name), and a lock file keeps two launchers from starting processes in it at once.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from filelock import FileLock, Timeout

from peerkd.deploy.commands import BIN, DEPLOY_ENV
from peerkd.deploy.processes import Started, alive, cmdline, kill_now, proc_table, process_tree, stop_processes

PROCESS_FILE = "processes.json"
LOCK_FILE = ".deploy.lock"  # held while a launcher starts processes in the state directory
LOCK_WAIT_S = 10.0  # how long a launcher waits for another one to finish starting its processes


class DeployError(RuntimeError):
    """A deployment step that cannot go on, for a reason the user can act on; the message is one line."""


class Cluster:
    """The processes started from one state directory (recorded in ``processes.json``).

    Reading a state never creates it; ``claim`` and ``start`` do.
    """

    def __init__(self, state: Path):
        self.state = state.resolve()
        self.file = self.state / PROCESS_FILE
        self._lock = FileLock(self.state / LOCK_FILE, timeout=LOCK_WAIT_S)  # re-entrant: claim() holds it for start()
        self._popen: list[subprocess.Popen] = []  # ours to reap (no zombies left in a long-lived caller)

    def started(self) -> list[Started]:
        """Every process recorded so far; DeployError if the record is damaged."""
        if not self.file.exists():
            return []
        try:
            return [Started(**d) for d in json.loads(self.file.read_text())]
        except (ValueError, TypeError) as exc:  # not JSON (ValueError), or not a list of records (TypeError)
            raise _damaged(self.file, exc) from None

    def running(self, names: list[str] | None = None) -> list[Started]:
        """The recorded processes (of ``names``; default: all) still running as started, the SuperLink first."""
        live = [s for s in self.started() if (names is None or s.name in names) and s.pid in process_tree([s])]
        return sorted(live, key=lambda s: s.name != "superlink")

    @contextmanager
    def claim(self, names: list[str] | None = None) -> Iterator[None]:
        """Own the state while starting processes in it: DeployError if another launcher is starting processes
        here, or if a recorded process (of ``names``; default: any) still runs."""
        self.state.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise DeployError(
                f"state {self.state} is locked by another peerkd-deploy starting processes in it "
                f"(for over {LOCK_WAIT_S:g} s; lock file {self._lock.lock_file})"
            ) from None
        try:
            if live := self.running(names):
                who = "SuperLink" if live[0].name == "superlink" else live[0].name
                raise DeployError(
                    f"state {self.state} is in use by a running {who} (pid {live[0].pid}); "
                    f"stop it first: peerkd-deploy stop --state {self.state}"
                )
            yield
        finally:
            self._lock.release()

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Started:
        """Start ``args`` in its own session, log to ``state/<name>.log``, and record it (replacing an earlier,
        exited ``name``); DeployError if a process recorded as ``name`` still runs."""
        with self.claim([name]):
            logf = (self.state / f"{name}.log").open("ab")
            path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
            full_env = {**os.environ, **DEPLOY_ENV, "PATH": path, **(env or {})}
            proc = subprocess.Popen(
                args,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=cwd or self.state,
                start_new_session=True,
            )
            logf.close()
            self._popen.append(proc)
            # Popen returns once the program is exec'd: /proc now shows its own command line (an interpreter
            # in front of a script), the one `stop` compares against.
            start_time, argv = proc_table().get(proc.pid, (0, 0, "", 0))[3], cmdline(proc.pid) or " ".join(args)
            rec = Started(name, proc.pid, start_time, argv)
            kept = [s for s in self.started() if s.name != name]
            write_atomic(self.file, json.dumps([asdict(s) for s in [*kept, rec]], indent=1))
        return rec

    def get(self, name: str) -> Started:
        """The recorded process called ``name``; DeployError if there is none."""
        for s in self.started():
            if s.name == name:
                return s
        raise DeployError(f"no process {name!r} recorded in {self.file}")

    def alive(self, name: str) -> bool:
        """Whether process ``name`` is still running (and still ours)."""
        s = self.get(name)
        return s.pid in process_tree([s])

    def kill(self, name: str) -> set[int]:
        """SIGKILL process ``name`` and everything below it at once (a device losing power); return survivors."""
        tree = process_tree([self.get(name)])
        kill_now(tree)
        self._reap()
        return alive(tree)

    def stop(self, names: list[str] | None = None) -> set[int]:
        """Stop the named processes (default: all, SuperNodes first); return survivors' PIDs."""
        chosen = [s for s in self.started() if names is None or s.name in names]
        nodes = [s for s in chosen if s.name != "superlink"]
        left = stop_processes(nodes) if nodes else set()
        left |= stop_processes([s for s in chosen if s.name == "superlink"])
        self._reap()
        return left

    def _reap(self) -> None:
        """Collect the exit status of our children that have exited."""
        for proc in self._popen:
            proc.poll()


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` at once (a reader sees the old file or the new one, never half of one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _damaged(file: Path, exc: Exception) -> DeployError:
    """The error for a process record that does not parse: what is wrong with it, and what to do by hand."""
    why = exc if isinstance(exc, ValueError) else "not a list of process records"
    pids = _pids_in(file.parent)
    todo = f"stop those still running in its directory by hand (pids {pids})" if pids else "none runs in its directory"
    return DeployError(
        f"{file} is damaged ({why}), so its processes cannot be told apart from others: {todo}; then delete it"
    )


def _pids_in(state: Path) -> str:
    """PIDs of the processes whose working directory is ``state`` (where ``start`` runs them), comma-separated."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/cwd") == str(state):
                pids.append(entry)
        except OSError:
            continue
    return ", ".join(sorted(pids, key=int))
