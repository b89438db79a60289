"""The processes started from one state directory, recorded in ``DIR/processes.json``.

Every record holds the command line (as ``/proc`` shows it) and start time, so ``stop``
never signals a process that merely reused a PID.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path

from peerkd.deploy.commands import BIN, DEPLOY_ENV
from peerkd.deploy.processes import Started, alive, cmdline, kill_now, proc_table, process_tree, stop_processes

PROCESS_FILE = "processes.json"


class Cluster:
    """The processes started from one state directory (recorded in ``processes.json``)."""

    def __init__(self, state: Path):
        self.state = state.resolve()
        self.state.mkdir(parents=True, exist_ok=True)
        self.file = self.state / PROCESS_FILE
        self._popen: list[subprocess.Popen] = []  # ours to reap (no zombies left in a long-lived caller)

    def started(self) -> list[Started]:
        """Every process recorded so far."""
        return [Started(**d) for d in json.loads(self.file.read_text())] if self.file.exists() else []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Started:
        """Start ``args`` in its own session, log to ``state/<name>.log``, and record it."""
        logf = (self.state / f"{name}.log").open("ab")
        full_env = {**os.environ, **DEPLOY_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
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
        self.file.write_text(json.dumps([asdict(s) for s in [*self.started(), rec]], indent=1))
        return rec

    def get(self, name: str) -> Started:
        """The recorded process called ``name``."""
        for s in self.started():
            if s.name == name:
                return s
        raise KeyError(f"no process {name!r} in {self.file}")

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
