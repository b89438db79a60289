"""A state directory and its keys are owned; every ``peerkd-deploy`` failure is one line (issue 20, item 5).

Keys: ``certs`` / ``keys`` never overwrite a private key without ``--force``. State: a second
``local`` / ``superlink`` on a state whose processes run is refused before anything in it
changes (the CA is not regenerated under a running cluster), and ``stop`` signals a process
only while its PID, start time *and* command line are the recorded ones. Failures: missing or
damaged state files, a dead SuperLink, a read-only file system and out-of-range numbers are
one line on stderr with a non-zero exit, nothing created or left running.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from peerkd import deploy as D
from peerkd.deploy.processes import alive

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
