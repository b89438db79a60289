"""A real two-node Ray cluster on this machine, for the cluster tests.

Each node is a ``ray start --block`` process in its own process group, with its own CPUs,
resources and explicit free ports, under a private ``--temp-dir`` (a short path: Ray's unix
sockets must stay under 107 characters; a private dir also keeps other processes' bare
``ray.init()`` from finding this cluster). Every port is taken below the kernel's ephemeral
range, distinct across the two nodes: a port picked from the ephemeral range can be taken by any
outgoing connection before Ray binds it, and a Ray process that cannot bind kills ``ray start``
(seen once in CI). A start that still fails is retried once from scratch, and the error carries
the tail of each node's log. Stopping kills those groups by id (never
``ray stop``, which would stop every Ray on the machine) and reports any process of the
cluster that survived (every one names the temp dir on its command line).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

_VENV_RAY = Path(sys.executable).with_name("ray")  # the Ray of this interpreter, not another on PATH
RAY = str(_VENV_RAY) if _VENV_RAY.is_file() else shutil.which("ray") or "ray"


def ray_cli() -> str | None:
    """The ``ray`` command of this environment, or None."""
    return RAY if Path(RAY).is_file() else None


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (32768 if unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _is_free(port: int) -> bool:
    with closing(socket.socket()) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class _Ports:
    """Free ports below the ephemeral range, each handed out once (a run of them for workers)."""

    def __init__(self) -> None:
        low = 10000
        self.high = _ephemeral_low()
        self.next = low + (os.getpid() * 97) % max(1, self.high - low - 2000)

    def take(self, width: int = 1) -> list[int]:
        for _ in range(2):
            while self.next + width <= self.high:
                run = list(range(self.next, self.next + width))
                self.next += width
                if all(_is_free(p) for p in run):
                    return run
            self.next = 10000  # wrapped: start again from the bottom once
        raise RuntimeError("no free ports below the ephemeral range")


@dataclass
class LoopbackCluster:
    """A head and one worker node; ``address`` is what ``ray.init`` / peerkd take."""

    temp_dir: str
    address: str = ""
    nodes: list[subprocess.Popen] = field(default_factory=list)
    ports: _Ports = field(default_factory=_Ports)

    def _node_args(self, cpus: int, resources: str) -> list[str]:
        nm, om, agent, agent_grpc, metrics, renv = (self.ports.take()[0] for _ in range(6))
        workers = self.ports.take(20)
        return [
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            f"--resources={resources}",
            f"--node-manager-port={nm}",
            f"--object-manager-port={om}",
            f"--min-worker-port={workers[0]}",
            f"--max-worker-port={workers[-1]}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={renv}",
            "--disable-usage-stats",
            "--block",
        ]

    def start(self, timeout: float = 90.0, attempts: int = 2) -> None:
        """Start the head, then a node joining it, and wait until both are alive (retried once)."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout)
            except RuntimeError as err:
                logs = self._log_tails()
                self.stop()  # every process of this attempt, survivors included
                if attempt == attempts:
                    raise RuntimeError(f"{err}\n{logs}") from None
                print(f"Ray cluster start failed ({err}); retrying with fresh ports\n{logs}", file=sys.stderr)
                shutil.rmtree(self.temp_dir, ignore_errors=True)
                os.makedirs(self.temp_dir)
                self.nodes = []

    def _start_once(self, timeout: float) -> None:
        gcs, client, dash = (self.ports.take()[0] for _ in range(3))
        self.address = f"127.0.0.1:{gcs}"
        head = [RAY, "start", "--head", f"--port={gcs}", f"--ray-client-server-port={client}"]
        head += ["--include-dashboard=false", f"--dashboard-port={dash}", f"--temp-dir={self.temp_dir}"]
        self._spawn(head + self._node_args(1, '{"pk_head": 1}'))
        self._wait_nodes(1, timeout)
        node = [RAY, "start", f"--address={self.address}"]
        self._spawn(node + self._node_args(1, '{"pk_node2": 1}'))
        self._wait_nodes(2, timeout)

    def _log_tails(self, lines: int = 15) -> str:
        tails = []
        for i in range(len(self.nodes)):
            path = Path(self.temp_dir) / f"node{i}.log"
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else ["(no log)"]
            tails.append(f"--- {path} (last {lines} lines) ---\n" + "\n".join(text))
        return "\n".join(tails)

    def _spawn(self, cmd: list[str]) -> None:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        log = open(Path(self.temp_dir) / f"node{len(self.nodes)}.log", "wb")  # noqa: SIM115  (kept by the process)
        self.nodes.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))

    def _wait_nodes(self, n: int, timeout: float) -> None:
        code = f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); print(len(ray.nodes()))"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.nodes:
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited with {p.returncode}; see {self.temp_dir}/node*.log")
            left = max(1.0, deadline - time.monotonic())
            try:  # a probe that hangs (something else answers on the port) counts as "not up yet"
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=left)
            except subprocess.TimeoutExpired:
                continue
            alive = [int(x) for x in out.stdout.split() if x.isdigit()]
            if alive and alive[-1] >= n:
                return
            time.sleep(1.0)
        raise RuntimeError(f"{n} Ray nodes not up after {timeout:g} s")

    def stop(self) -> list[str]:
        """Kill every node's process group (by id); return the command lines of survivors."""
        for p in reversed(self.nodes):
            _kill_group(p.pid, signal.SIGTERM)
        for p in self.nodes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _kill_group(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        deadline = time.monotonic() + 20
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        survivors = [cmd for _, cmd in left]
        for pid, _ in left:  # ours (they name our temp dir): do not leave them running
            with_kill(pid)
        return survivors

    def processes(self) -> list[tuple[int, str]]:
        """Live processes whose command line names this cluster's temp dir (ours alone)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().split(")")[-1].split()[0]
            except OSError:
                continue
            if self.temp_dir in cmd and state != "Z":
                found.append((int(entry.name), cmd))
        return found


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def with_kill(pid: int) -> None:
    """SIGKILL ``pid`` if it still runs."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def new_temp_dir() -> str:
    """A short private temp dir (Ray's socket paths must stay under 107 characters)."""
    return tempfile.mkdtemp(prefix="pkr", dir="/tmp")
