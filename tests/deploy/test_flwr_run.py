"""`flwr run .` end to end: the repo root as a Flower app on a managed local SuperLink.

Flower 1.39 reads SuperLink connections from ``$FLWR_HOME/config.toml`` (not from
pyproject). A connection whose address is ``:local:`` makes ``flwr run`` start a
detached ``flower-superlink --simulation`` (which starts ``flower-superexec``, which
starts one ``flwr-simulation`` process per run, which starts Ray). ``flwr run`` returns
once the run is submitted; the SuperLink keeps running until it is stopped by PID.

Isolation: FLWR_HOME is a temporary directory (config, SuperLink state and log, installed
FAB), the SuperLink listens on free ports (so an already running local SuperLink is never
reused), and runtime dependency installation (``uv sync`` of the app's dependencies,
which would pull a CUDA torch) is disabled.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peerkd.deploy import free_ports, stop_escalating

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RESULT_TIMEOUT = 180.0  # seconds from `flwr run` returning to summary.json

CONFIG_TOML = """\
[superlink]
default = "local"

[superlink.local]
address = ":local:"
"""

pytestmark = pytest.mark.skipif(
    not (BIN / "flwr").exists() or not Path("/proc").is_dir(),
    reason="needs the flwr CLI next to the interpreter and /proc",
)


def _processes() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (ppid, sid, state, cmdline) for every process we can read."""
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        procs[int(entry)] = (int(fields[1]), int(fields[3]), fields[0], cmd.strip())
    return procs


class LocalSuperLink:
    """Finds the SuperLink that `flwr run` started for ``flwr_home`` and everything below it.

    The SuperLink and SuperExec each start a new session (``start_new_session=True``);
    ``flwr-simulation`` and Ray's processes live in the SuperExec's session, and keep its
    session id even when orphaned. Every session seen under the SuperLink is remembered,
    so ``stop`` can reach processes whose parent has already exited.
    """

    def __init__(self, flwr_home: Path):
        self.marker = str(flwr_home / "local-superlink")  # in its --log-file/--database args
        self.pid: int | None = None
        self.sids: set[int] = set()
        self.seen: dict[int, str] = {}

    def scan(self) -> dict[int, tuple[int, int, str, str]]:
        """Our live processes (pid -> ppid, sid, state, cmdline); refreshes what we track."""
        procs = _processes()
        if self.pid is None:
            found = [p for p, (_, _, _, cmd) in procs.items() if "flower-superlink" in cmd and self.marker in cmd]
            if found:
                self.pid = found[0]
                self.sids.add(self.pid)
        if self.pid is None:
            return {}
        forbidden = {0, 1, os.getsid(0)}
        members = {self.pid} if self.pid in procs else set()
        grew = True
        while grew:
            grew = False
            for pid, (ppid, sid, _, _) in procs.items():
                if pid not in members and (ppid in members or sid in self.sids):
                    members.add(pid)
                    grew = True
                    if sid not in forbidden:
                        self.sids.add(sid)
        live = {p: procs[p] for p in members if procs[p][2] != "Z"}
        self.seen.update({p: v[3] for p, v in live.items()})
        return live

    def alive(self) -> bool:
        return self.pid is not None and self.pid in self.scan()

    def others_running(self, name: str) -> bool:
        return any(name in cmd for _, _, _, cmd in self.scan().values())

    def stop(self, grace: float = 15.0) -> dict[int, str]:
        """SIGTERM the SuperLink (its children follow it); then SIGTERM, then SIGKILL, what is left.

        Returns the processes still alive afterwards (pid -> cmdline); empty when all are gone.
        Each check rescans, so processes started while stopping are stopped too.
        """
        superlink = [self.pid] if self.pid in self.scan() else []
        left = stop_escalating(superlink, lambda: set(self.scan()), grace, poll=0.2)
        return {p: self.seen[p] for p in left}


def test_flwr_run_dot(tmp_path):
    # Arrange: a private Flower home whose default connection is a managed local SuperLink.
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(CONFIG_TOML)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # flwr starts `flower-superlink` from PATH
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # no `uv sync` of torch>=2.2 etc.
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)  # ray.init must start its own instance
    cmd = [
        str(BIN / "flwr"),
        "run",
        ".",
        "--run-config",
        f"data='digits' num-clients=3 rounds=2 strategy='peer' out='{out}'",
        "--federation-config",
        "num-supernodes=3 client-resources-num-cpus=1",
    ]
    link = LocalSuperLink(flwr_home)
    log_file = flwr_home / "local-superlink" / "superlink.log"
    run_id = None

    def diagnostics() -> str:
        """The SuperLink's log and, once the run exists, the run's own log (ServerApp, ClientApps)."""
        tail = log_file.read_text()[-3000:] if log_file.exists() else "(no superlink.log)"
        run_log = ""
        if run_id is not None and link.alive():
            try:
                shown = subprocess.run(
                    [str(BIN / "flwr"), "log", run_id, "--show"],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                run_log = f"\nflwr log {run_id}:\n{(shown.stdout + shown.stderr)[-4000:]}"
            except subprocess.TimeoutExpired:
                run_log = f"\nflwr log {run_id} timed out"
        return f"\nprocesses seen: {link.seen}\nsuperlink.log tail:\n{tail}{run_log}"

    t0 = time.monotonic()
    try:
        # Act. flwr gives the SuperLink a fixed 15 s to come up (and kills it after); on a
        # loaded machine that can be too short for the first start, so try twice.
        for attempt in (1, 2):
            # Free ports: a local SuperLink already listening on the default 39091 would be reused.
            http_port, control_port = free_ports(2)
            env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(http_port)
            env["FLWR_LOCAL_CONTROL_API_PORT"] = str(control_port)
            res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
            if attempt == 2 or res.returncode == 0 or "Failed to start local SuperLink" not in res.stdout + res.stderr:
                break
            leftovers = link.stop()
            assert not leftovers, f"processes left running by the failed start: {leftovers}"
            link = LocalSuperLink(flwr_home)
        link.scan()
        assert res.returncode == 0, f"flwr run failed:\n{res.stdout}\n{res.stderr}{diagnostics()}"
        started = re.search(r"Successfully started run (\d+)", res.stdout)
        assert started, res.stdout + res.stderr
        run_id = started.group(1)
        assert link.pid is not None, f"no flower-superlink found for {flwr_home}{diagnostics()}"
        summary_file = out / "summary.json"
        deadline = time.monotonic() + RESULT_TIMEOUT
        sim_seen = False
        while not summary_file.exists():
            assert link.alive(), f"the SuperLink exited before the run finished{diagnostics()}"
            running = link.others_running("flwr-simulation")
            sim_seen |= running
            # The run's process is gone and (checked after it) no summary: the run failed.
            assert running or not sim_seen or summary_file.exists(), (
                f"run {run_id} ended without summary.json{diagnostics()}"
            )
            assert time.monotonic() < deadline, f"no summary.json after {RESULT_TIMEOUT:g} s{diagnostics()}"
            time.sleep(0.5)
        t_result = time.monotonic() - t0
        # Let the run end on its own (ServerApp returns, Ray shuts down, flwr-simulation exits).
        deadline = time.monotonic() + 60
        while link.others_running("flwr-simulation") and time.monotonic() < deadline:
            time.sleep(0.5)

        # Assert
        summary = json.loads(summary_file.read_text())
        assert summary["strategy"] == "peer"
        assert summary["num_clients"] == 3 and summary["rounds"] == 2 and summary["dataset"] == "digits"
        assert 0.0 <= summary["acc_mean"] <= 1.0
        assert len(summary["per_client"]) == 3
        assert sorted(c["client"] for c in summary["per_client"]) == [0, 1, 2]
        assert (out / "metrics.jsonl").exists() and (out / "config.yaml").exists()
        # Runtime dependency installation stayed off: no `uv sync` env, no opt-in flag.
        assert not (flwr_home / "runtime-envs").exists()
        assert not any("--allow-runtime-dependency-installation" in c for c in link.seen.values()), link.seen
        print(f"summary.json after {t_result:.1f} s; SuperLink pid {link.pid}")
    finally:
        leftovers = link.stop()
    assert not leftovers, f"processes left running: {leftovers}"
