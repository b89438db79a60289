"""Where this process runs, for each reply's info record: the Ray node, host and IP.

Only a process already inside Ray (a Flower simulation's client actor, a batched engine's
worker) has a Ray node; elsewhere (a deployed SuperNode, the in-process batched engine)
the placement is empty. Ray is never imported here: a ClientApp that did not load it
pays nothing.
"""

from __future__ import annotations

import functools
import socket
import sys

from peerkd.wire.protocol import INFO_HOST as KEY_HOST  # its hostname
from peerkd.wire.protocol import INFO_IP as KEY_IP  # the address Ray knows it by
from peerkd.wire.protocol import INFO_RAY_NODE as KEY_NODE  # the Ray node id (hex)


def placement() -> dict[str, str]:
    """``{ray_node, host, ip}`` of this process if it runs inside Ray, else ``{}``."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return {}
    return _node_placement(str(ray.get_runtime_context().get_node_id()))


@functools.cache
def _node_placement(node: str) -> dict[str, str]:
    import ray

    return {KEY_NODE: node, KEY_HOST: socket.gethostname(), KEY_IP: ray.util.get_node_ip_address()}
