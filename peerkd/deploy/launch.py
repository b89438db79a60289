"""Bringing a cluster up on loopback and submitting runs to it (through the ``flwr`` CLI)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from peerkd.deploy.certs import make_certs, make_node_keys
from peerkd.deploy.cluster import Cluster
from peerkd.deploy.commands import (
    BASELINE_ENV,
    BIN,
    CONNECTION,
    DEPLOY_ENV,
    connection_toml,
    free_ports,
    node_config,
    superlink_args,
    supernode_args,
    write_node_config,
)
from peerkd.deploy.processes import Started, process_tree

__all__ = [
    "CLUSTER_FILE",
    "LocalCluster",
    "NODE_CONFIG",
    "flwr_env",
    "register_nodes",
    "start_local",
    "submit_run",
    "wait_for_port",
    "wait_for_summary",
]

CLUSTER_FILE = "cluster.json"
NODE_CONFIG = "node-config.toml"  # in each SuperNode's home: its --node-config


@dataclass(frozen=True)
class LocalCluster:
    """What ``start_local`` started (also written to ``cluster.json``)."""

    state: str
    fleet: str
    control: str
    flwr_home: str
    secure: bool
    nodes: int

    def write(self) -> None:
        """Save to ``state/cluster.json``, where ``submit_run`` finds the cluster."""
        (Path(self.state) / CLUSTER_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, state: Path) -> LocalCluster:
        """The cluster saved in ``state/cluster.json``."""
        return cls(**json.loads((state / CLUSTER_FILE).read_text()))


def wait_for_port(address: str, timeout: float, proc: Started | None = None) -> None:
    """Return once ``host:port`` accepts TCP connections; RuntimeError after ``timeout`` s or if ``proc`` died."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.pid not in process_tree([proc]):
            raise RuntimeError(f"{proc.name} exited before listening on {address}")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {address} after {timeout:g} s")


def flwr_env(flwr_home: Path) -> dict[str, str]:
    """The environment of `flwr` CLI calls against this cluster."""
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **DEPLOY_ENV, "FLWR_HOME": str(flwr_home), "PATH": path}


def register_nodes(flwr_home: Path, public_keys: list[Path], timeout: float = 90.0) -> None:
    """``flwr supernode register`` each key (concurrently: each call is a CLI start-up of seconds)."""
    procs = [
        subprocess.Popen(
            [str(BIN / "flwr"), "supernode", "register", str(k), CONNECTION],
            env=flwr_env(flwr_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in public_keys
    ]
    failed = []
    for key, proc in zip(public_keys, procs):
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if proc.returncode != 0:
            failed.append(f"{key}: {out[-400:]}")
    if failed:
        raise RuntimeError("flwr supernode register failed: " + " | ".join(failed))


def start_local(
    state: Path,
    nodes: int,
    secure: bool = True,
    students: list[str] | None = None,
    data_paths: list[str] | None = None,
    start_timeout: float = 60.0,
    tuned: bool = True,
) -> LocalCluster:
    """A SuperLink and ``nodes`` SuperNodes on loopback; TLS and node authentication when ``secure``.

    ``tuned=False`` starts it as Flower's defaults would (1 s task polls, 3 s reply pulls,
    no world cache): the baseline of ``bench``. A run's wait for a round's replies is its
    run-config key ``round-timeout`` (s, default 600).
    """
    cluster = Cluster(state)
    extra = {} if tuned else BASELINE_ENV
    link_env = {"FLWR_HOME": str(state / "flwr-home"), **extra}
    state = cluster.state
    fleet_port, control_port, *node_ports = free_ports(2 + nodes)
    fleet, control = f"127.0.0.1:{fleet_port}", f"127.0.0.1:{control_port}"
    certs = make_certs(state / "certs", ["127.0.0.1", "localhost"], force=True) if secure else None
    flwr_home = state / "flwr-home"
    flwr_home.mkdir(exist_ok=True)
    (flwr_home / "config.toml").write_text(connection_toml(control, str(certs / "ca.crt") if certs else None))
    link = cluster.start(
        "superlink", superlink_args(fleet, control, certs, secure, state / "superlink-flwr.log"), env=link_env
    )
    wait_for_port(fleet, start_timeout, link)
    wait_for_port(control, start_timeout, link)
    keys = make_node_keys(state / "keys", nodes, force=True) if secure else [(None, None)] * nodes
    if secure:
        register_nodes(flwr_home, [public for _, public in keys])
    for i, (private, _) in enumerate(keys):
        student = students[i % len(students)] if students else ""
        data_path = data_paths[i] if data_paths and i < len(data_paths) else ""
        config = write_node_config(_node_home(cluster, i) / NODE_CONFIG, node_config(i, nodes, data_path, student))
        args = supernode_args(fleet, config, node_ports[i], certs / "ca.crt" if certs else None, private)
        _start_node(cluster, i, args, extra)
    info = LocalCluster(str(state), fleet, control, str(flwr_home), secure, nodes)
    info.write()
    return info


def _start_node(cluster: Cluster, i: int, args: list[str], extra: dict[str, str]) -> Started:
    """Start SuperNode ``node-i`` with its own FLWR_HOME and the cluster's shared world cache."""
    home = _node_home(cluster, i)
    env = {"FLWR_HOME": str(home), "PEERKD_WORLD_CACHE": str(cluster.state / "world-cache"), **extra}
    return cluster.start(f"node-{i}", args, env=env)


def _node_home(cluster: Cluster, i: int) -> Path:
    """``STATE/node-i``, created: SuperNode i's FLWR_HOME and node config."""
    home = cluster.state / f"node-{i}"
    home.mkdir(exist_ok=True)
    return home


def submit_run(state: Path, run_config: str, app: Path, timeout: float = 120.0) -> int:
    """``flwr run APP peerkd --run-config ...`` against the cluster in ``state``; the run id."""
    info = LocalCluster.read(state)
    res = subprocess.run(
        [str(BIN / "flwr"), "run", str(app), CONNECTION, "--run-config", run_config],
        cwd=app,
        env=flwr_env(Path(info.flwr_home)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    found = re.search(r"Successfully started run (\d+)", res.stdout)
    if res.returncode != 0 or not found:
        raise RuntimeError(f"flwr run failed: {(res.stdout + res.stderr)[-1500:]}")
    return int(found.group(1))


def wait_for_summary(out: Path, cluster: Cluster, timeout: float) -> dict:
    """``out/summary.json`` once written; RuntimeError after ``timeout`` s or if the SuperLink died."""
    deadline = time.monotonic() + timeout
    while not (out / "summary.json").exists():
        if not cluster.alive("superlink"):
            raise RuntimeError(f"the SuperLink exited; see {cluster.state / 'superlink.log'}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {out / 'summary.json'} after {timeout:g} s; see {cluster.state}/*.log")
        time.sleep(0.5)
    time.sleep(0.2)  # summary.json is the last file written
    return json.loads((out / "summary.json").read_text())
