"""Command lines and configuration text of the Flower processes (pure: no processes started)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from peerkd.env import QUIET_ENV

__all__ = [
    "BASELINE_ENV",
    "BIN",
    "CONNECTION",
    "DEPLOY_ENV",
    "connection_toml",
    "free_ports",
    "is_loopback",
    "node_config_string",
    "superlink_args",
    "supernode_args",
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
BASELINE_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0", "PEERKD_GRID_POLL_S": "3", "PEERKD_WORLD_CACHE": ""}


def node_config_string(partition_id: int, num_partitions: int, data_path: str = "", student: str = "") -> str:
    """The ``--node-config`` value of one SuperNode (TOML values, space separated)."""
    items = [f"partition-id={partition_id}", f"num-partitions={num_partitions}"]
    if data_path:
        items.append(f'data-path="{data_path}"')
    if student:
        items.append(f'student="{student}"')
    return " ".join(items)


def connection_toml(address: str, root_certificates: str | None) -> str:
    """``$FLWR_HOME/config.toml`` with one default connection to a SuperLink's Control API."""
    tls = f'root-certificates = "{root_certificates}"' if root_certificates else "insecure = true"
    return f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{tls}\n'


def superlink_args(fleet: str, http: str, certs: Path | None, auth: bool, log_file: Path) -> list[str]:
    """Command line of a SuperLink (TLS when ``certs`` is given).

    ``http`` (host:port) serves both the Control API (`flwr` CLI) and the Runtime API
    (the ServerApp) over HTTPS in flwr 1.39; ``fleet`` is the SuperNodes' gRPC Fleet API.
    """
    host, port = http.rsplit(":", 1)
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
    superlink: str, node_config: str, clientappio_port: int, root_cert: Path | None, key: Path | None
) -> list[str]:
    """Command line of a SuperNode (TLS when ``root_cert`` is given, authenticated with ``key``)."""
    args = [
        str(BIN / "flower-supernode"),
        "--superlink",
        superlink,
        "--node-config",
        node_config,
        "--port",
        str(clientappio_port),
    ]
    args += ["--root-certificates", str(root_cert)] if root_cert else ["--insecure"]
    return args + (["--auth-supernode-private-key", str(key)] if key else [])


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` names this machine only."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


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
