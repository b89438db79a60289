"""Bad inputs are refused before any simulation starts: one line naming the field, exit code 2.

One case per row of issue 11's table that is about inputs (seeds, ``out=``, user files), run
through ``peerkd run`` in this process (Ray must not have started), and a few as real
processes (the exit code and the absence of a traceback as a user sees them).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulations.cli import main

TINY = ["data=digits", "num_clients=3", "rounds=1", "train.epochs=1"]


def _csv(path: Path, header: str, rows: list[str], encoding: str = "utf-8") -> str:
    path.write_bytes("\n".join([header, *rows]).encode(encoding))
    return str(path)


def _file(tmp_path: Path, kind: str) -> str:
    """A user file of one bad kind (the rows of the issue's table)."""
    rng = np.random.default_rng(0)
    if kind == "binary":
        path = tmp_path / "noise.csv"
        path.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
        return str(path)
    if kind == "latin-1":
        return _csv(tmp_path / "l1.csv", "f1,f2,label", [f"{i},{i % 3},caf\xe9{i % 2}" for i in range(60)], "latin-1")
    if kind == "npz-named-csv":
        np.savez(tmp_path / "arrays.npz", x=rng.normal(size=(60, 4)), y=rng.integers(0, 2, 60))
        return str((tmp_path / "arrays.npz").rename(tmp_path / "arrays.csv"))
    if kind == "continuous-label":
        return _csv(tmp_path / "c.csv", "f1,f2,label", [f"{i},{i % 7},{rng.normal():.4f}" for i in range(100)])
    if kind == "id-label":  # integers, but one per row: an identifier, not a class
        return _csv(tmp_path / "id.csv", "f1,label", [f"{i % 5},{i}" for i in range(100)])
    if kind == "duplicate-header":
        return _csv(tmp_path / "d.csv", "f1,f1,label", [f"{i},{i % 7},{i % 2}" for i in range(100)])
    if kind == "label-only":
        return _csv(tmp_path / "y.csv", "label", [f"{i % 2}" for i in range(100)])
    raise ValueError(kind)


def _refused(capsys, args: list[str]) -> str:
    """Run ``peerkd run ARGS`` here; assert exit 2 and a single error line; return that line."""
    code = main(["run", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("peerkd: error: ") and "\n" not in err and "Traceback" not in err, err
    return err[len("peerkd: error: ") :]


@pytest.mark.parametrize(
    "extra, field",
    [
        (["seed=-1"], "seed"),
        ([f"seed={2**70}"], "seed"),
        ([f"seed={2**32}"], "seed"),
        (["data.test_frac=0"], "data.test_frac"),
        (["data.test_frac=0.002"], "data.test_frac"),  # rounds to 0 rows in every class of digits
        (["engine.store=disk"], "engine.store"),
        (["engine.store=host", "engine.name=flower"], "engine.store"),
    ],
)
def test_bad_settings_are_one_line(capsys, tmp_path, extra, field):
    assert _refused(capsys, [*TINY, *extra, f"out={tmp_path / 'r'}"]).startswith(f"{field}: ")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "kind, field",
    [
        ("binary", "data.path"),
        ("latin-1", "data.path"),
        ("npz-named-csv", "data.path"),
        ("continuous-label", "data.label"),
        ("id-label", "data.label"),
        ("duplicate-header", "data.path"),
        ("label-only", "data.path"),
    ],
)
def test_bad_user_files_are_one_line(capsys, tmp_path, kind, field):
    path = _file(tmp_path, kind)
    line = _refused(capsys, ["data=file", f"data.path={path}", "num_clients=3", "rounds=1", f"out={tmp_path / 'r'}"])
    assert line.startswith(f"{field}: ") and path in line


def test_a_latin1_file_says_how_to_fix_it_and_an_npz_says_what_it_is(capsys, tmp_path):
    assert "iconv" in _refused(capsys, ["data=file", f"data.path={_file(tmp_path, 'latin-1')}"])
    assert ".npz" in _refused(capsys, ["data=file", f"data.path={_file(tmp_path, 'npz-named-csv')}"])


@pytest.mark.parametrize("engine", ["batched", "flower"])
def test_bad_out_is_refused_before_any_engine_starts(capsys, tmp_path, engine):
    import ray

    existing = tmp_path / "a-file"
    existing.write_text("not a directory")
    for out in (existing, Path("/proc/peerkd-x"), existing / "below-a-file"):
        line = _refused(capsys, [*TINY, f"engine.name={engine}", f"out={out}"])
        assert line.startswith("out: ") and str(out) in line
    assert not ray.is_initialized()
    assert existing.read_text() == "not a directory"


def test_check_validates_without_running(capsys, tmp_path):
    # Execute
    code = main(["run", *TINY, f"out={tmp_path / 'r'}", "--check"])
    # Assert: valid, nothing written.
    assert code == 0 and capsys.readouterr().out.startswith("ok: peer on digits, 3 clients, 1 rounds")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args",
    [
        [*TINY, "seed=-1"],
        ["data=file", "data.path=BINARY", "num_clients=3"],
        [*TINY, "engine.name=flower", "out=/proc/peerkd-x"],
    ],
)
def test_the_command_exits_2_without_a_traceback(tmp_path, args):
    args = [a.replace("BINARY", _file(tmp_path, "binary")) for a in args]
    res = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "run", *args], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert res.stderr.startswith("peerkd: error: ") and res.stderr.count("\n") == 1, res.stderr


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_compare_and_sweep_refuse_bad_seeds_and_out_too(capsys, tmp_path, command):
    existing = tmp_path / "a-file"
    existing.write_text("x")
    base = [command, "data=digits", "num_clients=3", "rounds=1", "rules=[local]"]
    for extra, field in ((["seeds=[0,-1]"], "seed"), ([f"out={existing}"], "out")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"peerkd: error: {field}: ") and "\n" not in err, err


BIG = "1000000000000"  # 1e12, as an integer (Hydra reads 1e12 as a float, which an int setting refuses)


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["data=digits", f"train.batch_size={BIG}"],
            f"train.batch_size: {BIG} is out of range (allowed: [1, 1048576])",
        ),
        (["data=synth", f"data.size={BIG}"], f"data.size: {BIG} is out of range (allowed: [0, 100000000])"),
        (["data=digits", "data.transfer=noise", f"data.transfer_size={BIG}"], f"data.transfer_size: {BIG} is out"),
        (["data=digits", "train.epochs=1000000000"], "train.epochs: 1000000000 is out of range (allowed: [1, 10000])"),
        (["data=digits", f"num_clients={BIG}"], f"num_clients: {BIG} is out of range (allowed: [1, 1797])"),
        (["data=digits", "attack.fraction=1.0"], "attack.fraction: 1.0 is out of range (allowed: [0, 1))"),
        (["data=digits", "attack.fraction=0.95"], "attack.fraction: 0.95 of 10 clients rounds to 10 attackers"),
        # Within range, beyond memory (64 MiB here): synth needs ~200 MiB to generate 100,000 rows; 20,000
        # Flower actors (0.0001 CPU each) ~300 MiB each.
        (["data=synth", "data.size=100000"], "data.size: the run would need ~200.3 MiB of memory, but 64.0 MiB is"),
        (["data=digits", "engine.name=flower", "resources.num_cpus=0.0001"], "resources.num_cpus: the run would need"),
    ],
)
def test_inputs_that_ate_the_machine_are_one_line_before_anything_allocates(capsys, tmp_path, monkeypatch, args, line):
    # Prepare: this machine has 64 MiB to give, so that a check that failed could not take much.
    monkeypatch.setattr("peerkd.batched.memory.available_ram", lambda: 64 << 20)
    # Execute / Assert
    assert _refused(capsys, [*args, "rounds=1", f"out={tmp_path / 'r'}", "--check"]).startswith(line)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("engine", [["engine.workers=1"], ["engine.name=flower"]])
def test_an_unreachable_ray_address_is_one_line_not_a_hang(capsys, tmp_path, engine):
    import socket
    import time

    import ray

    # Prepare: a loopback port nothing listens on.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    # Execute: a real run, not --check.
    line = _refused(capsys, [*TINY, *engine, f"engine.ray_address=127.0.0.1:{port}", f"out={tmp_path / 'r'}"])
    # Assert
    assert line.startswith(f"engine.ray_address: cannot reach Ray at 127.0.0.1:{port} within 5 s")
    assert time.monotonic() - start < 60 and not ray.is_initialized()


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_text_corpus_in_latin1_or_utf16_is_read(capsys, tmp_path, encoding):
    # Prepare: 300 lines of French in two sources.
    text = "".join(f"{'ab'[i % 2]}\tcafé crème n°{i}, déjà vu à l'été\n" for i in range(300))
    (tmp_path / "fr.txt").write_bytes(text.encode(encoding))
    # Execute
    path, out = tmp_path / "fr.txt", tmp_path / "r"
    code = main(["run", "data=file", f"data.path={path}", "students=[gru]", "num_clients=2", f"out={out}", "--check"])
    # Assert
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[-1].startswith("ok: peer on file, 2 clients"), out
