"""Interrupts and resume: real `peerkd` processes, killed (SIGKILL) or interrupted (SIGINT).

A killed run resumes from its last checkpointed round and ends with the numbers of an
uninterrupted run; Ctrl-C stops a run within seconds, writes no summary and leaves no
process behind.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peerkd.deploy.processes import proc_table
from peerkd.round.checkpoint import CHECKPOINT_DIR, SERVER_FILE
from peerkd.round.results import read_jsonl
from simulations.cli import main

RUN = ["strategy=peer", "data=digits", "num_clients=3", "rounds=5", "train.epochs=3", "seed=0"]
ROUNDS, CLIENTS = 5, 3


def start(command: list[str], log: Path) -> subprocess.Popen:
    """`peerkd <command>` in a child process, in its own process group."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "simulations.cli", *command], stdout=f, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=_terminal_signals,
        )  # fmt: skip


def _terminal_signals() -> None:
    """In the child: SIGINT as in a terminal (a shell's background job, e.g. this test run under
    `nohup ... &`, starts with SIGINT ignored, and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(predicate, child: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert child.poll() is None, f"the child ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def checkpointed_round(out: Path) -> int:
    """The last round whose row is in metrics.jsonl once a checkpoint exists (0 before)."""
    if not (out / CHECKPOINT_DIR / SERVER_FILE).is_file():
        return 0
    return max((r["round"] for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "round"), default=0)


def kill_after_round(command: list[str], out: Path, log: Path, after: int = 2) -> None:
    """Start ``command``, SIGKILL its whole process group once round ``after`` is checkpointed."""
    child = start(command, log)
    try:
        wait_for(lambda: checkpointed_round(out) >= after, child, log)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert not (out / "summary.json").exists(), "the run finished before the kill: nothing was resumed"


def accuracies(out: Path) -> list[float]:
    return [c["acc"] for c in json.loads((out / "summary.json").read_text())["per_client"]]


def check_rows(out: Path) -> None:
    """One round row per round and one client row per client and round: none lost, none twice."""
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows if r["type"] == "round"] == list(range(1, ROUNDS + 1))
    clients = sorted((r["round"], r["client"]) for r in rows if r["type"] == "client")
    assert clients == [(r, c) for r in range(1, ROUNDS + 1) for c in range(CLIENTS)]
    assert sum(r["type"] == "setup" for r in rows) == 1


@pytest.mark.parametrize("engine", ["batched", "flower"])
def test_killed_run_resumes_to_the_uninterrupted_numbers(engine, tmp_path, capsys):
    # Prepare: the uninterrupted run.
    command = ["run", *RUN, f"engine.name={engine}"]
    assert main([*command, f"out={tmp_path / 'whole'}"]) == 0
    # Execute: a run SIGKILLed after round 2, then resumed.
    out = tmp_path / "killed"
    kill_after_round([*command, f"out={out}"], out, tmp_path / "child.log")
    resumed_after = checkpointed_round(out)
    assert main([*command, f"out={out}", "resume=true"]) == 0
    # Assert: the same final accuracies, every round once in metrics.jsonl, checkpoint gone.
    assert 2 <= resumed_after < ROUNDS
    assert accuracies(out) == accuracies(tmp_path / "whole")
    check_rows(out)
    assert not (out / CHECKPOINT_DIR).exists()


def test_resume_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "killed"
    command = ["run", *RUN, "engine.name=batched", f"out={out}"]
    kill_after_round(command, out, tmp_path / "child.log")
    # Execute: resume with another learning rate.
    code = main([*command, "train.lr=0.01", "resume=true"])
    # Assert: one line naming the setting; the checkpoint is kept for a correct resume.
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("peerkd: error: resume:") and "train.lr: 0.001, now 0.01" in err[0]
    assert (out / CHECKPOINT_DIR / SERVER_FILE).is_file()


def test_sweep_resumes_inside_a_run(tmp_path, capsys):
    # Prepare: the uninterrupted sweep (one rule, one seed: one run).
    sweep = ["sweep", "rules=[peer]", "seeds=[0]", *RUN[1:-1], "engine.name=batched", "parallel=1", "report=false"]
    assert main([*sweep, f"out={tmp_path / 'whole'}"]) == 0
    # Execute: the same sweep killed after round 2 of its run, then run again.
    out = tmp_path / "killed"
    kill_after_round([*sweep, f"out={out}"], out / "peer-seed0", tmp_path / "child.log")
    assert main([*sweep, f"out={out}"]) == 0
    # Assert
    assert accuracies(out / "peer-seed0") == accuracies(tmp_path / "whole" / "peer-seed0")
    check_rows(out / "peer-seed0")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (by parent links in /proc)."""
    parents = {p: row[0] for p, row in proc_table().items()}
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


@pytest.mark.parametrize(
    "engine, sig, group",
    [
        ("flower", signal.SIGINT, True),  # Ctrl-C in a terminal: the whole process group gets SIGINT
        ("flower", signal.SIGTERM, False),  # kill <pid>
        ("batched", signal.SIGINT, True),
    ],
)
def test_interrupt_stops_a_run_within_seconds(engine, sig, group, tmp_path):
    # Prepare: a long run, interrupted once its first round is done (Ray and actors up).
    out, log = tmp_path / "run", tmp_path / "child.log"
    child = start(["run", *RUN[:-2], "rounds=500", f"engine.name={engine}", f"out={out}"], log)
    try:
        wait_for(lambda: checkpointed_round(out) >= 1, child, log)
        below = descendants(child.pid)
        # Execute
        t0 = time.monotonic()
        os.killpg(child.pid, sig) if group else child.send_signal(sig)
        code = child.wait(timeout=60)
        stopped_s = time.monotonic() - t0
    finally:
        if child.poll() is None:  # failed: leave nothing running
            os.killpg(child.pid, signal.SIGKILL)
    assert below or engine == "batched", "Ray started no process"
    # Assert: exit 130 within seconds, no summary, none of its processes left.
    deadline = time.monotonic() + 15
    while alive(below) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert code == 130, log.read_text()[-3000:]
    assert stopped_s < 20, f"took {stopped_s:.1f} s"
    assert not (out / "summary.json").exists()
    assert not alive(below), f"left behind: {alive(below)}"
    assert "interrupted" in log.read_text()
