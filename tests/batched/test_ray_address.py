"""A Ray address nobody answers on is refused in one line within a bounded time, before ray.init."""

import socket
import time

import pytest

from peerkd.cluster import check_reachable
from peerkd.errors import ConfigError


def closed_port() -> int:
    """A loopback port that was free a moment ago (bound, then closed): nothing listens on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_closed_port_is_refused_at_once():
    port = closed_port()
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"engine.ray_address: cannot reach Ray at 127.0.0.1:{port} within 0.5 s"):
        check_reachable(f"127.0.0.1:{port}", timeout=0.5)
    assert time.monotonic() - start < 0.5


def test_a_listening_port_passes():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout=0.5)
        check_reachable(f"ray://127.0.0.1:{server.getsockname()[1]}", timeout=0.5)


@pytest.mark.parametrize("address", [None, "", "local", "auto"])
def test_no_address_and_auto_are_not_probed(address):
    check_reachable(address, timeout=0.01)


@pytest.mark.parametrize("address", ["nohost", "host:", "host:port", "127.0.0.1:70000"])
def test_an_address_that_is_not_host_port_is_one_line(address):
    with pytest.raises(ConfigError, match=f"engine.ray_address: '{address}' is not HOST:PORT"):
        check_reachable(address)
