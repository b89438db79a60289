"""A real two-node Ray cluster on this machine, for the cluster tests.

Each node is a ``ray start --block`` process in its own process group, with its own CPUs,
resources and explicit free ports, under a private ``--temp-dir`` (a short path: Ray's unix
sockets must stay under 107 characters; a private dir also keeps other processes' bare
``ray.init()`` from finding this cluster). Stopping kills those groups by id (never
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

from peerkd.deploy import free_ports

_VENV_RAY = Path(sys.executable).with_name("ray")  # the Ray of this interpreter, not another on PATH
RAY = str(_VENV_RAY) if _VENV_RAY.is_file() else shutil.which("ray") or "ray"


def ray_cli() -> str | None:
    """The ``ray`` command of this environment, or None."""
    return RAY if Path(RAY).is_file() else None


def _free_range(width: int) -> tuple[int, int]:
    """A run of ``width`` ports that are free now (for a node's worker ports)."""
    for start in range(20000 + os.getpid() % 20000, 60000, width):
        if all(_is_free(p) for p in range(start, start + width)):
            return start, start + width - 1
    raise RuntimeError("no free port range")


def _is_free(port: int) -> bool:
    with closing(socket.socket()) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class LoopbackCluster:
    """A head and one worker node; ``address`` is what ``ray.init`` / peerkd take."""

    temp_dir: str
    address: str = ""
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def _node_args(self, cpus: int, resources: str, worker_ports: tuple[int, int]) -> list[str]:
        nm, om, agent, agent_grpc, metrics, renv = free_ports(6)
        return [
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            f"--resources={resources}",
            f"--node-manager-port={nm}",
            f"--object-manager-port={om}",
            f"--min-worker-port={worker_ports[0]}",
            f"--max-worker-port={worker_ports[1]}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={renv}",
            "--disable-usage-stats",
            "--block",
        ]

    def start(self, timeout: float = 90.0) -> None:
        """Start the head, then a node joining it, and wait until both are alive."""
        gcs, client, dash = free_ports(3)
        self.address = f"127.0.0.1:{gcs}"
        head = [RAY, "start", "--head", f"--port={gcs}", f"--ray-client-server-port={client}"]
        head += ["--include-dashboard=false", f"--dashboard-port={dash}", f"--temp-dir={self.temp_dir}"]
        self._spawn(head + self._node_args(1, '{"pk_head": 1}', _free_range(20)))
        self._wait_nodes(1, timeout)
        node = [RAY, "start", f"--address={self.address}"]
        self._spawn(node + self._node_args(1, '{"pk_node2": 1}', _free_range(20)))
        self._wait_nodes(2, timeout)

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
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
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
