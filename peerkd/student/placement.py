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

KEY_NODE = "ray_node"  # the Ray node id (hex)
KEY_HOST = "host"  # its hostname
KEY_IP = "ip"  # the address Ray knows it by


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
