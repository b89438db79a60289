"""Real network boundaries: the SuperLink and 2 SuperNodes each in their own Linux network namespace.

Root only (``ip netns``); skipped with the reason otherwise. ``peerkd.deploy.netns`` builds a star of
veth pairs with addresses from the benchmarking range 198.18.0.0/15 (RFC 2544) and nothing else: no
default route, IPv6 off, so no process of the cluster can reach an address the test did not create.
TLS is verified against the SuperLink's IP SAN (198.18.0.1); a cut link (``ip link set l1 down`` at
the link's end) makes node 1 missing for the round it was cut in, and once the link is back it
answers the next round, under the same node id. The test writes a log of the cut
(``cut-link.log``, printed: ``pytest -s``), and checks that no namespace and no process survives.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peerkd import deploy as D
from peerkd.deploy import netns as N
from peerkd.deploy.bench import bench_one
from peerkd.errors import ConfigError
from simulations.cli import main

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 3  # 1: both nodes; 2: node 1's link cut while it trains -> missing; 3: link back -> node 1 answers
# Round 2 lasts this long (the wait for node 1), so it bounds the cut. Under 37.5 s, the SuperLink
# never marks node 1 offline (its heartbeat lapses 2 x 30 s after the last one, sent <= 22.5 s before
# the cut): node 1 stays in the run's nodes, gets round 2's and round 3's messages, and round 2
# records it as missing (not rejected as unavailable). Live rounds take ~8 s on 2 idle cores.
ROUND_TIMEOUT = 20.0
SUMMARY_TIMEOUT = 200.0
CUT = 1  # the node whose link is cut

pytestmark = pytest.mark.skipif(
    not (Path(sys.executable).parent / "flower-supernode").exists() or not Path("/proc").is_dir(),
    reason="needs flower-superlink/flower-supernode next to the interpreter and /proc",
)

# Run in a node's namespace: a gRPC call to the Fleet API, TLS with the given CA, the certificate checked
# against the given name (default: the target's host). Prints the status code and its details.
TLS_PROBE = """
import sys, grpc
ca, target, name = sys.argv[1:4]
opts = [("grpc.ssl_target_name_override", name)] if name else []
channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(open(ca, "rb").read()), options=opts)
try:
    channel.unary_unary("/flwr.proto.Fleet/NoSuchMethod")(b"", timeout=10)
    print("OK |")
except grpc.RpcError as e:
    print(e.code().name, "|", e.details())
"""


def _namespaces_or_skip() -> None:
    if reason := N.netns_unavailable():
        pytest.skip(f"needs Linux network namespaces: {reason}")


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _logs(state: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-2500:]}" for f in sorted(state.glob("*.log")))


def _node_id(state: Path, i: int) -> int | None:
    found = re.findall(r"SuperNode ID: (\d+)", (state / f"node-{i}.log").read_text(errors="replace"))
    return int(found[-1]) if found else None


def _received(state: Path, i: int) -> int:
    """How many round messages (``train``) SuperNode ``i`` has pulled so far."""
    return (state / f"node-{i}.log").read_text(errors="replace").count("Receiving: train")


class EventLog:
    """Timestamped lines (seconds since ``flwr run``), written to ``path``."""

    def __init__(self, path: Path):
        self.path, self.lines, self.t0 = path, [], time.monotonic()

    def add(self, text: str) -> float:
        now = time.monotonic() - self.t0
        self.lines.append(f"{now:6.1f} s  {text}")
        return now

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def write(self) -> str:
        self.path.write_text(self.text + "\n")
        return self.text


def _round_line(row: dict, rows: list[dict], names: dict[int, str]) -> str:
    clients = sorted(r["client"] for r in rows if r["type"] == "client" and r["round"] == row["round"])
    missing = [names.get(n, str(n)) for n in row["missing"]] or "none"
    rejected = [f"{names.get(r['node_id'], r['node_id'])}: {r['reason']}" for r in row["rejections"]]
    return (
        f"round {row['round']}: {row['replies']} replies (clients {clients}), missing {missing}, "
        f"rejected {rejected or 'none'} ({row['round_s']:.1f} s)"
    )


def _follow_run(out: Path, cluster: D.Cluster, spaces: N.Namespaces, log: EventLog) -> None:
    """Log each round as it is recorded; cut node ``CUT``'s link once it pulled round 2's message (it is training),
    restore it once round 2 is recorded; log when it pulls round 3's message."""
    state, deadline = cluster.state, time.monotonic() + SUMMARY_TIMEOUT
    done, t_up, heard = 0, None, False
    while not (out / "summary.json").exists():
        assert time.monotonic() < deadline, f"no summary after {SUMMARY_TIMEOUT:g} s\n{log.text}\n{_logs(state)}"
        assert cluster.alive("superlink"), f"{log.text}\n{_logs(state)}"
        rows = _rows(out)
        names = {_node_id(state, i): f"node-{i} ({_node_id(state, i)})" for i in range(spaces.nodes)}
        for row in [r for r in rows if r["type"] == "round"][done:]:
            log.add(_round_line(row, rows, names))
            done += 1
            if done == 2:
                t_up = log.add(f"link up: {' '.join(spaces.link_up(CUT))}")
        got = _received(state, CUT)
        if done == 1 and got == 2 and "link down" not in log.text:
            log.add(f"node-{CUT} pulled round 2's message (training); link down: {' '.join(spaces.link_down(CUT))}")
        if t_up is not None and got == 3 and not heard:
            heard = True
            after = time.monotonic() - log.t0 - t_up
            log.add(f"node-{CUT} pulled round 3's message, {after:.1f} s after link up")
        time.sleep(0.1)


def _tls_checks(info: N.NetnsCluster, spaces: N.Namespaces) -> dict[str, str]:
    """The TLS probe from node 0's namespace: against the SuperLink's address, and against a name its cert lacks."""
    ca = str(Path(info.certs) / "ca.crt")
    wrong = spaces.port_address(0)  # an address of ours, on the link's side of node 0's pair, not in the cert
    results = {}
    for label, name in (("san", ""), ("wrong-name", wrong)):
        args = N.exec_args(spaces.node(0), [sys.executable, "-c", TLS_PROBE, ca, info.fleet, name])
        res = subprocess.run(args, capture_output=True, text=True, timeout=60)
        results[label] = res.stdout.strip() or res.stderr[-500:]
    return results


def test_a_cut_link_makes_its_node_missing_for_the_round_and_it_rejoins(tmp_path):
    """2 SuperNodes, 3 rounds; node 1's link cut in round 2 and restored after it: see the module docstring."""
    _namespaces_or_skip()
    # Arrange: namespaces, a TLS + node-auth cluster across them.
    state, out = tmp_path / "cluster", tmp_path / "out"
    spaces, cluster = N.Namespaces(2), D.Cluster(state)
    log = EventLog(tmp_path / "cut-link.log")
    summary, tls = None, {}
    t_start = time.monotonic()
    try:
        spaces.create()
        info = N.start_netns_cluster(state, spaces)
        # epochs=200: a round trains for seconds (1 s at 60), so the cut (after a 0.1 s poll sees the pull) lands inside
        # it; with the default 2, under the full suite's load node 1 once began its reply before the cut
        # (rejected as an expired object push, 180 s later, instead of missing).
        config = (
            f"strategy='peer' data='digits' num-clients=2 rounds={ROUNDS} seed=0 out='{out}' "
            f"round-timeout={ROUND_TIMEOUT:g} epochs=200"
        )
        log.t0 = time.monotonic()
        run_id = N.submit_run_in(info, config, REPO)
        log.add(f"flwr run (in {spaces.link}): run {run_id}, {ROUNDS} rounds, round-timeout {ROUND_TIMEOUT:g} s")
        tls = _tls_checks(info, spaces)
        # Act
        _follow_run(out, cluster, spaces, log)
        summary = D.wait_for_summary(out, cluster, 30)
        log.add(f"summary: {summary['rounds']} rounds, last round per client {_last_rounds(summary)}")
    finally:
        ids, started = dict(spaces.ids), cluster.started()
        left = N.teardown(cluster, spaces)  # processes first, then namespaces
        log.add(f"teardown: {'; '.join(left) or 'no process and no namespace left'}")
    wall = time.monotonic() - t_start
    text = log.write()
    print(f"\n--- {log.path} (test wall time {wall:.0f} s)\n{text}")
    why = f"{text}\n{_logs(state)}"
    names = {i: _node_id(state, i) for i in range(2)}

    # Assert: the rounds as the ServerApp recorded them; TLS; nothing left.
    _check_rounds(_rows(out), names, summary, why)
    _check_tls(state, tls, started, names, why)
    assert left == [] and len(ids) == 3 and len(started) == 5 and not D.process_tree(started), left
    assert not set(spaces.names) & set(N.listed_namespaces()) and N.processes_in(ids) == {}


def _check_rounds(rows: list[dict], names: dict[int, int | None], summary: dict | None, why: str) -> None:
    """Round 1: both nodes; round 2: node ``CUT`` missing (sent the message, never answered), nothing rejected;
    round 3: node ``CUT`` back, same node id, serving its client."""
    rounds = [r for r in rows if r["type"] == "round"]
    by_round = {
        n: {r["client"]: r["node_id"] for r in rows if r["type"] == "client" and r["round"] == n}
        for n in range(1, ROUNDS + 1)
    }
    assert [r["round"] for r in rounds] == [1, 2, 3], why
    assert by_round[1] == {0: names[0], 1: names[CUT]} and rounds[0]["missing"] == [], why
    assert by_round[2] == {0: names[0]}, why
    assert rounds[1]["missing"] == [names[CUT]] and rounds[1]["rejections"] == [], why
    assert "link down" in why and rounds[1]["round_s"] >= ROUND_TIMEOUT, why
    assert by_round[3] == {0: names[0], 1: names[CUT]}, why
    assert rounds[2]["missing"] == [] and rounds[2]["rejections"] == [], why
    assert summary is not None and _last_rounds(summary) == {0: 3, 1: 3}, why


def _check_tls(state: Path, tls: dict[str, str], started: list, names: dict[int, int | None], why: str) -> None:
    """The certificate's IP SANs; gRPC verified them (a name not in the cert is refused); both nodes activated
    over TLS (no process started with --insecure)."""
    sans = _ip_sans(state / "certs" / "server.pem")
    assert sans == [ipaddress.ip_address(N.LINK_ADDRESS), ipaddress.ip_address("127.0.0.1")]
    assert tls["san"].startswith("UNAUTHENTICATED |"), tls  # TLS done; the SuperLink's node auth refuses a keyless call
    assert tls["wrong-name"].startswith("UNAVAILABLE |") and "Hostname Verification" in tls["wrong-name"], tls
    link_log = (state / "superlink-flwr.log").read_text()
    assert {int(n) for n in re.findall(r"Activated node_id=(\d+)", link_log)} == set(names.values()), why
    nodes = [s for s in started if s.name.startswith("node-") and not s.name.endswith("-app")]  # SuperNodes
    links = [s for s in started if s.name == "superlink"]
    assert len(nodes) == 2 and all("--root-certificates" in s.cmdline for s in nodes), started
    assert len(links) == 1 and "--ssl-certfile" in links[0].cmdline, started
    assert not any("--insecure" in s.cmdline for s in started), started


def _last_rounds(summary: dict) -> dict[int, int]:
    return {c["client"]: c["round"] for c in summary["per_client"]}


def _ip_sans(pem: Path) -> list:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress
    )


# --- the topology alone (no Flower) ----------------------------------------------------

CONNECT = """
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
try:
    socket.create_connection((host, int(port)), timeout=1.5).close()
    print("ok")
except OSError as e:
    print(e.strerror or str(e))
"""


def _connect(ns: str, address: str) -> str:
    """``ok``, or why a TCP connection from namespace ``ns`` to ``address`` failed."""
    res = subprocess.run(
        N.exec_args(ns, [sys.executable, "-S", "-c", CONNECT, address]), capture_output=True, text=True
    )
    return res.stdout.strip() or res.stderr.strip()


def _ip_out(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def test_the_address_plan_is_the_benchmarking_range_only():
    spaces = N.Namespaces(3, prefix="pkplan")
    ours = [N.LINK_ADDRESS, *(f(i) for i in range(3) for f in (spaces.node_address, spaces.port_address))]
    assert all(ipaddress.ip_address(a) in N.NET for a in ours) and len(set(ours)) == len(ours)
    assert N.NET == ipaddress.ip_network("198.18.0.0/15")
    for i in range(3):  # each pair shares its own /30, away from the SuperLink's address
        pair = ipaddress.ip_network(f"{spaces.node_address(i)}/30", strict=False)
        assert ipaddress.ip_address(spaces.port_address(i)) in pair and ipaddress.ip_address(N.LINK_ADDRESS) not in pair
    assert spaces.names == ["pkplan-link", "pkplan-n0", "pkplan-n1", "pkplan-n2"]
    assert N.exec_args("pkplan-n1", ["flwr", "run"])[1:] == ["netns", "exec", "pkplan-n1", "flwr", "run"]
    assert N.Namespaces(1).prefix == f"pk{os.getpid()}"
    with pytest.raises(ConfigError, match="nodes"):
        N.Namespaces(0)


def test_namespaces_reach_the_link_only_and_a_cut_link_cuts_one_node(tmp_path):
    _namespaces_or_skip()
    spaces, cluster = N.Namespaces(2, prefix=f"pk{os.getpid()}t"), D.Cluster(tmp_path / "state")
    link, seen = f"{N.LINK_ADDRESS}:{N.FLEET_PORT}", {}
    try:
        spaces.create()
        listen = f"import socket, time; s = socket.socket(); s.bind(({N.LINK_ADDRESS!r}, {N.FLEET_PORT})); "
        listen += "s.listen(); time.sleep(60)"
        server = N.start_in(cluster, spaces.link, "listener", [sys.executable, "-S", "-c", listen])
        seen["record"] = server.cmdline
        N.wait_for_port_in(spaces.node(0), link, 10, server)
        with pytest.raises(
            D.DeployError, match=r"^ghost exited as it started in namespace pk-no-such-ns: .*pk-no-such-ns"
        ):
            N.start_in(cluster, "pk-no-such-ns", "ghost", ["sleep", "60"])
        for ns in spaces.names:  # IPv4 only, 127.0.0.1 and our addresses; every route stays in 198.18.0.0/15
            seen[ns] = (_ip_out("-n", ns, "-o", "addr"), _ip_out("-n", ns, "-4", "route"))
        seen["node 1 -> link"] = _connect(spaces.node(1), link)
        seen["node 0 -> node 1"] = _connect(spaces.node(0), f"{spaces.node_address(1)}:{N.FLEET_PORT}")
        spaces.link_down(0)
        seen["cut: node 0 -> link"] = _connect(spaces.node(0), link)
        seen["cut: node 1 -> link"] = _connect(spaces.node(1), link)
        spaces.link_up(0)
        seen["back: node 0 -> link"] = _connect(spaces.node(0), link)
    finally:
        stopped = cluster.stop()
        ids, left = dict(spaces.ids), spaces.delete()
    # `ip netns exec` execs in place: the record is the program's own (same PID), so stop finds and ends it.
    assert seen["record"] == f"{sys.executable} -S -c {listen}" and stopped == set(), seen
    assert seen["node 1 -> link"] == "ok" and seen["back: node 0 -> link"] == "ok", seen
    assert seen["node 0 -> node 1"] == "Network is unreachable", seen  # no forwarding, no route between nodes
    assert seen["cut: node 0 -> link"] == "timed out" and seen["cut: node 1 -> link"] == "ok", seen
    for ns in spaces.names:
        addrs, routes = seen[ns]
        assert "inet6" not in addrs, addrs
        inet = {ipaddress.ip_interface(a).ip for a in re.findall(r"inet (\S+)", addrs)}
        assert all(a in N.NET or a == ipaddress.ip_address("127.0.0.1") for a in inet), addrs
        assert all(ipaddress.ip_network(r.split()[0]).subnet_of(N.NET) for r in routes.splitlines()), routes
    assert len(ids) == 3 and left == [] and spaces.delete() == []  # deleting again is a no-op
    assert not set(spaces.names) & set(N.listed_namespaces()) and N.processes_in(ids) == {}


def test_without_namespaces_the_reason_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(N.os, "geteuid", lambda: 1000)
    assert N.netns_unavailable() == "network namespaces need root (ip netns add); running as uid 1000"
    monkeypatch.setattr(N.os, "geteuid", lambda: 0)
    monkeypatch.setattr(N.shutil, "which", lambda name: None)
    assert N.netns_unavailable() == "no `ip` command (iproute2) on PATH"
    monkeypatch.setattr(N.shutil, "which", lambda name: "/bin/false")
    monkeypatch.setattr(N, "IP", "/bin/false")  # every `ip` call fails, as `ip netns add` does without CAP_SYS_ADMIN
    reason = N.netns_unavailable()
    assert reason.startswith("creating a network namespace failed: ip netns add pk") and "\n" not in reason, reason


def test_the_bench_across_namespaces_breaks_rounds_down_with_the_simulations_accuracy(tmp_path):
    """``bench --where netns``: a fresh TLS cluster across namespaces, one run, its per-round breakdown; the
    per-client accuracies equal the in-process simulation's; nothing survives."""
    _namespaces_or_skip()
    before = set(N.listed_namespaces())
    row = bench_one(tmp_path / "b", 2, 2, REPO, False, "warm-fast", where="netns")
    deployed = json.loads((tmp_path / "b" / "netns-warm-fast-2" / "out" / "summary.json").read_text())["per_client"]
    sim = tmp_path / "sim"
    assert main(["run", "strategy=peer", "data=digits", "num_clients=2", "rounds=2", "seed=0", f"out={sim}"]) == 0
    simulated = json.loads((sim / "summary.json").read_text())["per_client"]

    assert (row["where"], row["setup"], row["nodes"], row["secure"]) == ("netns", "warm-fast", 2, True), row
    assert [r["round"] for r in row["rounds"]] == [1, 2], row
    for r in row["rounds"]:  # every part measured; the slowest handler (training inside) within the round
        assert 0 < r["train_s"] <= r["handler_s"] < r["wall_s"] and r["startup_s"] >= 0 and r["waiting_s"] >= 0, r
    assert {c["client"]: c["acc"] for c in deployed} == {c["client"]: c["acc"] for c in simulated}
    assert row["acc_mean"] == pytest.approx(sum(c["acc"] for c in simulated) / 2)
    assert set(N.listed_namespaces()) == before
