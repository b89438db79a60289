"""Deploying peerkd on real Flower nodes: one ``flower-superlink`` and one ``flower-supernode`` per device.

Sub-commands of ``peerkd-deploy``:

- ``certs DIR``: a self-signed CA and a SuperLink certificate (test certificates).
- ``keys DIR --nodes N``: ECDSA (P-384) key pairs for SuperNode authentication.
- ``superlink``: start a SuperLink (TLS + node authentication unless ``--insecure``).
- ``supernode``: start one SuperNode with its ``--node-config``.
- ``local``: a whole cluster on loopback (certificates, keys, SuperLink, registration,
  N SuperNodes, a Flower connection) for a try-out; ``run`` then submits a run to it.
- ``run``: ``flwr run`` against a started cluster; ``--wait`` waits for ``summary.json``.
- ``stop``: end exactly the processes this state directory started (and their children).
- ``bench``: per-round wall time on loopback for a few cluster sizes.

Every started process is recorded in ``DIR/processes.json`` with its command line and
start time, so ``stop`` never signals a process that merely reused a PID.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from peerkd.env import QUIET_ENV

log = logging.getLogger("peerkd.deploy")

BIN = Path(sys.executable).parent
CONNECTION = "peerkd"  # the Flower connection name written to FLWR_HOME/config.toml
PROCESS_FILE = "processes.json"
CLUSTER_FILE = "cluster.json"
# The environment of every process we start. The SuperExec polls for tasks (a ServerApp
# to launch on the SuperLink, a ClientApp per message on a SuperNode) every 1 s by default.
DEPLOY_ENV = {
    **QUIET_ENV,
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # else the SuperLink `uv sync`s a CUDA torch
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
}
BASELINE_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0", "PEERKD_GRID_POLL_S": "3", "PEERKD_WORLD_CACHE": ""}


# --- pure helpers -------------------------------------------------------------------


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
    args = [str(BIN / "flower-superlink"), "--fleet-api-address", fleet, "--host", host, "--port", port,
            "--log-file", str(log_file)]
    if certs is None:
        args.append("--insecure")
    else:
        args += ["--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.pem"),
                 "--ssl-keyfile", str(certs / "server.key")]
    return args + (["--enable-supernode-auth"] if auth else [])


def supernode_args(superlink: str, node_config: str, clientappio_port: int, root_cert: Path | None, key: Path | None) -> list[str]:
    """Command line of a SuperNode (TLS when ``root_cert`` is given, authenticated with ``key``)."""
    args = [str(BIN / "flower-supernode"), "--superlink", superlink, "--node-config", node_config,
            "--port", str(clientappio_port)]
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


# --- certificates and keys ------------------------------------------------------------


def make_certs(out: Path, hosts: list[str], days: int = 365) -> Path:
    """Write ``ca.crt``/``ca.key`` (self-signed CA) and ``server.pem``/``server.key`` for ``hosts``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key, key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peerkd test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    sans = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False).sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    for name, k in (("ca.key", ca_key), ("server.key", key)):
        _write_secret(out / name, k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (out / "ca.crt").write_bytes(ca.public_bytes(pem))
    (out / "server.pem").write_bytes(cert.public_bytes(pem))
    return out


def make_node_keys(out: Path, count: int, prefix: str = "node") -> list[tuple[Path, Path]]:
    """Write ``count`` ECDSA P-384 key pairs (OpenSSH format, as ``flwr supernode register`` wants)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        private, public = out / f"{prefix}-{i}", out / f"{prefix}-{i}.pub"
        _write_secret(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                 serialization.NoEncryption()))
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
        pairs.append((private, public))
    return pairs


def _write_secret(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


# --- processes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """A process we started: enough to find it again and to be sure it is still ours."""

    name: str
    pid: int
    start_time: int  # /proc/<pid>/stat field 22: tells a reused PID apart
    cmdline: str


def _proc_table() -> dict[int, tuple[int, int, str, int]]:
    """pid -> (ppid, session id, state, start time) of every readable process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            f = stat[stat.rindex(")") + 2:].split()
            table[int(entry)] = (int(f[1]), int(f[3]), f[0], int(f[19]))
    return table


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def process_tree(roots: list[Started]) -> set[int]:
    """Live PIDs of ``roots`` (if still the same processes) and everything below them.

    Flower's SuperLink and SuperNode start their SuperExec in a new session; its children
    (ServerApp, ClientApp processes) stay in that session even when orphaned, so sessions
    found under a root are followed too.
    """
    table = _proc_table()
    members = {r.pid for r in roots if r.pid in table and table[r.pid][3] == r.start_time and table[r.pid][2] != "Z"}
    forbidden = {0, 1, os.getsid(0)}
    sids = {table[p][1] for p in members} - forbidden
    grew = True
    while grew:
        grew = False
        for pid, (ppid, sid, state, _) in table.items():
            if pid not in members and state != "Z" and (ppid in members or sid in sids):
                members.add(pid)
                sids |= {sid} - forbidden
                grew = True
    return members


def stop_processes(roots: list[Started], grace: float = 10.0) -> set[int]:
    """SIGTERM the roots, then SIGTERM and SIGKILL whatever is left below them; return survivors."""
    tree = process_tree(roots)
    steps = [({r.pid for r in roots} & tree, signal.SIGTERM, grace), (None, signal.SIGTERM, 5.0), (None, signal.SIGKILL, 5.0)]
    for targets, sig, wait in steps:
        live = _alive(tree)
        if not live:
            return set()
        for pid in live if targets is None else targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
    return _alive(tree)


def _alive(pids: set[int]) -> set[int]:
    table = _proc_table()
    return {p for p in pids if p in table and table[p][2] != "Z"}


class Cluster:
    """The processes started from one state directory (recorded in ``processes.json``)."""

    def __init__(self, state: Path):
        self.state = state.resolve()
        self.state.mkdir(parents=True, exist_ok=True)
        self.file = self.state / PROCESS_FILE
        self._popen: list[subprocess.Popen] = []  # ours to reap (no zombies left in a long-lived caller)

    def started(self) -> list[Started]:
        """Every process recorded so far."""
        return [Started(**d) for d in json.loads(self.file.read_text())] if self.file.exists() else []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Started:
        """Start ``args`` in its own session, log to ``state/<name>.log``, and record it."""
        logf = (self.state / f"{name}.log").open("ab")
        full_env = {**os.environ, **DEPLOY_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
                                cwd=cwd or self.state, start_new_session=True)
        logf.close()
        self._popen.append(proc)
        rec = Started(name, proc.pid, _proc_table().get(proc.pid, (0, 0, "", 0))[3], " ".join(args))
        self.file.write_text(json.dumps([asdict(s) for s in [*self.started(), rec]], indent=1))
        return rec

    def get(self, name: str) -> Started:
        """The recorded process called ``name``."""
        for s in self.started():
            if s.name == name:
                return s
        raise KeyError(f"no process {name!r} in {self.file}")

    def alive(self, name: str) -> bool:
        """Whether process ``name`` is still running (and still ours)."""
        s = self.get(name)
        return s.pid in process_tree([s])

    def kill(self, name: str) -> set[int]:
        """SIGKILL process ``name`` and everything below it at once (a device losing power); return survivors."""
        tree = process_tree([self.get(name)])
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5.0
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        for proc in self._popen:
            proc.poll()
        return _alive(tree)

    def stop(self, names: list[str] | None = None) -> set[int]:
        """Stop the named processes (default: all, SuperNodes first); return survivors' PIDs."""
        chosen = [s for s in self.started() if names is None or s.name in names]
        nodes = [s for s in chosen if s.name != "superlink"]
        left = stop_processes(nodes) if nodes else set()
        left |= stop_processes([s for s in chosen if s.name == "superlink"])
        for proc in self._popen:
            proc.poll()  # reap what has exited
        return left


# --- launching ------------------------------------------------------------------------


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
    return {**os.environ, **DEPLOY_ENV, "FLWR_HOME": str(flwr_home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def register_nodes(flwr_home: Path, public_keys: list[Path], timeout: float = 90.0) -> None:
    """``flwr supernode register`` each key (concurrently: each call is a CLI start-up of seconds)."""
    procs = [subprocess.Popen([str(BIN / "flwr"), "supernode", "register", str(k), CONNECTION], env=flwr_env(flwr_home),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in public_keys]
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


@dataclass(frozen=True)
class LocalCluster:
    """What ``start_local`` started (also written to ``cluster.json``)."""

    state: str
    fleet: str
    control: str
    flwr_home: str
    secure: bool
    nodes: int


def start_local(state: Path, nodes: int, secure: bool = True, students: list[str] | None = None,
                data_paths: list[str] | None = None, start_timeout: float = 60.0, tuned: bool = True) -> LocalCluster:
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
    certs = make_certs(state / "certs", ["127.0.0.1", "localhost"]) if secure else None
    flwr_home = state / "flwr-home"
    flwr_home.mkdir(exist_ok=True)
    (flwr_home / "config.toml").write_text(connection_toml(control, str(certs / "ca.crt") if certs else None))
    link = cluster.start("superlink", superlink_args(fleet, control, certs, secure, state / "superlink-flwr.log"),
                         env=link_env)
    wait_for_port(fleet, start_timeout, link)
    wait_for_port(control, start_timeout, link)
    keys = make_node_keys(state / "keys", nodes) if secure else [(None, None)] * nodes
    if secure:
        register_nodes(flwr_home, [public for _, public in keys])
    for i, (private, _) in enumerate(keys):
        student = students[i % len(students)] if students else ""
        data_path = data_paths[i] if data_paths and i < len(data_paths) else ""
        home = state / f"node-{i}"
        home.mkdir(exist_ok=True)
        args = supernode_args(fleet, node_config_string(i, nodes, data_path, student), node_ports[i],
                              certs / "ca.crt" if certs else None, private)
        cluster.start(f"node-{i}", args, env={"FLWR_HOME": str(home), "PEERKD_WORLD_CACHE": str(state / "world-cache"), **extra})
    info = LocalCluster(str(state), fleet, control, str(flwr_home), secure, nodes)
    (state / CLUSTER_FILE).write_text(json.dumps(asdict(info), indent=1))
    return info


def submit_run(state: Path, run_config: str, app: Path, timeout: float = 120.0) -> int:
    """``flwr run APP peerkd --run-config ...`` against the cluster in ``state``; the run id."""
    info = LocalCluster(**json.loads((state / CLUSTER_FILE).read_text()))
    res = subprocess.run([str(BIN / "flwr"), "run", str(app), CONNECTION, "--run-config", run_config],
                         cwd=app, env=flwr_env(Path(info.flwr_home)), capture_output=True, text=True, timeout=timeout)
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


# --- command line ---------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peerkd-deploy", description="Run peerkd on a Flower SuperLink and SuperNodes.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("certs", help="self-signed CA + SuperLink certificate (for tests and try-outs)")
    c.add_argument("dir", type=Path)
    c.add_argument("--hosts", default="127.0.0.1,localhost", help="comma list of the SuperLink's IPs/names")
    k = sub.add_parser("keys", help="ECDSA key pairs for SuperNode authentication")
    k.add_argument("dir", type=Path)
    k.add_argument("--nodes", type=int, default=1)
    k.add_argument("--prefix", default="node")
    s = sub.add_parser("superlink", help="start a SuperLink in the background")
    s.add_argument("--state", type=Path, required=True, help="directory for logs and the process record")
    s.add_argument("--fleet", default="0.0.0.0:9092", help="Fleet API address (SuperNodes connect here)")
    s.add_argument("--control", default="0.0.0.0:9093", help="Control + Runtime HTTP API address (`flwr run` connects here)")
    s.add_argument("--certs", type=Path, help="directory with ca.crt, server.pem, server.key")
    s.add_argument("--insecure", action="store_true", help="no TLS and no node authentication")
    n = sub.add_parser("supernode", help="start one SuperNode in the background")
    n.add_argument("--state", type=Path, required=True)
    n.add_argument("--superlink", required=True, help="the SuperLink's Fleet API, host:9092")
    n.add_argument("--partition-id", type=int, required=True)
    n.add_argument("--num-partitions", type=int, required=True)
    n.add_argument("--data-path", default="", help="this device's own .npz/.csv (labels = class indices)")
    n.add_argument("--student", default="", help="student architecture of this node")
    n.add_argument("--root-cert", type=Path, help="the CA certificate (ca.crt)")
    n.add_argument("--key", type=Path, help="this node's private key (registered with `flwr supernode register`)")
    n.add_argument("--port", type=int, default=9094, help="local ClientAppIo port (distinct per node on one machine)")
    n.add_argument("--insecure", action="store_true")
    lo = sub.add_parser("local", help="a whole cluster on loopback, secure by default")
    lo.add_argument("--state", type=Path, required=True)
    lo.add_argument("--nodes", type=int, default=3)
    lo.add_argument("--students", default="", help="comma list, assigned round-robin to nodes")
    lo.add_argument("--insecure", action="store_true")
    r = sub.add_parser("run", help="submit a run (flwr run) to the cluster in --state")
    r.add_argument("--state", type=Path, required=True)
    r.add_argument("--app", type=Path, default=Path("."))
    r.add_argument("--run-config", required=True, help="as for `flwr run`; give out='/absolute/path'")
    r.add_argument("--wait", type=float, default=0.0, help="seconds to wait for summary.json (0: don't)")
    st = sub.add_parser("stop", help="stop what --state started (default: everything)")
    st.add_argument("--state", type=Path, required=True)
    st.add_argument("names", nargs="*", help="e.g. node-2 (default: all)")
    b = sub.add_parser("bench", help="per-round wall time on loopback")
    b.add_argument("--state", type=Path, required=True)
    b.add_argument("--nodes", default="2,8")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--app", type=Path, default=Path("."))
    b.add_argument("--secure", action="store_true")
    return p


def _cmd_superlink(a: argparse.Namespace) -> int:
    if a.certs is None and not a.insecure:
        raise SystemExit("peerkd-deploy superlink: --certs DIR is required (or --insecure, loopback try-outs only)")
    cluster = Cluster(a.state)
    certs = a.certs.resolve() if a.certs else None
    flwr_home = cluster.state / "flwr-home"
    flwr_home.mkdir(exist_ok=True)
    port = a.control.rsplit(":", 1)[1]
    (flwr_home / "config.toml").write_text(connection_toml(f"127.0.0.1:{port}", str(certs / "ca.crt") if certs else None))
    link = cluster.start("superlink", superlink_args(a.fleet, a.control, certs, not a.insecure,
                                                     cluster.state / "superlink-flwr.log"), env={"FLWR_HOME": str(flwr_home)})
    info = LocalCluster(str(cluster.state), a.fleet, f"127.0.0.1:{port}", str(flwr_home), not a.insecure, 0)
    (cluster.state / CLUSTER_FILE).write_text(json.dumps(asdict(info), indent=1))
    log.info("SuperLink pid %d: Fleet API %s, Control API %s%s", link.pid, a.fleet, a.control, " (INSECURE)" if a.insecure else "")
    log.info("register nodes: FLWR_HOME=%s flwr supernode register node-0.pub %s", flwr_home, CONNECTION)
    return 0


def _cmd_supernode(a: argparse.Namespace) -> int:
    if a.root_cert is None and not a.insecure:
        raise SystemExit("peerkd-deploy supernode: --root-cert ca.crt is required (or --insecure)")
    if a.insecure and not is_loopback(a.superlink):
        log.warning("insecure connection to %s: logits travel unencrypted", a.superlink)
    cluster = Cluster(a.state)
    name = f"node-{a.partition_id}"
    home = cluster.state / name
    home.mkdir(exist_ok=True)
    args = supernode_args(a.superlink, node_config_string(a.partition_id, a.num_partitions, a.data_path, a.student), a.port,
                          None if a.insecure else a.root_cert.resolve(), a.key.resolve() if a.key else None)
    node = cluster.start(name, args, env={"FLWR_HOME": str(home), "PEERKD_WORLD_CACHE": str(cluster.state / "world-cache")})
    log.info("SuperNode %s pid %d -> %s", name, node.pid, a.superlink)
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    run_id = submit_run(a.state.resolve(), a.run_config, a.app.resolve())
    log.info("run %d submitted", run_id)
    out = re.search(r"out=['\"]([^'\"]+)['\"]", a.run_config)
    if a.wait > 0 and out:
        summary = wait_for_summary(Path(out.group(1)), Cluster(a.state), a.wait)
        log.info("done: acc_mean %.4f over %d clients", summary["acc_mean"] or 0, len(summary["per_client"]))
    return 0


def bench(state: Path, sizes: list[int], rounds: int, app: Path, secure: bool, tuned: bool) -> list[dict]:
    """Per-round wall time of `peer` on digits for each cluster size (loopback, fresh cluster each)."""
    rows = []
    for n in sizes:
        sub = state / f"{'tuned' if tuned else 'baseline'}-{n}"
        out = sub / "out"
        cluster = Cluster(sub)
        try:
            start_local(sub, n, secure=secure, tuned=tuned)
            submit_run(sub, f"strategy='peer' data='digits' num-clients={n} rounds={rounds} out='{out}'", app)
            wait_for_summary(out, cluster, 120 + 60 * rounds * max(1, n // 2))
            lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            times = [r["round_s"] for r in lines if r.get("type") == "round"]
            rows.append({"nodes": n, "tuned": tuned, "round_s": times, "mean_round_s": sum(times) / len(times),
                         "load_avg": os.getloadavg()[0]})
        finally:
            cluster.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``peerkd-deploy``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.update({k: v for k, v in DEPLOY_ENV.items() if k not in os.environ})
    a = _parser().parse_args(argv)
    if a.cmd == "certs":
        log.info("wrote %s", make_certs(a.dir, [h.strip() for h in a.hosts.split(",") if h.strip()]))
    elif a.cmd == "keys":
        for private, public in make_node_keys(a.dir, a.nodes, a.prefix):
            log.info("%s  %s", private, public)
    elif a.cmd == "superlink":
        return _cmd_superlink(a)
    elif a.cmd == "supernode":
        return _cmd_supernode(a)
    elif a.cmd == "local":
        students = [s for s in a.students.split(",") if s]
        info = start_local(a.state, a.nodes, secure=not a.insecure, students=students)
        log.info("cluster up: Fleet API %s, Control API %s, %d nodes%s; FLWR_HOME=%s", info.fleet, info.control,
                 info.nodes, "" if info.secure else " (INSECURE)", info.flwr_home)
    elif a.cmd == "run":
        return _cmd_run(a)
    elif a.cmd == "stop":
        left = Cluster(a.state).stop(a.names or None)
        if left:
            log.error("still running: %s", sorted(left))
            return 1
    elif a.cmd == "bench":
        sizes = [int(x) for x in a.nodes.split(",")]
        for tuned in (False, True):
            for row in bench(a.state.resolve(), sizes, a.rounds, a.app.resolve(), a.secure, tuned):
                log.info(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
