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
from peerkd.deploy.cluster import Cluster, DeployError, write_atomic
from peerkd.deploy.commands import (
    BASELINE_ENV,
    BIN,
    CONNECTION,
    DEPLOY_ENV,
    clientapp_args,
    connection_toml,
    free_ports,
    node_config,
    superlink_args,
    supernode_args,
    write_node_config,
)
from peerkd.deploy.processes import Started, process_tree
from peerkd.errors import check_choice, check_range

__all__ = [
    "CLUSTER_FILE",
    "DEFAULT_SETUP",
    "LocalCluster",
    "NodeSetup",
    "SETUPS",
    "NODE_CONFIG",
    "flwr_env",
    "node_environment",
    "node_home",
    "output_reason",
    "register_nodes",
    "setup_env",
    "start_local",
    "start_node",
    "submit_run",
    "wait_for_port",
    "wait_for_summary",
]

CLUSTER_FILE = "cluster.json"
NODE_CONFIG = "node-config.toml"  # in each SuperNode's home: its --node-config


@dataclass(frozen=True)
class NodeSetup:
    """How a cluster's SuperNodes run: what ``peerkd-deploy bench`` compares.

    ``clientapp``: ``warm`` (one long-lived ClientApp process per node) or ``fresh`` (Flower's
    process per message); ``idle_poll_s``: the SuperNode's longest idle wait (0: Flower's fixed
    3 s, unpatched); ``tuned``: the SuperExec's 0.1 s task poll, the ServerApp's 0.2 s reply
    pulls and the world cache (False: Flower's 1 s and 3 s, no cache).
    """

    clientapp: str = "warm"
    idle_poll_s: float = 1.0
    tuned: bool = True


SETUPS = {
    "flower": NodeSetup("fresh", 0.0, False),  # Flower 1.39's defaults
    "cached": NodeSetup("fresh", 0.0, True),  # peerkd's settings before warm ClientApps
    "warm": NodeSetup("warm", 0.0, True),  # warm ClientApps, Flower's SuperNode unchanged
    "warm-fast": NodeSetup("warm", 1.0, True),  # the default: warm, and the idle poll patched
}
DEFAULT_SETUP = "warm-fast"


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
        write_atomic(Path(self.state) / CLUSTER_FILE, json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, state: Path) -> LocalCluster:
        """The cluster saved in ``state/cluster.json``; DeployError if there is none or it is damaged."""
        path = state / CLUSTER_FILE
        if not path.is_file():
            raise DeployError(
                f"no cluster in {state} (no {CLUSTER_FILE}); start one: peerkd-deploy local --state {state}"
            )
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:  # not JSON (ValueError), or not this record's fields (TypeError)
            why = exc if isinstance(exc, ValueError) else "not a cluster record"
            raise DeployError(
                f"{path} is damaged ({why}); start the cluster again: peerkd-deploy stop --state {state}, then local"
            ) from None


def wait_for_port(address: str, timeout: float, proc: Started | None = None) -> None:
    """Return once ``host:port`` accepts TCP connections; DeployError after ``timeout`` s or if ``proc`` died."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.pid not in process_tree([proc]):
            raise DeployError(f"{proc.name} exited before listening on {address}")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise DeployError(f"nothing listens on {address} after {timeout:g} s")


def flwr_env(flwr_home: Path) -> dict[str, str]:
    """The environment of `flwr` CLI calls against this cluster."""
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **DEPLOY_ENV, "FLWR_HOME": str(flwr_home), "PATH": path}


def register_nodes(
    flwr_home: Path, public_keys: list[Path], timeout: float = 90.0, prefix: list[str] | None = None, where: str = ""
) -> None:
    """``flwr supernode register`` each key (concurrently: each call is a CLI start-up of seconds).

    ``prefix`` goes in front of each command (``ip netns exec NS``: where the Control API is reachable);
    ``where`` names that place in the error.
    """
    procs = [
        subprocess.Popen(
            [*(prefix or []), str(BIN / "flwr"), "supernode", "register", str(k), CONNECTION],
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
            failed.append(f"{key}: {output_reason(out)}")
    if failed:
        raise DeployError(f"flwr supernode register{where} failed: " + " | ".join(failed))


def setup_env(setup: str, node_env: dict[str, str] | None, field: str) -> tuple[NodeSetup, dict[str, str]]:
    """The ``SETUPS`` entry named ``setup`` (ConfigError naming ``field`` otherwise) and the environment
    every process of such a cluster gets: Flower's defaults for an untuned setup, then ``node_env``."""
    how = SETUPS[check_choice(field, setup, SETUPS)]
    return how, {**({} if how.tuned else BASELINE_ENV), **(node_env or {})}


def start_local(
    state: Path,
    nodes: int,
    secure: bool = True,
    students: list[str] | None = None,
    data_paths: list[str] | None = None,
    start_timeout: float = 60.0,
    setup: str = DEFAULT_SETUP,
    node_env: dict[str, str] | None = None,
) -> LocalCluster:
    """A SuperLink and ``nodes`` SuperNodes on loopback; TLS and node authentication when ``secure``.

    ``setup`` names a ``SETUPS`` entry: by default each SuperNode gets a warm ClientApp
    (``peerkd.deploy.warm``) and a 1 s idle poll (``peerkd.deploy.fastnode``); ``flower`` starts
    it as Flower's defaults would, the baseline of ``bench``. ``node_env`` is added to every
    SuperNode's (and its ClientApps') environment. A run's wait for a round's replies is its
    run-config key ``round-timeout`` (s, default 600).

    A state whose processes still run is refused (DeployError) before anything in it changes;
    the state's own CA and node keys are made afresh for each cluster. If start-up fails, what
    it started is stopped.
    """
    check_range("--nodes", nodes, 1)
    how, extra = setup_env(setup, node_env, "--setup")
    cluster = Cluster(state)
    with cluster.claim():
        try:
            return _start_cluster(cluster, nodes, secure, students or [], data_paths or [], start_timeout, how, extra)
        except BaseException:  # Ctrl-C included: no half cluster left running
            cluster.stop()
            raise


def _start_cluster(
    cluster: Cluster,
    nodes: int,
    secure: bool,
    students: list[str],
    data_paths: list[str],
    start_timeout: float,
    setup: NodeSetup,
    extra: dict[str, str],
) -> LocalCluster:
    """``start_local`` in a state directory it owns; ``extra``: environment of every process it starts."""
    state = cluster.state
    fleet_port, control_port, *node_ports = free_ports(2 + nodes)
    fleet, control = f"127.0.0.1:{fleet_port}", f"127.0.0.1:{control_port}"
    certs = make_certs(state / "certs", ["127.0.0.1", "localhost"], force=True) if secure else None
    flwr_home = state / "flwr-home"
    flwr_home.mkdir(exist_ok=True)
    (flwr_home / "config.toml").write_text(connection_toml(control, str(certs / "ca.crt") if certs else None))
    link_args = superlink_args(fleet, control, certs, secure, state / "superlink-flwr.log")
    link = cluster.start("superlink", link_args, env={"FLWR_HOME": str(flwr_home), **extra})
    wait_for_port(fleet, start_timeout, link)
    wait_for_port(control, start_timeout, link)
    keys = make_node_keys(state / "keys", nodes, force=True) if secure else [(None, None)] * nodes
    if secure:
        register_nodes(flwr_home, [public for _, public in keys])
    for i, (private, _) in enumerate(keys):
        student = students[i % len(students)] if students else ""
        data_path = data_paths[i] if i < len(data_paths) else ""
        config = write_node_config(
            node_home(state, f"node-{i}") / NODE_CONFIG, node_config(i, nodes, data_path, student)
        )
        ca = certs / "ca.crt" if certs else None
        args = supernode_args(fleet, config, node_ports[i], ca, private, setup.clientapp, setup.idle_poll_s)
        start_node(cluster, f"node-{i}", args, node_ports[i] if setup.clientapp == "warm" else None, extra)
    info = LocalCluster(str(state), fleet, control, str(flwr_home), secure, nodes)
    info.write()
    return info


def start_node(
    cluster: Cluster, name: str, args: list[str], warm_port: int | None, extra: dict[str, str] | None = None
) -> Started:
    """Start SuperNode ``name`` (``supernode_args``) with its own FLWR_HOME and the cluster's world cache;
    with ``warm_port`` (its Runtime API port), also its warm ClientApp, recorded as ``name-app``."""
    env = node_environment(cluster.state, name, extra)
    node = cluster.start(name, args, env=env)
    if warm_port is not None:
        cluster.start(f"{name}-app", clientapp_args(warm_port, node.pid), env=env)
    return node


def node_home(state: Path, name: str) -> Path:
    """``STATE/name``, created: a SuperNode's FLWR_HOME and node config."""
    home = state / name
    home.mkdir(exist_ok=True)
    return home


def node_environment(state: Path, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of SuperNode ``name`` and its warm ClientApp: its own FLWR_HOME (``node_home``),
    the cluster's world cache, then ``extra``."""
    return {"FLWR_HOME": str(node_home(state, name)), "PEERKD_WORLD_CACHE": str(state / "world-cache"), **(extra or {})}


def submit_run(state: Path, run_config: str, app: Path, timeout: float = 120.0) -> int:
    """``flwr run APP peerkd --run-config ...`` against the cluster in ``state``; the run id.

    DeployError (one line) without a cluster, with a SuperLink that is not running, or when ``flwr run`` fails.
    """
    info = LocalCluster.read(state)
    link = next((s for s in Cluster(state).started() if s.name == "superlink"), None)
    if link is not None and link.pid not in process_tree([link]):
        raise DeployError(
            f"the SuperLink of {state} (pid {link.pid}) is not running; start the cluster again: "
            f"peerkd-deploy stop --state {state}, then local (or superlink)"
        )
    try:
        res = subprocess.run(
            [str(BIN / "flwr"), "run", str(app), CONNECTION, "--run-config", run_config],
            cwd=app,
            env=flwr_env(Path(info.flwr_home)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise DeployError(f"flwr run did not return within {timeout:g} s (SuperLink at {info.control})") from None
    found = re.search(r"Successfully started run (\d+)", res.stdout)
    if res.returncode != 0 or not found:
        raise DeployError(f"flwr run failed: {output_reason(res.stdout + res.stderr)}")
    return int(found.group(1))


def output_reason(output: str) -> str:
    """The reason in a program's output, on one line: the text of the last boxed ``Error`` panel the ``flwr``
    CLI draws, else the last non-empty line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    box = [i for i, ln in enumerate(lines) if ln.startswith("╭")]
    if box:
        inner = [ln.strip("│ ") for ln in lines[box[-1] + 1 :] if ln.startswith("│")]
        return " ".join(inner)
    return lines[-1] if lines else "(no output)"


def wait_for_summary(out: Path, cluster: Cluster, timeout: float) -> dict:
    """``out/summary.json`` once written; DeployError after ``timeout`` s or if the SuperLink died."""
    deadline = time.monotonic() + timeout
    while not (out / "summary.json").exists():
        if not cluster.alive("superlink"):
            raise DeployError(f"the SuperLink exited; see {cluster.state / 'superlink.log'}")
        if time.monotonic() > deadline:
            raise DeployError(f"no {out / 'summary.json'} after {timeout:g} s; see {cluster.state}/*.log")
        time.sleep(0.5)
    time.sleep(0.2)  # summary.json is the last file written
    try:
        return json.loads((out / "summary.json").read_text())
    except ValueError as exc:
        raise DeployError(f"{out / 'summary.json'} is not readable JSON ({exc})") from None
