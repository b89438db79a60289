"""A state directory and its keys are owned; every ``peerkd-deploy`` failure is one line (issue 20, item 5).

Keys: ``certs`` / ``keys`` never overwrite a private key without ``--force``. State: a second
``local`` / ``superlink`` on a state whose processes run is refused before anything in it
changes (the CA is not regenerated under a running cluster), and ``stop`` signals a process
only while its PID, start time *and* command line are the recorded ones. Failures: missing or
damaged state files, a dead SuperLink, a read-only file system and out-of-range numbers are
one line on stderr with a non-zero exit, nothing created or left running.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from peerkd import deploy as D
from peerkd.deploy import cluster as cluster_module
from peerkd.deploy import launch as launch_module
from peerkd.deploy.processes import alive, cmdline

REPO = Path(__file__).resolve().parents[2]
SUMMARY_TIMEOUT = 200.0  # seconds from `flwr run` to summary.json on a loaded 2-core machine

pytestmark = pytest.mark.skipif(
    not (Path(sys.executable).parent / "flower-supernode").exists() or not Path("/proc").is_dir(),
    reason="needs flower-superlink/flower-supernode next to the interpreter and /proc",
)


def _fails(capsys, argv: list[str]) -> tuple[int, str]:
    """Run ``peerkd-deploy argv``; its exit code and its stderr, asserted to be exactly one line."""
    capsys.readouterr()
    code = D.main(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return code, err.strip()


def _in_use(state: Path, pid: int) -> str:
    s = state.resolve()
    return f"state {s} is in use by a running SuperLink (pid {pid}); stop it first: peerkd-deploy stop --state {s}"


# --- keys -------------------------------------------------------------------------------


def test_certs_never_overwrite_a_private_key_without_force(tmp_path, capsys, caplog):
    # Prepare: a CA and server key pair.
    caplog.set_level(logging.INFO, logger="peerkd.deploy")
    certs = tmp_path / "certs"
    assert D.main(["certs", str(certs)]) == 0
    before = {p.name: p.read_bytes() for p in certs.iterdir()}
    # Execute: the same command again, then with --force.
    code, err = _fails(capsys, ["certs", str(certs)])
    kept = {p.name: p.read_bytes() for p in certs.iterdir()}
    forced = D.main(["certs", str(certs), "--force"])
    said = caplog.text
    # Assert: refused in one line naming ca.key and --force, every file unchanged (the
    # certificates too); --force replaces both keys, says so, and keeps them 0600.
    assert code == 2 and err.startswith(f"peerkd-deploy certs: error: {certs / 'ca.key'}: ") and "--force" in err
    assert kept == before
    assert forced == 0 and (certs / "ca.key").read_bytes() != before["ca.key"]
    assert (certs / "server.key").read_bytes() != before["server.key"]
    assert f"replaced the private key {certs / 'ca.key'}" in said and f"{certs / 'server.key'}" in said
    assert {(certs / k).stat().st_mode & 0o777 for k in ("ca.key", "server.key")} == {0o600}


def test_keys_never_overwrite_a_private_key_without_force(tmp_path, capsys):
    # Prepare: two node keys; elsewhere a dangling link planted where a key would go.
    keys = tmp_path / "keys"
    assert D.main(["keys", str(keys), "--nodes", "2"]) == 0
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "node-0").symlink_to(tmp_path / "elsewhere")
    # Execute
    grown = _fails(capsys, ["keys", str(keys), "--nodes", "3"])
    linked = _fails(capsys, ["keys", str(planted), "--nodes", "1"])
    kept = {p.name: p.read_bytes() for p in keys.iterdir()}
    forced = D.main(["keys", str(keys), "--nodes", "1", "--force"])
    # Assert: the first refusal names node-0 and wrote nothing (no node-2 either); the link
    # counts as a key and is not followed; --force replaces only the key pair it was asked for.
    assert grown[0] == 2 and grown[1].startswith(f"peerkd-deploy keys: error: {keys / 'node-0'}: a private key is")
    assert "(and 1 more)" in grown[1] and "--force" in grown[1]
    assert kept == before
    assert linked[0] == 2 and str(planted / "node-0") in linked[1] and not (tmp_path / "elsewhere").exists()
    assert forced == 0 and (keys / "node-0").read_bytes() != before["node-0"]
    assert (keys / "node-1").read_bytes() == before["node-1"]


# --- stop -------------------------------------------------------------------------------


def test_a_started_script_is_recorded_with_its_interpreter_every_time(tmp_path):
    # Prepare: a script run through its shebang, as Flower's flower-superlink is. Right after Popen
    # /proc/<pid>/cmdline can read as empty for a moment (9 of 300 direct reads, measured); the
    # record then held the bare arguments, the live check later read the interpreter in front of
    # them and took the SuperLink for dead ("superlink exited before listening", a CI failure on a
    # loaded machine). Unloaded, `start` rarely hits that moment: the next test pins the retry.
    script = tmp_path / "node.py"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    script.chmod(0o755)
    cluster = D.Cluster(tmp_path / "state")
    try:
        for _ in range(20):
            # Execute
            started = cluster.start("node-0", [str(script)])
            # Assert: the interpreter is in the record, and the process counts as alive and ours.
            assert started.cmdline == f"{sys.executable} {script}", started
            assert cluster.alive("node-0")
            cluster.kill("node-0")
    finally:
        D.main(["stop", "--state", str(tmp_path / "state")])


def test_an_empty_command_line_is_read_again_before_it_is_believed(monkeypatch):
    reads = iter([b"", b"", b"python3\0flower-superlink\0--insecure\0"])
    monkeypatch.setattr(Path, "read_bytes", lambda self: next(reads))
    assert cmdline(1234) == "python3 flower-superlink --insecure"
    monkeypatch.setattr(Path, "read_bytes", lambda self: b"")
    assert cmdline(1234, settle_s=0.02) == ""  # a zombie stays empty


def test_stop_spares_a_process_whose_command_line_differs_from_the_record(tmp_path, capsys):
    # Prepare: a recorded process, then its record changed to another command line: the
    # PID and start time still match (as when a PID is reused by a process started in the
    # same clock tick).
    cluster = D.Cluster(tmp_path)
    started = cluster.start("node-0", ["sleep", "60"])
    assert started.cmdline == "sleep 60"  # what /proc shows
    record = cluster.file.read_text()
    cluster.file.write_text(record.replace('"sleep 60"', '"flower-supernode --superlink 127.0.0.1:9092"'))
    try:
        # Execute
        spared = D.main(["stop", "--state", str(tmp_path)])
        out = capsys.readouterr().out.strip()
        # Assert: not signalled, still running.
        assert spared == 0 and out == f"nothing recorded in {tmp_path} was running"
        assert alive({started.pid}) == {started.pid}
    finally:
        cluster.file.write_text(record)  # the true record: the launcher's own stop ends it
        assert D.main(["stop", "--state", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"stopped node-0 (PID {started.pid})"


def test_stop_on_a_missing_state_is_one_line_and_creates_nothing(tmp_path, capsys):
    code, err = _fails(capsys, ["stop", "--state", str(tmp_path / "typo")])
    assert code == 2 and err.startswith(f"peerkd-deploy stop: error: --state: {tmp_path / 'typo'} is not a directory")
    assert not (tmp_path / "typo").exists()


# --- a state in use -----------------------------------------------------------------------


def test_a_state_in_use_refuses_a_second_local_or_superlink_before_changing_anything(tmp_path, capsys):
    # Prepare: a live process recorded as the SuperLink of the state (a stand-in: no ports needed).
    state = tmp_path / "state"
    cluster = D.Cluster(state)
    link = cluster.start("superlink", ["sleep", "60"])
    files = sorted(p.name for p in state.iterdir())
    try:
        # Execute
        local = _fails(capsys, ["local", "--state", str(state), "--nodes", "2"])
        superlink = _fails(capsys, ["superlink", "--state", str(state), "--insecure", "--control", "127.0.0.1:1"])
        # Assert: refused in the words of the issue; no CA, keys or connection written, record unchanged.
        assert local == (1, f"peerkd-deploy local: error: {_in_use(state, link.pid)}")
        assert superlink == (1, f"peerkd-deploy superlink: error: {_in_use(state, link.pid)}")
        assert sorted(p.name for p in state.iterdir()) == files and cluster.started() == [link]
        # A second process of a running one's name is refused too (its record would be lost).
        cluster.start("node-0", ["sleep", "60"])
        with pytest.raises(D.DeployError, match=r"in use by a running node-0 \(pid"):
            cluster.start("node-0", ["sleep", "60"])
    finally:
        assert not cluster.stop()


def test_a_launcher_waits_for_another_that_is_starting_processes_then_gives_up(tmp_path, capsys, monkeypatch):
    # Prepare: another launcher holds the state's lock (a separate lock object: another open file).
    monkeypatch.setattr(cluster_module, "LOCK_WAIT_S", 0.3)
    state = tmp_path / "state"
    state.mkdir()
    with FileLock(state / cluster_module.LOCK_FILE):
        # Execute
        t0 = time.monotonic()
        code, err = _fails(capsys, ["local", "--state", str(state), "--nodes", "1", "--insecure"])
        waited = time.monotonic() - t0
    # Assert
    assert code == 1 and f"state {state} is locked by another peerkd-deploy starting processes in it" in err
    assert waited >= 0.3 and D.Cluster(state).started() == []


def test_a_local_that_fails_half_way_stops_what_it_started(tmp_path, capsys, monkeypatch):
    # Prepare: the first SuperNode cannot start (the disk is full when its log is opened).
    def full(cluster, name, args, warm_port, extra=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(cluster.state / f"{name}.log"))

    monkeypatch.setattr(launch_module, "start_node", full)
    state = tmp_path / "state"
    # Execute
    code, err = _fails(capsys, ["local", "--state", str(state), "--nodes", "1", "--insecure"])
    # Assert: one line with the reason; the SuperLink that had started is stopped again.
    assert (code, err) == (1, f"peerkd-deploy local: error: No space left on device: {state / 'node-0.log'}")
    assert [s.name for s in D.Cluster(state).started()] == ["superlink"] and D.Cluster(state).running() == []


# --- damaged or missing files, bad numbers, a read-only file system ---------------------------


def _dead_superlink(state: Path) -> D.Started:
    """A state whose recorded SuperLink has exited, with the cluster.json it wrote."""
    proc = D.Cluster(state).start("superlink", ["true"])
    deadline = time.monotonic() + 10
    while D.process_tree([proc]) and time.monotonic() < deadline:
        time.sleep(0.05)
    port = D.free_ports(1)[0]
    D.LocalCluster(str(state), f"127.0.0.1:{port}", f"127.0.0.1:{port}", str(state / "flwr-home"), False, 1).write()
    return proc


def test_missing_or_damaged_state_files_are_one_line(tmp_path, capsys):
    # Prepare: a state without cluster.json; truncated and wrong-shaped cluster.json / processes.json;
    # a state whose SuperLink died; a cluster.json pointing at a port where nothing listens.
    s = {name: tmp_path / name for name in ("empty", "trunc", "shape", "runs", "dead", "gone")}
    for d in s.values():
        d.mkdir()
    (s["trunc"] / "processes.json").write_text('[{"name": "node')
    (s["trunc"] / "cluster.json").write_text('{"state": ')
    (s["shape"] / "processes.json").write_text('{"superlink": 1}')
    (s["shape"] / "cluster.json").write_text("[1, 2]")
    sleeper = subprocess.Popen(["sleep", "60"], cwd=s["runs"])  # a process the damaged record lost track of
    (s["runs"] / "processes.json").write_text("\0\0\0")
    dead = _dead_superlink(s["dead"])
    (s["gone"] / "flwr-home").mkdir()
    (s["gone"] / "flwr-home" / "config.toml").write_text(D.connection_toml(f"127.0.0.1:{D.free_ports(1)[0]}", None))
    D.LocalCluster(str(s["gone"]), "127.0.0.1:1", "127.0.0.1:1", str(s["gone"] / "flwr-home"), False, 1).write()
    run = ["--run-config", "rounds=1", "--app", str(REPO)]
    try:
        # Execute
        got = {
            "run empty": _fails(capsys, ["run", "--state", str(s["empty"]), *run]),
            "run nowhere": _fails(capsys, ["run", "--state", str(tmp_path / "nowhere"), *run]),
            "stop trunc": _fails(capsys, ["stop", "--state", str(s["trunc"])]),
            "run trunc": _fails(capsys, ["run", "--state", str(s["trunc"]), *run]),
            "stop shape": _fails(capsys, ["stop", "--state", str(s["shape"])]),
            "run shape": _fails(capsys, ["run", "--state", str(s["shape"]), *run]),
            "stop runs": _fails(capsys, ["stop", "--state", str(s["runs"])]),
            "run dead": _fails(capsys, ["run", "--state", str(s["dead"]), *run]),
            "run gone": _fails(capsys, ["run", "--state", str(s["gone"]), *run]),
        }
    finally:
        sleeper.kill()
        sleeper.wait()
    # Assert: exit 1, each line says what is wrong and what to do; nothing created.
    assert {code for code, _ in got.values()} == {1}
    msg = {k: err.split(": error: ", 1)[1] for k, (_, err) in got.items()}
    assert msg["run empty"] == (
        f"no cluster in {s['empty']} (no cluster.json); start one: peerkd-deploy local --state {s['empty']}"
    )
    assert msg["run nowhere"].startswith("no cluster in") and not (tmp_path / "nowhere").exists()
    assert msg["stop trunc"].startswith(f"{s['trunc'] / 'processes.json'} is damaged (Unterminated string")
    assert msg["stop trunc"].endswith("none runs in its directory; then delete it")
    assert msg["run trunc"].startswith(f"{s['trunc'] / 'cluster.json'} is damaged (Expecting value")
    assert msg["stop shape"].startswith(f"{s['shape'] / 'processes.json'} is damaged (not a list of process records)")
    assert msg["run shape"].startswith(f"{s['shape'] / 'cluster.json'} is damaged (")
    assert f"stop those still running in its directory by hand (pids {sleeper.pid})" in msg["stop runs"]
    assert msg["run dead"] == (
        f"the SuperLink of {s['dead']} (pid {dead.pid}) is not running; start the cluster again: "
        f"peerkd-deploy stop --state {s['dead']}, then local (or superlink)"
    )
    assert msg["run gone"].startswith("flwr run failed: Connection to the SuperLink is unavailable.")


@pytest.mark.parametrize(
    "argv, line",
    [
        (["local", "--nodes", "-2"], "peerkd-deploy local: error: --nodes: -2 is out of range (allowed: [1, inf))"),
        (["local", "--nodes", "0", "--insecure"], "peerkd-deploy local: error: --nodes: 0 is out of range"),
        (
            ["supernode", "--partition-id", "-3", "--num-partitions", "0", "--insecure", "--superlink", "127.0.0.1:1"],
            "peerkd-deploy supernode: error: --num-partitions: 0 is out of range (allowed: [1, inf))",
        ),
        (
            ["supernode", "--partition-id", "-3", "--num-partitions", "2", "--insecure", "--superlink", "127.0.0.1:1"],
            "peerkd-deploy supernode: error: --partition-id: -3 is out of range (allowed: [0, 2))",
        ),
        (
            ["supernode", "--partition-id", "2", "--num-partitions", "2", "--insecure", "--superlink", "127.0.0.1:1"],
            "peerkd-deploy supernode: error: --partition-id: 2 is out of range (allowed: [0, 2))",
        ),
        (
            ["supernode", "--partition-id", "0", "--num-partitions", "2", "--superlink", "127.0.0.1:1"],
            "peerkd-deploy supernode: error: --root-cert: the CA certificate is required",
        ),
        (
            ["supernode", "--partition-id", "0", "--num-partitions", "1", "--root-cert", "/nonexistent/ca.crt"]
            + ["--superlink", "127.0.0.1:1"],
            "peerkd-deploy supernode: error: --root-cert: /nonexistent/ca.crt is not a file",
        ),
    ],
)
def test_out_of_range_numbers_are_one_line_and_start_nothing(tmp_path, capsys, argv, line):
    state = tmp_path / "state"
    code, err = _fails(capsys, [argv[0], "--state", str(state), *argv[1:]])
    assert code == 2 and err.startswith(line), err
    assert not state.exists()


@pytest.mark.parametrize("argv", [["keys", "{dir}", "--nodes", "0"], ["bench", "--state", "{dir}", "--nodes", "2,x"]])
def test_bad_counts_of_keys_and_bench_sizes_are_one_line(tmp_path, capsys, argv):
    code, err = _fails(capsys, [a.format(dir=tmp_path / "d") for a in argv])
    assert code == 2 and ": error: --nodes: " in err and not (tmp_path / "d").exists()


def test_a_bench_place_not_known_is_one_line_naming_the_places(tmp_path, capsys):
    code, err = _fails(capsys, ["bench", "--state", str(tmp_path / "d"), "--where", "loopback,mars"])
    assert code == 2 and ": error: --where: " in err and "loopback" in err and "netns" in err, err
    assert not (tmp_path / "d").exists()


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A directory on a read-only file system: a tmpfs mounted ``ro`` (root ignores chmod 0555). Where
    mounting is not allowed, os.mkdir / os.open under it fail with EROFS instead (the OS boundary)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True)
    if mounted.returncode != 0:
        for name in ("mkdir", "open"):
            real = getattr(os, name)

            def refuse(path, *args, _real=real, **kwargs):
                if str(path).startswith(str(ro)):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
                return _real(path, *args, **kwargs)

            monkeypatch.setattr(os, name, refuse)
    else:
        assert os.statvfs(ro).f_flag & os.ST_RDONLY
    yield ro
    if mounted.returncode == 0:
        subprocess.run(["umount", str(ro)], check=True)


@pytest.mark.parametrize("sub", ["state", ""])
def test_local_on_a_read_only_file_system_is_one_line(read_only_dir, capsys, sub):
    # Execute: a new state directory on it, and the read-only directory itself as the state.
    state = read_only_dir / sub if sub else read_only_dir
    code, err = _fails(capsys, ["local", "--state", str(state), "--nodes", "1", "--insecure"])
    # Assert: the file that could not be written, and why.
    where = state if sub else state / cluster_module.LOCK_FILE
    assert (code, err) == (1, f"peerkd-deploy local: error: Read-only file system: {where}")


# --- a real cluster: a second local is refused and the first one keeps working -------------


def test_a_second_local_on_a_live_cluster_is_refused_and_the_cluster_keeps_working(tmp_path, capsys):
    # Prepare: a secure cluster of 2 SuperNodes, as Flower's defaults run them (a ClientApp process
    # per message: this path stays tested; the other deployment tests use warm ClientApps).
    state, out = tmp_path / "cluster", tmp_path / "out"
    cluster = D.Cluster(state)
    try:
        D.start_local(state, 2, secure=True, setup="flower")
        secrets = {p: p.read_bytes() for p in [*(state / "certs").iterdir(), *(state / "keys").iterdir()]}
        record, link = cluster.started(), cluster.get("superlink")
        fleet, control = (f"127.0.0.1:{p}" for p in D.free_ports(2))
        # Execute: a second cluster, and a second SuperLink with the state's own certificates.
        local = _fails(capsys, ["local", "--state", str(state), "--nodes", "2"])
        certs = ["--certs", str(state / "certs")]
        superlink = _fails(capsys, ["superlink", "--state", str(state), *certs, "--fleet", fleet, "--control", control])
        # Assert: both refused; CA, server and node keys untouched, the record unchanged.
        assert local == (1, f"peerkd-deploy local: error: {_in_use(state, link.pid)}")
        assert superlink == (1, f"peerkd-deploy superlink: error: {_in_use(state, link.pid)}")
        assert {p: p.read_bytes() for p in secrets} == secrets and cluster.started() == record
        # ... and the first cluster still runs a round with both nodes (TLS and node auth as before).
        run_config = f"strategy='peer' data='digits' num-clients=2 rounds=1 seed=0 out='{out}'"
        wait = ["--wait", str(SUMMARY_TIMEOUT)]
        assert D.main(["run", "--state", str(state), "--app", str(REPO), "--run-config", run_config, *wait]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rounds"] == 1 and sorted(c["client"] for c in summary["per_client"]) == [0, 1]
        assert len(cluster.running()) == 3
    finally:
        left = cluster.stop()
    assert not left, f"processes left running: {left}"
