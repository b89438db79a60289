"""A real deployment on loopback: one SuperLink and 3 SuperNodes, TLS and node authentication.

Uses ``peerkd.deploy`` (what ``peerkd-deploy local`` / ``run`` / ``stop`` do): certificates
from a throw-away CA, ECDSA node keys registered with ``flwr supernode register``, an
isolated FLWR_HOME per process, free loopback ports, and every process stopped by the PIDs
(and start times) recorded when it was started. Logits cross gRPC (the Fleet API).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from peerkd import deploy as D
from peerkd.env import TIMING_ENV
from simulations.cli import main

REPO = Path(__file__).resolve().parents[2]
SUMMARY_TIMEOUT = 200.0  # seconds from `flwr run` to summary.json on a loaded 2-core machine

pytestmark = pytest.mark.skipif(
    not (Path(sys.executable).parent / "flower-supernode").exists() or not Path("/proc").is_dir(),
    reason="needs flower-superlink/flower-supernode next to the interpreter and /proc",
)


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _logs(state: Path) -> str:
    parts = []
    for f in sorted(state.glob("*.log")):
        parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-2500:]}")
    return "\n".join(parts)


def _wait_exit(cluster: D.Cluster, name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while cluster.alive(name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _run(state: Path, out: Path, extra: str = "") -> None:
    D.submit_run(state, f"strategy='peer' data='digits' num-clients=3 rounds=2 seed=0 out='{out}' {extra}", REPO)


def test_tls_auth_cluster_runs_peer_and_refuses_intruders(tmp_path):
    # Arrange: SuperLink (TLS, node auth) + 3 registered SuperNodes; two intruders: an
    # unregistered key over TLS, and a node without TLS.
    state, out, timing = tmp_path / "cluster", tmp_path / "out", tmp_path / "timing.jsonl"
    cluster = D.Cluster(state)
    try:
        info = D.start_local(state, 3, secure=True, node_env={TIMING_ENV: str(timing)})
        assert info.secure and Path(info.flwr_home, "config.toml").read_text().count("root-certificates") == 1
        ((rogue_key, _),) = D.make_node_keys(state / "rogue-keys", 1, prefix="rogue")
        p1, p2 = D.free_ports(2)
        retry = ["--max-retries", "1", "--max-wait-time", "20"]
        cfg = D.write_node_config(state / "rogue.toml", D.node_config(2, 3))
        cluster.start(
            "rogue-unregistered",
            D.supernode_args(info.fleet, cfg, p1, state / "certs" / "ca.crt", rogue_key) + retry,
            env={"FLWR_HOME": str(state / "rogue-1")},
        )
        cluster.start(
            "rogue-plaintext",
            D.supernode_args(info.fleet, cfg, p2, None, None) + retry,
            env={"FLWR_HOME": str(state / "rogue-2")},
        )

        # Act
        _run(state, out)
        summary = D.wait_for_summary(out, cluster, SUMMARY_TIMEOUT)

        # Assert: the run used exactly the 3 registered nodes, both rounds complete.
        assert summary["strategy"] == "peer" and summary["rounds"] == 2 and summary["num_clients"] == 3
        assert sorted(c["client"] for c in summary["per_client"]) == [0, 1, 2]
        assert all(c["round"] == 2 and 0.0 <= c["acc"] <= 1.0 for c in summary["per_client"])
        rounds = [r for r in _rows(out) if r["type"] == "round"]
        assert [r["replies"] for r in rounds] == [3, 3] and all(r["missing"] == [] for r in rounds)
        assert summary["bytes_up"] > 0 and (out / "config.yaml").exists()
        # Warm ClientApps: each node's messages (warm-up evaluate + 2 rounds) ran in one process, its own.
        lines = [json.loads(x) for x in timing.read_text().splitlines()]
        pids = {n: {t["pid"] for t in lines if t["node"] == n} for n in range(3)}
        assert sorted(t["round"] for t in lines) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert all(len(p) == 1 for p in pids.values()) and len(set().union(*pids.values())) == 3, pids
        app_pids = {cluster.get(f"node-{n}-app").pid for n in range(3)}
        assert set().union(*pids.values()) == app_pids
        # The same numbers as the simulation of the same world (batched engine, in this process).
        sim = tmp_path / "sim"
        assert main(["run", "strategy=peer", "data=digits", "num_clients=3", "rounds=2", "seed=0", f"out={sim}"]) == 0
        simulated = json.loads((sim / "summary.json").read_text())["per_client"]
        assert {c["client"]: c["acc"] for c in summary["per_client"]} == {c["client"]: c["acc"] for c in simulated}
        # Both intruders were refused and gave up.
        assert _wait_exit(cluster, "rogue-unregistered", 60), _logs(state)
        assert _wait_exit(cluster, "rogue-plaintext", 60), _logs(state)
        link_log = (state / "superlink-flwr.log").read_text()
        assert "No SuperNode found with the given public key" in link_log, _logs(state)
        assert len(set(re.findall(r"Activated node_id=(\d+)", link_log))) == 3, _logs(state)
        assert "Exit Code" in (state / "rogue-plaintext.log").read_text(), _logs(state)
    finally:
        left = cluster.stop()
    assert not left, f"processes left running: {left}"


def test_killed_supernode_does_not_stop_the_run(tmp_path):
    # Arrange
    state, out = tmp_path / "cluster", tmp_path / "out"
    cluster = D.Cluster(state)
    try:
        D.start_local(state, 3, secure=True)
        # round-timeout bounds round 2's wait for the dead node. Warm live nodes answer in ~1 s alone, but a clean-clone
        # CI on 2 workers once saw neither live node answer round 2 within 10 s (0 replies): 30 s leaves room for load.
        # epochs=60 makes a round's training take seconds: with the default 2 a warm round took 0.6 s, and under the
        # full suite's load round 2 twice ended (3 replies) before the kill below, which follows a 0.3 s poll, landed.
        _run(state, out, "round-timeout=30 epochs=60")

        # Act: once round 1 is recorded, node 2 dies without a goodbye (SIGKILL, whole tree).
        deadline = time.monotonic() + SUMMARY_TIMEOUT
        while not any(r["type"] == "round" for r in _rows(out)):
            assert time.monotonic() < deadline, f"round 1 never finished\n{_logs(state)}"
            assert cluster.alive("superlink"), _logs(state)
            time.sleep(0.3)
        killed_id = int(re.findall(r"SuperNode ID: (\d+)", (state / "node-2.log").read_text())[-1])
        assert not cluster.kill("node-2")
        assert _wait_exit(cluster, "node-2-app", 10), "the warm ClientApp outlived its SuperNode"
        summary = D.wait_for_summary(out, cluster, SUMMARY_TIMEOUT)

        # Assert: round 2 went on with the other two; the results say who took part.
        rounds = [r for r in _rows(out) if r["type"] == "round"]
        assert [r["round"] for r in rounds] == [1, 2]
        assert rounds[0]["replies"] == 3 and rounds[1]["replies"] == 2, f"{rounds}\n{_logs(state)}"
        absent = set(rounds[1]["missing"]) | {r["node_id"] for r in rounds[1]["rejections"]}
        clients2 = {r["client"]: r["node_id"] for r in _rows(out) if r["type"] == "client" and r["round"] == 2}
        assert sorted(clients2) == [0, 1] and killed_id not in clients2.values()
        # It either timed out (missing) or the SuperLink answered for it "Node Unavailable"
        # (rejected) once it missed two heartbeats; a node already dropped gets no message.
        assert absent in ({killed_id}, set()), rounds[1]
        last = {c["client"]: c["round"] for c in summary["per_client"]}
        assert last == {0: 2, 1: 2, 2: 1}
    finally:
        left = cluster.stop()
    assert not left, f"processes left running: {left}"


# --- fast checks of the pieces (no processes) -----------------------------------------


def test_node_config_and_connection_files(tmp_path):
    import tomllib

    from flwr.common.config import parse_config_args

    # Prepare: a data path that tries to inject a second key, as `--data-path '/x" student="cnn_large'` would.
    hostile = '/x" student="cnn_large'
    # Execute: the file the SuperNode gets, read by Flower's own --node-config parser.
    path = D.write_node_config(tmp_path / "node.toml", D.node_config(0, 2, hostile))
    parsed = parse_config_args([str(path)])
    # Assert: one value, no injected key.
    assert parsed == {"partition-id": 0, "num-partitions": 2, "data-path": hostile}
    assert parse_config_args([str(D.write_node_config(tmp_path / "n1.toml", D.node_config(1, 3, "", "cnn")))]) == {
        "partition-id": 1,
        "num-partitions": 3,
        "student": "cnn",
    }
    conn = tomllib.loads(D.connection_toml("127.0.0.1:9093", '/c/"x"/ca.crt'))
    assert conn["superlink"]["peerkd"] == {"address": "127.0.0.1:9093", "root-certificates": '/c/"x"/ca.crt'}
    assert tomllib.loads(D.connection_toml("127.0.0.1:9093", None))["superlink"]["peerkd"]["insecure"] is True
    assert D.is_loopback("127.0.0.1:9092") and D.is_loopback("[::1]:9093") and not D.is_loopback("10.0.0.2:9092")
    assert D.control_client_address("0.0.0.0:9093") == "127.0.0.1:9093"
    assert D.control_client_address("10.0.0.5:9093") == "10.0.0.5:9093"


def test_stop_escalating_asks_the_roots_first_then_everything_left():
    import signal
    import subprocess

    from peerkd.deploy.processes import alive

    # Arrange: two sleepers; only the first is a root, the second one stands for a child
    # that does not follow its parent.
    root, child = (subprocess.Popen(["sleep", "60"]) for _ in range(2))
    job = {root.pid, child.pid}
    seen: list[set[int]] = []

    def current() -> set[int]:
        seen.append(alive(job))
        return seen[-1]

    # Act
    t0 = time.monotonic()
    left = D.stop_escalating([root.pid], current, grace=30)
    took = time.monotonic() - t0

    # Assert: the child outlived the root's SIGTERM (it was not asked first), then both
    # were gone, each by a SIGTERM (no SIGKILL needed). Once the root was gone the child got
    # FOLLOW_S to follow it, not the root's whole grace.
    assert left == set() and seen[0] == job and {child.pid} in seen
    assert (root.wait(5), child.wait(5)) == (-signal.SIGTERM, -signal.SIGTERM)
    assert took < 5, took


def test_certs_and_keys_load(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    D.make_certs(tmp_path, ["127.0.0.1", "localhost"])
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    ((private, public),) = D.make_node_keys(tmp_path / "k", 1)
    assert load_ssh_private_key(private.read_bytes(), None).curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()).curve.name == "secp384r1"
    assert oct(private.stat().st_mode & 0o777) == "0o600"


def test_world_disk_cache_round_trip(tmp_path, monkeypatch):
    import numpy as np

    from peerkd.world.build import CACHE_ENV, WorldSpec, build_world

    spec = WorldSpec(dataset="digits", num_clients=3, seed=5)
    fresh = build_world(spec)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    build_world.cache_clear()
    first = build_world(spec)  # builds and writes
    build_world.cache_clear()
    cached = build_world(spec)  # reads the .npz
    build_world.cache_clear()
    assert len(list(tmp_path.glob("world-*.npz"))) == 1
    for w in (first, cached):
        assert np.array_equal(w.data.x, fresh.data.x) and np.array_equal(w.transfer_x, fresh.transfer_x)
        assert all(np.array_equal(a, b) for a, b in zip(w.partitions, fresh.partitions)) and len(w.partitions) == 3
        assert np.array_equal(w.splits.test, fresh.splits.test) and w.data.class_names == fresh.data.class_names


def test_node_data_path_is_the_only_training_data(tmp_path):
    import numpy as np

    from peerkd.errors import ConfigError
    from peerkd.student.client_app import _private_data
    from peerkd.world.build import WorldSpec, build_world

    world = build_world(WorldSpec(dataset="digits", num_clients=3))
    x = np.random.default_rng(0).random((20, 64)).astype(np.float32)
    y = np.array([3, 7] * 10)
    np.savez(tmp_path / "mine.npz", x=x, y=y)

    class Ctx:
        node_config = {"partition-id": 0, "data-path": str(tmp_path / "mine.npz")}

    px, py = _private_data(world, 0, Ctx())
    assert px.shape == (20, 1, 8, 8) and np.array_equal(py, y)  # labels kept as class indices
    Ctx.node_config = {"partition-id": 0}
    assert len(_private_data(world, 0, Ctx())[1]) == len(world.partitions[0])
    np.savez(tmp_path / "bad.npz", x=x, y=np.full(20, 12))
    Ctx.node_config = {"partition-id": 0, "data-path": str(tmp_path / "bad.npz")}
    with pytest.raises(ConfigError, match="data-path"):
        _private_data(world, 0, Ctx())


def test_stop_says_what_it_stopped(tmp_path, capsys):
    # Prepare: one recorded process (a stand-in for a SuperNode).
    started = D.Cluster(tmp_path).start("node-0", ["sleep", "60"])
    # Execute / Assert: the first stop names it, the second finds nothing running.
    assert D.main(["stop", "--state", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"stopped node-0 (PID {started.pid})"
    assert D.main(["stop", "--state", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"nothing recorded in {tmp_path} was running"


# --- hardening: secrets, hosts, the Control API, start-up failures ---------------------


def test_a_secret_is_0600_before_its_first_byte_is_written(tmp_path):
    import os
    import threading

    # Prepare: a file readable by all already sits where the key goes; it is a FIFO, so the
    # reader sees the file's mode at the moment the first byte of the key arrives.
    fifo = tmp_path / "node-0"
    os.mkfifo(fifo, 0o644)
    seen = {}

    def read():
        with open(fifo, "rb") as f:
            seen["data"] = f.read(1)
            seen["mode"] = os.stat(fifo).st_mode & 0o777
            seen["data"] += f.read()

    reader = threading.Thread(target=read)
    reader.start()
    # Execute
    D.write_secret(fifo, b"-----BEGIN PRIVATE KEY-----")
    reader.join(10)
    # Assert
    assert seen == {"data": b"-----BEGIN PRIVATE KEY-----", "mode": 0o600}


def test_new_keys_are_created_0600_whatever_the_umask(tmp_path):
    import os

    old = os.umask(0)  # the worst case: files would be created 0666
    try:
        D.make_certs(tmp_path / "certs", ["127.0.0.1"])
        ((private, public),) = D.make_node_keys(tmp_path / "keys", 1)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (*(tmp_path / "certs").iterdir(), private, public)}
    assert modes["ca.key"] == modes["server.key"] == modes["node-0"] == 0o600
    assert modes["node-0.pub"] == modes["ca.crt"] == 0o666  # public halves stay readable


def test_ip_hosts_become_ip_sans_and_invalid_hosts_are_refused(tmp_path, capsys):
    import ipaddress

    from cryptography import x509

    # Execute
    assert D.main(["certs", str(tmp_path / "c"), "--hosts", "[::1], 127.0.0.1 ,Coordinator.lan"]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # Assert
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1"), ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["coordinator.lan"]
    capsys.readouterr()  # the "wrote ..." log line
    for bad in ("a b", "host_1", "-x.lan", "[::1", "", "1.2.3.4.5:80"):
        assert D.main(["certs", str(tmp_path / "bad"), f"--hosts={bad}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("peerkd-deploy certs: error: --hosts: ") and "\n" not in err, err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--certs", "/nonexistent"], "--certs"),
        ([], "--certs"),
        (["--insecure", "--control", "0.0.0.0:9093"], "--control"),
        (["--insecure", "--control", "10.1.2.3:9093"], "--control"),
        (["--insecure", "--control", "0.0.0.0:9093", "--expose-control"], "--expose-control"),
    ],
)
def test_superlink_refuses_unsafe_or_impossible_settings_in_one_line(tmp_path, capsys, flags, field):
    # Execute: nothing starts (no process recorded).
    code = D.main(["superlink", "--state", str(tmp_path), *flags])
    # Assert
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"peerkd-deploy superlink: error: {field}: ") and "\n" not in err, err
    assert D.Cluster(tmp_path).started() == []


def test_the_control_api_binds_to_loopback_by_default():
    from peerkd.deploy.cli import _parser

    a = _parser().parse_args(["superlink", "--state", "s", "--insecure"])
    args = D.superlink_args(a.fleet, a.control, None, False, Path("log"))
    assert args[args.index("--host") + 1] == "127.0.0.1" and a.control == "127.0.0.1:9093"


def test_a_superlink_that_fails_to_start_exits_nonzero_with_the_reason(tmp_path, capsys):
    # Prepare: certificate files that exist but hold no certificate; then free loopback ports.
    bad = tmp_path / "junk-certs"
    bad.mkdir()
    for name in ("ca.crt", "server.pem", "server.key"):
        (bad / name).write_text("not a certificate\n")
    fleet, control = (f"127.0.0.1:{p}" for p in D.free_ports(2))
    ports = ["--fleet", fleet, "--control", control]
    # Execute
    failed = D.main(["superlink", "--state", str(tmp_path / "s1"), "--certs", str(bad), *ports])
    # Assert: non-zero, one line with the reason from the SuperLink's own output, nothing left running.
    err = capsys.readouterr().err
    assert failed == 1 and err.count("\n") == 1, err
    assert err.startswith("peerkd-deploy superlink: error: SuperLink did not start: ") and "SSL" in err, err
    assert not D.process_tree(D.Cluster(tmp_path / "s1").started())
    # A SuperLink that does start returns 0 once both APIs listen (then it is stopped).
    try:
        assert D.main(["superlink", "--state", str(tmp_path / "s2"), "--insecure", *ports]) == 0
        D.wait_for_port(control, 1.0)
    finally:
        assert not D.Cluster(tmp_path / "s2").stop()
