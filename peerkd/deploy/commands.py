"""Command lines and configuration text of the Flower processes (pure: no processes started)."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path
from typing import Any

import tomli_w

from peerkd.env import QUICK_PULLS_ENV, QUIET_ENV
from peerkd.errors import check_choice, check_range

__all__ = [
    "BASELINE_ENV",
    "BIN",
    "CLIENTAPPS",
    "CONNECTION",
    "DEPLOY_ENV",
    "clientapp_args",
    "connection_toml",
    "control_client_address",
    "free_ports",
    "is_loopback",
    "node_config",
    "split_address",
    "superlink_args",
    "supernode_args",
    "write_node_config",
]

BIN = Path(sys.executable).parent
CONNECTION = "peerkd"  # the Flower connection name written to FLWR_HOME/config.toml
# The environment of every process we start. The SuperExec polls for tasks (a ServerApp
# to launch on the SuperLink, a ClientApp per message on a SuperNode) every 1 s by default.
DEPLOY_ENV = {
    **QUIET_ENV,
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # else the SuperLink `uv sync`s a CUDA torch
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
}
CLIENTAPPS = ("warm", "fresh")  # one long-lived ClientApp process per node, or Flower's one per message
BASELINE_ENV = {
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0",
    "PEERKD_GRID_POLL_S": "3",
    "PEERKD_WORLD_CACHE": "",
    QUICK_PULLS_ENV: "0",
}


def node_config(partition_id: int, num_partitions: int, data_path: str = "", student: str = "") -> dict[str, Any]:
    """The node config of one SuperNode (what its ClientApp reads), empty values left out.

    ConfigError unless ``num_partitions >= 1`` and ``0 <= partition_id < num_partitions``.
    """
    check_range("--num-partitions", num_partitions, 1)
    check_range("--partition-id", partition_id, 0, num_partitions, high_open=True)
    items: dict[str, Any] = {"partition-id": partition_id, "num-partitions": num_partitions}
    if data_path:
        items["data-path"] = data_path
    if student:
        items["student"] = student
    return items


def write_node_config(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` as a TOML file for ``flower-supernode --node-config PATH.toml``.

    A TOML writer escapes every value, and Flower reads a ``.toml`` node config with a TOML
    parser: a value with quotes or spaces (``/x" student="cnn_large``) stays one value.
    (Flower's inline ``key=value`` form splits on quotes without escapes, so it cannot.)
    """
    path.write_text(tomli_w.dumps(config))
    return path


def connection_toml(address: str, root_certificates: str | None) -> str:
    """``$FLWR_HOME/config.toml`` with one default connection to a SuperLink's Control API."""
    tls: dict[str, Any] = {"root-certificates": root_certificates} if root_certificates else {"insecure": True}
    return tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: {"address": address, **tls}}})


def control_client_address(bind: str) -> str:
    """Where the ``flwr`` CLI on the SuperLink's own machine reaches a Control API bound to
    ``bind``: loopback for a wildcard bind (``0.0.0.0``, ``::``), else the bound address."""
    host, port = split_address(bind)
    if host in ("0.0.0.0", "::", ""):
        return f"127.0.0.1:{port}"
    return bind


def split_address(address: str) -> tuple[str, str]:
    """``host:port`` (``[v6]:port`` too) as ``(host, port)``; brackets removed."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def superlink_args(fleet: str, http: str, certs: Path | None, auth: bool, log_file: Path) -> list[str]:
    """Command line of a SuperLink (TLS when ``certs`` is given).

    ``http`` (host:port) serves both the Control API (`flwr` CLI) and the Runtime API
    (the ServerApp) over HTTPS in flwr 1.39; ``fleet`` is the SuperNodes' gRPC Fleet API.
    """
    host, port = split_address(http)
    args = [
        str(BIN / "flower-superlink"),
        "--fleet-api-address",
        fleet,
        "--host",
        host,
        "--port",
        port,
        "--log-file",
        str(log_file),
    ]
    if certs is None:
        args.append("--insecure")
    else:
        args += [
            "--ssl-ca-certfile",
            str(certs / "ca.crt"),
            "--ssl-certfile",
            str(certs / "server.pem"),
            "--ssl-keyfile",
            str(certs / "server.key"),
        ]
    return args + (["--enable-supernode-auth"] if auth else [])


def supernode_args(
    superlink: str,
    node_config: Path,
    clientappio_port: int,
    root_cert: Path | None,
    key: Path | None,
    clientapp: str = "warm",
    idle_poll_s: float = 0.0,
) -> list[str]:
    """Command line of a SuperNode (TLS when ``root_cert`` is given, authenticated with ``key``).

    ``node_config`` is the TOML file ``write_node_config`` wrote. ``clientapp``: ``warm`` (the
    SuperNode runs with ``--isolation process`` and serves ``clientapp_args``' long-lived
    process on its Runtime API, port ``clientappio_port``) or ``fresh`` (Flower's default: a
    new ``flwr-clientapp`` process per message). ``idle_poll_s`` > 0 runs it through
    ``peerkd.deploy.fastnode``: its idle poll backs off up to that many seconds instead of
    Flower's fixed 3 s (0: Flower's SuperNode unchanged).
    """
    check_choice("clientapp", clientapp, CLIENTAPPS)
    check_range("idle-poll", idle_poll_s, 0.0, 3.0)
    head = [sys.executable, "-m", "peerkd.deploy.fastnode", f"{idle_poll_s:g}"] if idle_poll_s > 0 else []
    args = [
        *(head or [str(BIN / "flower-supernode")]),
        "--superlink",
        superlink,
        "--node-config",
        str(node_config),
        "--port",
        str(clientappio_port),
    ]
    args += ["--root-certificates", str(root_cert)] if root_cert else ["--insecure"]
    args += ["--isolation", "process"] if clientapp == "warm" else []
    return args + (["--auth-supernode-private-key", str(key)] if key else [])


def clientapp_args(clientappio_port: int, supernode_pid: int) -> list[str]:
    """Command line of the warm ClientApp beside a ``--isolation process`` SuperNode: it serves
    that node's Runtime API on loopback and exits with the SuperNode (``peerkd.deploy.warm``)."""
    address = f"127.0.0.1:{clientappio_port}"
    return [
        sys.executable,
        "-m",
        "peerkd.deploy",
        "clientapp",
        "--runtime-api-address",
        address,
        "--parent-pid",
        str(supernode_pid),
    ]


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` names this machine only (127.0.0.0/8, ``::1``, ``localhost``)."""
    host = split_address(address)[0]
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
