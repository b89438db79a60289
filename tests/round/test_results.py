import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peerkd.errors import ConfigError
from peerkd.round import results
from peerkd.round.results import (
    DirectFile,
    RunWriter,
    accuracy_stats,
    atomic_file,
    hold_run_dir,
    read_jsonl,
    write_error,
)
from simulations.report import compare_table, markdown_table


def test_accuracy_stats_by_hand():
    # mean 0.7, worst 0.5, population std sqrt(((-.2)^2 + 0 + .2^2) / 3) = 0.163299
    s = accuracy_stats([0.5, 0.7, 0.9])
    assert s["acc_mean"] == pytest.approx(0.7)
    assert s["acc_worst"] == pytest.approx(0.5)
    assert s["acc_std"] == pytest.approx(0.163299, abs=1e-6)
    assert accuracy_stats([]) == {"acc_mean": None, "acc_worst": None, "acc_std": None}


def test_writer_appends_as_it_goes_and_survives_a_torn_line(tmp_path):
    w = RunWriter(tmp_path / "run", {"strategy": {"name": "peer"}})
    w.log({"type": "round", "round": 1, "acc_mean": float("nan")})
    # Readable before the run ends: a killed run keeps what it finished.
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows == [{"type": "round", "round": 1, "acc_mean": None}]
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"type": "rou')  # a kill mid-write
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 1
    assert not (tmp_path / "run" / "summary.json").exists()
    w.finish({"acc_mean": 0.5})
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"acc_mean": 0.5}
    assert "peer" in (tmp_path / "run" / "config.yaml").read_text()


def _summary(rule, seed, acc, worst, up, down, teacher=None):
    return {
        "strategy": rule,
        "seed": seed,
        "acc_mean": acc,
        "acc_worst": worst,
        "teacher_acc": teacher,
        "bytes_up": up,
        "bytes_down": down,
        "wall_s": 10.0 + seed,
        "rounds": 2,
        "num_clients": 5,
    }


def test_compare_table_by_hand():
    # Prepare: two seeds per rule.
    runs = [
        _summary("local", 0, 0.50, 0.30, 0, 0),
        _summary("local", 1, 0.60, 0.40, 0, 0),
        _summary("peer", 0, 0.70, 0.50, 20_000, 10_000),
        _summary("peer", 1, 0.80, 0.70, 40_000, 30_000),
    ]
    # Execute
    rows = compare_table(runs, ["local", "peer", "teacher"])
    # Assert: mean, sample std (ddof=1) of [0.7, 0.8] = 0.070711; bytes per client per round in KB:
    # up (20,000 / (2·5) + 40,000 / (2·5)) / 2 / 1000 = 3.0; down (1,000 + 3,000) / 2 / 1000 = 2.0.
    assert [r["rule"] for r in rows] == ["local", "peer"]  # no teacher runs, no row
    peer = rows[1]
    assert peer["acc_mean"] == pytest.approx(0.75)
    assert peer["acc_mean_std"] == pytest.approx(0.070711, abs=1e-6)
    assert peer["acc_worst"] == pytest.approx(0.60)
    assert peer["kb_up_per_round"] == pytest.approx(3.0)
    assert peer["kb_down_per_round"] == pytest.approx(2.0)
    assert peer["wall_s"] == pytest.approx(10.5)
    md = markdown_table(rows)
    assert "| peer | 0.750 ± 0.071 | 0.600 ± 0.141 | – | 3.0 / 2.0 | 10 |" in md


def test_every_run_directory_records_versions_and_git_revision(tmp_path):
    RunWriter(tmp_path / "r", {}).finish({})
    prov = json.loads((tmp_path / "r" / "provenance.json").read_text())
    assert prov["packages"]["flwr"].startswith("1.39")
    assert prov["packages"]["torch"] is not None
    assert prov["git_revision"] is None or len(prov["git_revision"]) == 40


RUN_FILES = ("config.yaml", "provenance.json", "metrics.jsonl", "summary.json")


def _plant_links(run: Path, outside: Path, names) -> dict[Path, bytes | None]:
    """A link at each name in ``run`` to a file of the same name in ``outside`` (every other one
    dangling); returns each target's bytes (None: it must stay missing)."""
    run.mkdir(parents=True, exist_ok=True)
    outside.mkdir(exist_ok=True)
    targets = {}
    for i, name in enumerate(names):
        target = outside / name
        if i % 2 == 0:
            target.write_bytes(b"precious\n")
        (run / name).symlink_to(target)
        targets[target] = target.read_bytes() if target.exists() else None
    return targets


def _contents(targets: dict[Path, bytes | None]) -> dict[Path, bytes | None]:
    return {t: t.read_bytes() if t.exists() else None for t in targets}


def test_writer_replaces_planted_links_and_never_writes_through_them(tmp_path):
    # Prepare: links at every name the writer writes, to files and to nothing outside the run.
    names = [*RUN_FILES, "summary.json.tmp", "metrics.jsonl.tmp"]
    targets = _plant_links(tmp_path / "run", tmp_path / "outside", names)
    # Execute
    w = RunWriter(tmp_path / "run", {"rule": "peer"})
    w.log({"type": "round", "round": 1})
    w.keep_rounds(1)
    w.finish({"acc_mean": 0.5})
    # Assert: the targets as they were (the missing ones still missing); the run's own files are regular files.
    assert _contents(targets) == targets
    for name in RUN_FILES:
        assert not (tmp_path / "run" / name).is_symlink()
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl") == [{"type": "round", "round": 1}]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"acc_mean": 0.5}
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no staged file left behind


def test_a_resumed_writer_refuses_a_link_at_metrics_jsonl(tmp_path):
    # Prepare: a resume keeps metrics.jsonl, so a link there cannot be replaced: it is refused.
    targets = _plant_links(tmp_path / "run", tmp_path / "outside", ["metrics.jsonl"])
    # Execute
    with pytest.raises(OSError) as info:
        RunWriter(tmp_path / "run", {}, resume=True)
    # Assert: ELOOP, and as the one line a user sees.
    assert info.value.errno == errno.ELOOP
    assert str(write_error(tmp_path / "run", info.value)) == (
        f"out: cannot write '{tmp_path / 'run' / 'metrics.jsonl'}': a symbolic link: a run writes only files of its "
        "own (allowed: a directory this process can write, with free space)"
    )
    assert _contents(targets) == targets


def test_a_run_directory_is_held_by_one_process_at_a_time(tmp_path):
    # Prepare: this process holds the directory (twice: a runner, then run_on inside it).
    other = [
        sys.executable,
        "-c",
        f"from peerkd.round.results import hold_run_dir\nwith hold_run_dir({str(tmp_path)!r}): pass",
    ]
    with hold_run_dir(tmp_path), hold_run_dir(tmp_path):
        # Execute: another process tries.
        refused = subprocess.run(other, capture_output=True, text=True, timeout=120)
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    # Assert: refused at once, naming this process; free again once the blocks ended.
    assert refused.returncode != 0
    assert f"ConfigError: out: {tmp_path} is held by another run (pid {os.getpid()})" in refused.stderr
    assert subprocess.run(other, capture_output=True, timeout=120).returncode == 0


def test_a_link_planted_as_the_lock_is_refused(tmp_path):
    targets = _plant_links(tmp_path / "run", tmp_path / "outside", [".lock"])
    with pytest.raises(ConfigError, match=r"^out: cannot write '.*/run/\.lock': a symbolic link"):
        with hold_run_dir(tmp_path / "run"):
            pass
    assert _contents(targets) == targets


def test_atomic_file_writes_over_an_older_file_of_its_own_and_never_through_a_link(tmp_path):
    # Prepare: an older file to reuse; a link to an outside file; a file with a second (hard) name
    old, outside, twin = tmp_path / "old.pt", tmp_path / "outside.txt", tmp_path / "twin.pt"
    old.write_bytes(b"x" * 100)
    outside.write_text("keep")
    (tmp_path / "link.pt").symlink_to(outside)
    twin.write_text("keep too")
    os.link(twin, tmp_path / "twin-name.pt")
    inode = old.stat().st_ino
    # Execute: shorter content over the older file; the link and the twin offered for reuse
    with atomic_file(tmp_path / "new.pt", reuse=old) as f:
        f.write(b"short")
    with atomic_file(tmp_path / "via-link.pt", reuse=tmp_path / "link.pt") as f:
        f.write(b"linked")
    with atomic_file(tmp_path / "via-twin.pt", reuse=twin) as f:
        f.write(b"twinned")
    # Assert: the older file's inode holds exactly the new content under the new name; the link's
    # target and the twin's other name are untouched, their content written to new files instead
    assert (tmp_path / "new.pt").read_bytes() == b"short" and (tmp_path / "new.pt").stat().st_ino == inode
    assert not old.exists() and outside.read_text() == "keep" and (tmp_path / "twin-name.pt").read_text() == "keep too"
    assert (tmp_path / "via-link.pt").read_bytes() == b"linked" and not (tmp_path / "via-link.pt").is_symlink()
    assert (tmp_path / "via-twin.pt").read_bytes() == b"twinned"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("on_disk", [True, False])  # O_DIRECT where the filesystem takes it; else the page cache
def test_a_direct_atomic_file_holds_exactly_what_was_written(tmp_path, monkeypatch, on_disk):
    # Prepare: content in pieces of odd sizes, past one staging block, ending off any alignment;
    # an older, longer file to write over
    if not on_disk:
        monkeypatch.setattr(results, "_set_direct", lambda fd: False)
    pieces = [bytes([i % 251]) * n for i, n in enumerate((1, 4095, DirectFile.BLOCK + 7, 3, 10_000))]
    old = tmp_path / "old.pt"
    old.write_bytes(b"x" * (DirectFile.BLOCK * 2))
    # Execute
    with atomic_file(tmp_path / "new.pt", reuse=old, direct=True) as f:
        for piece in pieces:
            assert f.write(memoryview(piece)) == len(piece)
        f.flush()
    # Assert: byte for byte, no padding or old tail left, no temporary file
    assert (tmp_path / "new.pt").read_bytes() == b"".join(pieces)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_direct_write_leaves_no_file(tmp_path):
    # Execute: the writer raises midway
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_file(tmp_path / "new.pt", direct=True) as f:
            f.write(b"a" * 5000)
            raise RuntimeError("midway")
    # Assert: neither the file nor its temporary
    assert list(tmp_path.iterdir()) == []


def test_a_direct_file_whose_writes_the_filesystem_refuses_goes_through_the_page_cache(tmp_path, monkeypatch):
    # Prepare: a filesystem that takes O_DIRECT but refuses every write made with it (EINVAL)
    write = os.write

    def picky(fd, data):
        if results.fcntl.fcntl(fd, results.fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return write(fd, data)

    monkeypatch.setattr(results.os, "write", picky)
    content = bytes(range(256)) * 40_000  # past one staging block, ending off any alignment
    # Execute
    with atomic_file(tmp_path / "new.pt", direct=True) as f:
        f.write(content)
    # Assert: the whole content, written without O_DIRECT
    assert isinstance(f, DirectFile) and f.buffered
    assert (tmp_path / "new.pt").read_bytes() == content
