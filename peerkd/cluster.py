"""Ray cluster arguments, shared by both engines: which Ray a run joins (a cluster at an
address, or a private local instance) and the quiet environment its workers start with."""

from __future__ import annotations

import os
import sys
from typing import Any

from peerkd.env import QUIET_ENV


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
