"""A cluster with real network boundaries: the SuperLink and every SuperNode in a Linux network namespace.

Root only (``ip netns``, iproute2). The topology is a star of veth pairs, one per node, with no
bridge and no forwarding, so the nodes reach the SuperLink and nothing else (not each other, not
the host, no default route). Every address comes from the benchmarking range 198.18.0.0/15
(RFC 2544), which no real network uses::

    PREFIX-link   lo 127.0.0.1 + 198.18.0.1/32 (the SuperLink: Fleet API 198.18.0.1:9092,
                  Control/Runtime API 127.0.0.1:9093, so only the link's own namespace reaches it)
                  l<i>  198.18.<i+1>.1/30     <- veth pair ->   PREFIX-n<i>  eth0  198.18.<i+1>.2/30
                                                                             route 198.18.0.1 via 198.18.<i+1>.1

``Namespaces.link_down(i)`` sets the link's end of node i's pair down (a cable pulled at the
switch): node i's packets go nowhere, its TCP connections stay open, waiting; ``link_up(i)``
puts it back. Ports are per namespace, so every namespace uses Flower's default ports.

IPv6 is off in every namespace (no link-local addresses, no router solicitations): the addresses
above are the only ones in use.

``ip netns exec NS PROGRAM`` execs PROGRAM in place (same PID), so ``Cluster`` records and stops
these processes as any other; the record is taken once the exec happened (``start_in``). Tear down
with ``teardown(cluster, spaces)``: the processes first (a namespace lives on while a process is in
it), then the namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from peerkd.deploy.certs import make_certs, make_node_keys
from peerkd.deploy.cluster import Cluster, DeployError, write_atomic
from peerkd.deploy.commands import (
    BIN,
    CONNECTION,
    clientapp_args,
    connection_toml,
    node_config,
    superlink_args,
    supernode_args,
    write_node_config,
)
from peerkd.deploy.launch import (
    DEFAULT_SETUP,
    NODE_CONFIG,
    NodeSetup,
    flwr_env,
    node_environment,
    node_home,
    output_reason,
    register_nodes,
    setup_env,
)
from peerkd.deploy.processes import Started, cmdline, proc_table, process_tree
from peerkd.errors import check_range

__all__ = [
    "CLIENTAPPIO_PORT",
    "CONTROL",
    "FLEET_PORT",
    "LINK_ADDRESS",
    "NET",
    "Namespaces",
    "NetnsCluster",
    "exec_args",
    "listed_namespaces",
    "netns_unavailable",
    "processes_in",
    "register_nodes_in",
    "start_in",
    "start_netns_cluster",
    "submit_run_in",
    "teardown",
    "wait_for_port_in",
]

NET = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking range: every address here comes from it
LINK_ADDRESS = "198.18.0.1"  # the SuperLink's address (on the link namespace's lo), the certificate's IP SAN
FLEET_PORT, CONTROL_PORT, CLIENTAPPIO_PORT = 9092, 9093, 9094  # Flower's defaults: each namespace has its own
CONTROL = f"127.0.0.1:{CONTROL_PORT}"  # the Control/Runtime API, on the link namespace's loopback only
IP = shutil.which("ip") or "/usr/sbin/ip"
MAX_NODES = 254  # node i's pair is 198.18.<i+1>.0/30


def exec_args(ns: str, args: list[str]) -> list[str]:
    """``args`` run inside network namespace ``ns``: ``["ip", "netns", "exec", ns, *args]`` (same PID: ip execs)."""
    return [IP, "netns", "exec", ns, *args]


def _ip(*args: str, what: str) -> None:
    """Run ``ip ARGS``; DeployError naming ``what`` failed, the command and ip's own message."""
    res = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise DeployError(f"{what} failed: ip {' '.join(args)}: {output_reason(res.stderr + res.stdout)}")


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here (not root, no ``ip``, creating one, a veth pair in it or
    running a program in it fails), or None if they can.

    Creates and deletes one namespace (``pk<pid>-probe``) to find out.
    """
    if os.geteuid() != 0:
        return f"network namespaces need root (ip netns add); running as uid {os.geteuid()}"
    if not shutil.which("ip"):
        return "no `ip` command (iproute2) on PATH"
    probe = f"pk{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe, what="creating a network namespace")
    except (DeployError, OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    try:
        _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1", what="creating a veth pair")
        _ip("netns", "exec", probe, "true", what="running a program in a network namespace")
    except (DeployError, OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        subprocess.run([IP, "netns", "del", probe], capture_output=True, timeout=30)
    return None


def _no_ipv6(ns: str) -> None:
    """IPv6 off in ``ns`` (its interfaces get no link-local address and send no router solicitations):
    the only addresses in use are those this module assigns. Nothing to do where the kernel has no IPv6."""
    if not Path("/proc/sys/net/ipv6").is_dir():
        return
    script = "for c in all default; do echo 1 > /proc/sys/net/ipv6/conf/$c/disable_ipv6; done"
    res = subprocess.run(exec_args(ns, ["sh", "-c", script]), capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise DeployError(f"turning IPv6 off in namespace {ns} failed: {output_reason(res.stderr)}")


class Namespaces:
    """A link namespace and ``nodes`` node namespaces joined by veth pairs (the module's topology).

    Names carry a per-run prefix (default ``pk<pid>``): ``PREFIX-link``, ``PREFIX-n0`` ...
    ``create`` builds everything (DeployError naming the failed step; what it made is deleted);
    ``delete`` removes every namespace this object created, and is safe to call again.
    Use as a context manager: created on entry, deleted on exit.
    """

    def __init__(self, nodes: int, prefix: str | None = None):
        check_range("nodes", nodes, 1, MAX_NODES)
        self.nodes, self.prefix = nodes, prefix or f"pk{os.getpid()}"
        self.link = f"{self.prefix}-link"
        self.created: list[str] = []
        self.ids: dict[str, tuple[int, int]] = {}  # namespace -> (st_dev, st_ino) of its /run/netns file

    def node(self, i: int) -> str:
        """Name of node ``i``'s namespace."""
        return f"{self.prefix}-n{i}"

    @property
    def names(self) -> list[str]:
        """Every namespace of the topology, the link's first."""
        return [self.link, *(self.node(i) for i in range(self.nodes))]

    @staticmethod
    def node_address(i: int) -> str:
        """Node ``i``'s address (its ``eth0``)."""
        return str(NET[(i + 1) * 256 + 2])

    @staticmethod
    def port_address(i: int) -> str:
        """The link's address on node ``i``'s pair (its ``l<i>``): node i's gateway to ``LINK_ADDRESS``."""
        return str(NET[(i + 1) * 256 + 1])

    def create(self) -> Namespaces:
        """Create the namespaces, veth pairs, addresses and routes; return self."""
        if self.created:
            raise DeployError(f"namespaces {self.prefix}-* are already created by this object: {self.created}")
        try:
            for ns in self.names:
                _ip("netns", "add", ns, what=f"creating namespace {ns}")
                self.created.append(ns)
                st = os.stat(f"/run/netns/{ns}")
                self.ids[ns] = (st.st_dev, st.st_ino)
                _no_ipv6(ns)
                _ip("-n", ns, "link", "set", "lo", "up", what=f"lo up in {ns}")
            _ip(
                "-n", self.link, "addr", "add", f"{LINK_ADDRESS}/32", "dev", "lo", what=f"{LINK_ADDRESS} on {self.link}"
            )
            for i in range(self.nodes):
                self._pair(i)
        except BaseException:
            self.delete()
            raise
        return self

    def _pair(self, i: int) -> None:
        """Node ``i``'s veth pair (``l<i>`` in the link namespace, ``eth0`` in the node's), up, addressed, routed."""
        ns, port = self.node(i), f"l{i}"
        what = f"node {i}'s link ({self.link} {port} <-> {ns} eth0)"
        _ip("-n", self.link, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns, what=what)
        _ip("-n", self.link, "addr", "add", f"{self.port_address(i)}/30", "dev", port, what=what)
        _ip("-n", ns, "addr", "add", f"{self.node_address(i)}/30", "dev", "eth0", what=what)
        _ip("-n", self.link, "link", "set", port, "up", what=what)
        _ip("-n", ns, "link", "set", "eth0", "up", what=what)
        _ip("-n", ns, "route", "add", f"{LINK_ADDRESS}/32", "via", self.port_address(i), what=what)

    def link_down(self, i: int) -> list[str]:
        """Take node ``i``'s link down at the link's end; return the ``ip`` command used."""
        return self._set_link(i, "down")

    def link_up(self, i: int) -> list[str]:
        """Bring node ``i``'s link back up; return the ``ip`` command used."""
        return self._set_link(i, "up")

    def _set_link(self, i: int, state: str) -> list[str]:
        check_range("node", i, 0, self.nodes, high_open=True)
        args = ["-n", self.link, "link", "set", f"l{i}", state]
        _ip(*args, what=f"setting node {i}'s link {state}")
        return ["ip", *args]

    def delete(self) -> list[str]:
        """Delete every namespace this object created (again: nothing to do); return those still listed after."""
        for ns in reversed(self.created):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=30)
        listed = set(listed_namespaces())
        self.created = [ns for ns in self.created if ns in listed]
        return list(self.created)

    def __enter__(self) -> Namespaces:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()


def listed_namespaces() -> list[str]:
    """The names ``ip netns list`` shows."""
    res = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def processes_in(ids: dict[str, tuple[int, int]]) -> dict[int, str]:
    """PID -> namespace name of every process whose network namespace is one of ``ids`` (``Namespaces.ids``).

    A namespace lives on while a process is in it, even once ``ip netns del`` removed its name:
    after a teardown this should be empty.
    """
    by_id = {v: k for k, v in ids.items()}
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in by_id:
                found[int(entry)] = by_id[(st.st_dev, st.st_ino)]
    return found


def teardown(cluster: Cluster, spaces: Namespaces) -> list[str]:
    """Stop every process of ``cluster`` (``Cluster.stop``), then delete ``spaces``; return what survived, one
    line each (empty: nothing). A process still inside one of the namespaces keeps it alive unnamed: it is
    reported, never signalled (it was not recorded)."""
    ids = dict(spaces.ids)
    left = cluster.stop()
    listed = spaces.delete()
    inside = processes_in(ids)
    problems = [f"pid {pid} still running" for pid in sorted(left)]
    problems += [f"namespace {ns} still listed by ip netns" for ns in listed]
    return problems + [f"pid {pid} ({cmdline(pid)}) still inside namespace {ns}" for pid, ns in sorted(inside.items())]


def start_in(
    cluster: Cluster, ns: str, name: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 10.0
) -> Started:
    """``cluster.start(name, args)`` inside namespace ``ns``; the record names the program, not ``ip``.

    ``Cluster.start`` reads the command line right after the start, possibly while it is still
    ``ip netns exec ...``: once ip has exec'd the program (same PID), the record is updated to the
    program's own command line, the one ``stop`` checks. While the exec is under way ``/proc`` shows
    an empty command line: that is waited out too. DeployError if it exits before that.
    """
    rec = cluster.start(name, exec_args(ns, args), env=env)
    wrapper = " ".join(exec_args(ns, []))
    deadline = time.monotonic() + timeout
    while (now := _settling(rec.pid, wrapper)) is not None and (now == "" or now.startswith(wrapper)):
        if time.monotonic() > deadline:
            raise DeployError(f"{name}: `ip netns exec {ns}` did not start {args[0]} within {timeout:g} s")
        time.sleep(0.01)
    if now is None or rec.pid not in process_tree([Started(name, rec.pid, rec.start_time, now)]):
        log = cluster.state / f"{name}.log"
        tail = output_reason(log.read_text(errors="replace")) if log.exists() else "(no log)"
        raise DeployError(f"{name} exited as it started in namespace {ns}: {tail}")
    if now == rec.cmdline:
        return rec
    settled = Started(name, rec.pid, rec.start_time, now)
    with cluster.claim([]):  # the state's lock, while the record is rewritten
        kept = [s for s in cluster.started() if s.name != name]
        write_atomic(cluster.file, json.dumps([asdict(s) for s in [*kept, settled]], indent=1))
    return settled


def _settling(pid: int, wrapper: str) -> str | None:
    """Process ``pid``'s command line; "" while an exec is under way; None once it has exited (gone, or
    a zombie: whose command line also reads empty)."""
    now = cmdline(pid)
    if now == "" and proc_table().get(pid, (0, 0, "Z", 0))[2] == "Z":
        return None
    return now


def wait_for_port_in(ns: str, address: str, timeout: float, proc: Started | None = None) -> None:
    """Return once ``host:port`` accepts TCP connections from inside namespace ``ns``; DeployError after
    ``timeout`` s or if ``proc`` died."""
    host, port = address.rsplit(":", 1)
    probe = f"import socket; socket.create_connection(({host!r}, {int(port)}), timeout=1).close()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.pid not in process_tree([proc]):
            raise DeployError(f"{proc.name} exited before listening on {address} (namespace {ns})")
        res = subprocess.run(exec_args(ns, [sys.executable, "-S", "-c", probe]), capture_output=True, timeout=10)
        if res.returncode == 0:
            return
        time.sleep(0.2)
    raise DeployError(f"nothing listens on {address} in namespace {ns} after {timeout:g} s")


def register_nodes_in(ns: str, flwr_home: Path, public_keys: list[Path], timeout: float = 90.0) -> None:
    """``flwr supernode register`` each key from inside namespace ``ns`` (where the Control API is), concurrently."""
    register_nodes(flwr_home, public_keys, timeout, prefix=exec_args(ns, []), where=f" (in namespace {ns})")


@dataclass(frozen=True)
class NetnsCluster:
    """What ``start_netns_cluster`` started (also written to ``state/netns-cluster.json``)."""

    state: str
    link_ns: str  # the SuperLink's namespace: run the `flwr` CLI here (``submit_run_in``)
    node_ns: list[str]  # node i's namespace
    fleet: str  # LINK_ADDRESS:FLEET_PORT, what the SuperNodes connect to (TLS, verified against the IP SAN)
    control: str  # CONTROL, on the link namespace's loopback
    flwr_home: str
    certs: str
    nodes: int

    def write(self) -> None:
        """Save to ``state/netns-cluster.json``."""
        write_atomic(Path(self.state) / "netns-cluster.json", json.dumps(asdict(self), indent=1))


def start_netns_cluster(
    state: Path,
    spaces: Namespaces,
    students: list[str] | None = None,
    data_paths: list[str] | None = None,
    start_timeout: float = 60.0,
    setup: str = DEFAULT_SETUP,
    node_env: dict[str, str] | None = None,
) -> NetnsCluster:
    """A TLS + node-authentication cluster across ``spaces`` (created): the SuperLink in ``spaces.link``
    bound to ``LINK_ADDRESS``, SuperNode i in ``spaces.node(i)`` (node config: partition i of ``spaces.nodes``).

    As ``peerkd.deploy.launch.start_local`` otherwise (``setup``: a ``SETUPS`` name, ``node_env``: added to
    every SuperNode's and ClientApp's environment): the state's own CA (IP SANs ``LINK_ADDRESS`` and
    127.0.0.1, the Control API's address inside the link namespace) and node keys, made afresh; keys
    registered with ``flwr supernode register`` inside the link namespace; DeployError naming the step that
    failed, after stopping what it started. Stop with ``Cluster(state).stop()``, then ``spaces.delete()``.
    """
    how, extra = setup_env(setup, node_env, "setup")
    cluster = Cluster(state)
    with cluster.claim():
        try:
            return _start_netns(cluster, spaces, students or [], data_paths or [], start_timeout, how, extra)
        except BaseException:  # Ctrl-C included: no half cluster left running
            cluster.stop()
            raise


def _start_netns(
    cluster: Cluster,
    spaces: Namespaces,
    students: list[str],
    data_paths: list[str],
    start_timeout: float,
    setup: NodeSetup,
    extra: dict[str, str],
) -> NetnsCluster:
    """``start_netns_cluster`` in a state directory it owns; ``extra``: environment of every process it starts."""
    state, n = cluster.state, spaces.nodes
    fleet = f"{LINK_ADDRESS}:{FLEET_PORT}"
    certs = make_certs(state / "certs", [LINK_ADDRESS, "127.0.0.1"], force=True)
    flwr_home = state / "flwr-home"
    flwr_home.mkdir(exist_ok=True)
    (flwr_home / "config.toml").write_text(connection_toml(CONTROL, str(certs / "ca.crt")))
    link_args = superlink_args(fleet, CONTROL, certs, True, state / "superlink-flwr.log")
    link = start_in(cluster, spaces.link, "superlink", link_args, env={"FLWR_HOME": str(flwr_home), **extra})
    wait_for_port_in(spaces.link, fleet, start_timeout, link)
    wait_for_port_in(spaces.link, CONTROL, start_timeout, link)
    keys = make_node_keys(state / "keys", n, force=True)
    register_nodes_in(spaces.link, flwr_home, [public for _, public in keys])
    for i, (private, _) in enumerate(keys):
        home = node_home(state, f"node-{i}")
        student = students[i % len(students)] if students else ""
        config = write_node_config(
            home / NODE_CONFIG, node_config(i, n, data_paths[i] if i < len(data_paths) else "", student)
        )
        ca, port = certs / "ca.crt", CLIENTAPPIO_PORT
        args = supernode_args(fleet, config, port, ca, private, setup.clientapp, setup.idle_poll_s)
        env = node_environment(state, f"node-{i}", extra)
        node = start_in(cluster, spaces.node(i), f"node-{i}", args, env=env)
        if setup.clientapp == "warm":
            start_in(cluster, spaces.node(i), f"node-{i}-app", clientapp_args(CLIENTAPPIO_PORT, node.pid), env=env)
    info = NetnsCluster(
        str(state), spaces.link, [spaces.node(i) for i in range(n)], fleet, CONTROL, str(flwr_home), str(certs), n
    )
    info.write()
    return info


def submit_run_in(info: NetnsCluster, run_config: str, app: Path, timeout: float = 120.0) -> int:
    """``flwr run APP peerkd --run-config ...`` inside the link namespace; the run id.

    DeployError (one line) if the SuperLink is not running or ``flwr run`` fails.
    """
    if not Cluster(Path(info.state)).alive("superlink"):
        raise DeployError(f"the SuperLink of {info.state} is not running (namespace {info.link_ns})")
    args = [str(BIN / "flwr"), "run", str(app), CONNECTION, "--run-config", run_config]
    try:
        res = subprocess.run(
            exec_args(info.link_ns, args),
            cwd=app,
            env=flwr_env(Path(info.flwr_home)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise DeployError(
            f"flwr run did not return within {timeout:g} s (SuperLink at {info.control} in {info.link_ns})"
        ) from None
    found = re.search(r"Successfully started run (\d+)", res.stdout)
    if res.returncode != 0 or not found:
        raise DeployError(f"flwr run (in namespace {info.link_ns}) failed: {output_reason(res.stdout + res.stderr)}")
    return int(found.group(1))
