"""A run directory belongs to one run (issue 20, item 2): real `peerkd run`s on a tiny world.

A second run on a held ``out=`` is refused at once; a finished run is replaced by other settings
only with ``overwrite=true``; links planted in ``out=`` are never written through; a read-only or
full disk is one line, exit != 0, and the earlier run stays as it was.
"""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peerkd.round.results import read_jsonl
from simulations.cli import main

RUN = ["run", "strategy=peer", "data=digits", "num_clients=3", "rounds=2", "seed=0", "engine.name=batched"]
OUTSIDE = b"precious\n"


def run(capsys, *args: str) -> tuple[int, list[str]]:
    """`peerkd run` in this process: its exit code and its stderr lines."""
    logging.getLogger("peerkd").handlers.clear()  # an earlier call's handler writes to a closed capture
    code = main([*RUN, *args])
    return code, capsys.readouterr().err.strip().splitlines()


def files(out: Path) -> dict[str, bytes]:
    """Every file of a run directory but its lock (whose pid changes with each holder)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != ".lock"}


def test_two_runs_at_once_on_one_out_one_is_refused_the_other_intact(tmp_path):
    # Prepare: two `peerkd run` processes started together on one out=.
    out, rounds = tmp_path / "r", 3
    command = [sys.executable, "-m", "simulations.cli", *RUN, f"rounds={rounds}", f"out={out}"]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        # Execute: once one holds out=, freeze it until the other has ended (however fast the run, or slow the machine).
        holder = wait_for_holder(out, children)
        os.kill(holder.pid, signal.SIGSTOP)
        other = next(c for c in children if c is not holder)
        t0 = time.monotonic()
        _, other_err = other.communicate(timeout=300)
        refused_s = time.monotonic() - t0
        os.kill(holder.pid, signal.SIGCONT)
        holder.communicate(timeout=300)
    finally:
        for child in children:
            child.kill() if child.poll() is None else None
    # Assert: the other refused in one line naming the holder; the holder's metrics whole, every round once.
    assert other.returncode == 2 and holder.returncode == 0
    assert other_err.strip().splitlines() == [
        f"peerkd: error: out: {out} is held by another run (pid {holder.pid}) "
        "(allowed: another out directory, or this one once that run has ended)"
    ]
    assert refused_s < 60  # it did not wait for the holder (frozen, it would never end)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line parses
    assert [r["round"] for r in rows if r["type"] == "round"] == list(range(1, rounds + 1))
    assert sum(r["type"] == "setup" for r in rows) == 1


def wait_for_holder(out: Path, children: list[subprocess.Popen]) -> subprocess.Popen:
    """The child whose pid the lock of ``out`` records."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            pid = int((out / ".lock").read_text())
        except (OSError, ValueError):
            pid = None
        holder = next((c for c in children if c.pid == pid), None)
        if holder is not None:
            return holder
        assert all(c.poll() is None for c in children), [c.communicate() for c in children]
        time.sleep(0.005)
    raise AssertionError("no run took the lock")


def test_a_finished_run_is_replaced_by_other_settings_only_with_overwrite(tmp_path, capsys):
    # Prepare: a finished run.
    out = tmp_path / "r"
    assert run(capsys, f"out={out}")[0] == 0
    before = files(out)
    # Execute: the same out= with another learning rate.
    code, err = run(capsys, f"out={out}", "train.lr=0.01")
    # Assert: one line naming the flag and the difference; not a byte changed.
    assert code == 2
    assert err == [
        f"peerkd: error: overwrite: {out} holds a finished run made with other settings (train.lr: 0.001, now 0.01) "
        "(allowed: overwrite=true to replace it, or another out=)"
    ]
    assert files(out) == before
    # The same settings with resume=true: returned as it is.
    assert run(capsys, f"out={out}", "resume=true")[0] == 0 and files(out) == before
    # With the flag: replaced.
    assert run(capsys, f"out={out}", "train.lr=0.01", "overwrite=true")[0] == 0
    assert "lr: 0.01\n" in (out / "config.yaml").read_text()
    assert files(out)["summary.json"] != before["summary.json"]


@pytest.mark.parametrize("name", ["summary.json.tmp", "metrics.jsonl", "config.yaml", "provenance.json", ".lock"])
def test_a_link_planted_in_out_is_never_written_through(tmp_path, capsys, name):
    # Prepare: a link in out= to a file outside it.
    out, target = tmp_path / "r", tmp_path / "outside"
    out.mkdir()
    target.write_bytes(OUTSIDE)
    (out / name).symlink_to(target)
    # Execute
    code, err = run(capsys, f"out={out}")
    # Assert: the target untouched; the link replaced by the run's own file, or refused in one line.
    assert target.read_bytes() == OUTSIDE
    if name == ".lock":
        assert code == 2 and err == [
            f"peerkd: error: out: cannot write '{out / '.lock'}': a symbolic link: a run writes only files of its own "
            "(allowed: a directory this process can write, with free space)"
        ]
    else:  # a run stages its files under names of its own: a link at summary.json.tmp is left alone
        assert code == 0 and not (out / "summary.json").is_symlink()
        assert (out / name).is_symlink() == name.endswith(".tmp")


def test_a_link_planted_as_a_finished_summary_is_not_taken_for_this_runs(tmp_path, capsys):
    # Prepare: summary.json a link to a file outside, and no config.yaml: settings unknown.
    out, target = tmp_path / "r", tmp_path / "outside"
    out.mkdir()
    target.write_bytes(OUTSIDE)
    (out / "summary.json").symlink_to(target)
    # Execute, Assert: refused as a finished run of other settings; replaced (the link, not its target) with the flag.
    code, err = run(capsys, f"out={out}")
    assert code == 2 and len(err) == 1 and err[0].startswith(f"peerkd: error: overwrite: {out} holds a finished run")
    assert run(capsys, f"out={out}", "overwrite=true")[0] == 0
    assert target.read_bytes() == OUTSIDE and not (out / "summary.json").is_symlink()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (root only: skipped elsewhere), unmounted after the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    except OSError:
        mounted = None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path, leave: int = 0) -> None:
    """Write a file on ``disk`` until about ``leave`` bytes are free."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while (s := os.statvfs(disk)).f_bavail * s.f_frsize > leave:
            os.write(fd, b"\0" * min(4096, s.f_bavail * s.f_frsize - leave))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_full_disk_is_one_line_and_the_earlier_run_stays(small_disk, capsys):
    # Prepare: a finished run on a small disk, then the disk filled.
    earlier = small_disk / "a"
    assert run(capsys, f"out={earlier}")[0] == 0
    before = files(earlier)
    fill(small_disk)
    # Execute: run it again with other settings, with the flag that replaces it.
    code, err = run(capsys, f"out={earlier}", "train.lr=0.01", "overwrite=true")
    # Assert: one line; the earlier run as it was.
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("peerkd: error: out: cannot write") and "No space left on device" in err[0]
    assert files(earlier) == before
    # A run that fills the disk after it started writing: one line too, and the earlier run still as it was.
    os.unlink(small_disk / "filler")
    fill(small_disk, leave=40_000)
    code, err = run(capsys, f"out={small_disk / 'b'}")
    assert code == 2 and "No space left on device" in err[-1] and "Traceback" not in "\n".join(err), err
    assert err[-1].startswith("peerkd: error: out: cannot write") and not err[-2].startswith("peerkd: error")
    assert (small_disk / "b" / "config.yaml").is_file() and not (small_disk / "b" / "summary.json").exists()
    assert files(earlier) == before


def test_a_read_only_disk_is_one_line_and_the_earlier_run_stays(small_disk, capsys):
    # Prepare: a finished run, then its filesystem read-only.
    earlier = small_disk / "a"
    assert run(capsys, f"out={earlier}")[0] == 0
    before = files(earlier)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    # Execute: the same run again, another with the flag, and a new one beside it.
    results = [run(capsys, f"out={earlier}"), run(capsys, f"out={earlier}", "seed=1", "overwrite=true")]
    results.append(run(capsys, f"out={small_disk / 'b'}"))
    # Assert: one line each, naming out=; the earlier run as it was.
    for code, err in results:
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith("peerkd: error: out: cannot write") and "Read-only file system" in err[0]
    assert files(earlier) == before
    assert read_jsonl(earlier / "metrics.jsonl")


def test_a_sweep_root_held_by_another_process_is_refused_and_compare_takes_no_overwrite(tmp_path, capsys):
    # Prepare: another process holds the compare's out= (as a running compare would).
    out = tmp_path / "cmp"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from peerkd.round.results import hold_run_dir\nwith hold_run_dir({str(out)!r}):\n"
            "    print('held', flush=True)\n    import time; time.sleep(120)",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        # Execute: a compare into the held directory; a compare asking to overwrite.
        logging.getLogger("peerkd").handlers.clear()
        held = main(["compare", "data=digits", "num_clients=3", "rounds=1", "rules=[local]", "seeds=[0]", f"out={out}"])
        held_err = capsys.readouterr().err.strip().splitlines()
    finally:
        holder.kill()
        holder.wait()
    asked = main(["compare", "data=digits", "rules=[local]", f"out={tmp_path / 'other'}", "overwrite=true"])
    asked_err = capsys.readouterr().err.strip().splitlines()
    # Assert: one line each, exit 2; nothing ran in the held directory.
    assert held == 2 and held_err[-1].startswith(f"peerkd: error: out: {out} is held by another run (pid {holder.pid})")
    assert not (out / "local-seed0").exists()
    assert asked == 2 and asked_err == [
        "peerkd: error: overwrite: peerkd compare never replaces finished runs (allowed: false (or another out=))"
    ]


def test_a_checkpoint_directory_planted_as_a_link_is_never_written_through(tmp_path, capsys):
    # Prepare: out=/checkpoint is a link to a directory elsewhere.
    out, elsewhere = tmp_path / "r", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "checkpoint").symlink_to(elsewhere, target_is_directory=True)
    # Execute
    code, err = run(capsys, f"out={out}")
    # Assert: one line naming the link, exit 2; nothing written where it points.
    assert code == 2 and err[-1].startswith(f"peerkd: error: out: {out / 'checkpoint'} is a symbolic link")
    assert list(elsewhere.iterdir()) == []
