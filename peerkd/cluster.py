"""Ray cluster arguments, shared by both engines: which Ray a run joins (a cluster at an
address, or a private local instance) and the quiet environment its workers start with."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from peerkd.env import QUIET_ENV
from peerkd.errors import ConfigError

# Seconds to wait for a TCP connection to a cluster's address. ray.init (Ray 2.55) makes a GCS
# client up to 20 times (Node._init_gcs_client, NUM_REDIS_GET_RETRIES), each waiting out the
# client's own connect timeout: minutes on end, which a user sees as a hang.
CONNECT_TIMEOUT_S = 5.0


def ray_init_args(address: str | None) -> dict[str, Any]:
    """``ray.init`` arguments for the sharded engine's driver: ``cluster_args`` and a quiet
    environment for the workers, which import peerkd as this driver does."""
    env = {**QUIET_ENV, "PYTHONPATH": os.pathsep.join(sys.path)}
    base = {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}
    return {**cluster_args(address, base), "runtime_env": {"env_vars": env}}


def cluster_args(address: str | None, init_args: dict[str, Any]) -> dict[str, Any]:
    """``init_args`` for ``ray.init`` on the cluster at ``address`` (``auto``, ``HOST:PORT``),
    or without one on ``"local"``: a private instance, where a bare ``ray.init()`` would join a
    cluster that ``ray start`` left on this machine. Joining a cluster drops ``num_cpus`` and
    ``num_gpus`` (its nodes declare their own)."""
    if not address:
        return {"address": "local", **init_args}
    return {**{k: v for k, v in init_args.items() if k not in ("num_cpus", "num_gpus")}, "address": address}


def check_reachable(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """ConfigError unless a TCP connection to ``address`` (``HOST:PORT``, ``ray://HOST:PORT``)
    opens within ``timeout`` seconds: an address nobody listens on is refused in one line
    before ``ray.init`` retries it. No address, ``local`` and ``auto`` (found by Ray on this
    machine) are not probed; a port that answers but is not Ray's is left to Ray."""
    if not address or address in ("local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    allowed = "HOST:PORT of a running Ray cluster's head, auto, or null (a private local Ray)"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("engine.ray_address", f"{address!r} is not HOST:PORT", allowed)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(
            "engine.ray_address", f"cannot reach Ray at {address} within {timeout:g} s ({exc})", allowed
        ) from None
