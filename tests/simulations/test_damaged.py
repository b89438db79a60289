"""Damaged results folders (issue 20, item 3): ``peerkd report`` skips and lists a run whose files
do not parse or break the summary contract; a sweep started again redoes it. Never a traceback.

One real finished run (``data=digits rounds=2 num_clients=3``) and one real one-run sweep are
made once per module and copied for each case.
"""

import errno
import json
import os
import shutil

import pytest

from simulations.cli import main
from simulations.report_io import SUMMARY_TYPES, load_results

TINY = ["data=digits", "rounds=2", "num_clients=3"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("made") / "run"
    assert main(["run", *TINY, f"out={out}"]) == 0
    return out


@pytest.fixture
def two_runs(finished_run, tmp_path):
    """``runs/x`` (to be damaged) and ``runs/good``, both copies of the real run."""
    for name in ("x", "good"):
        shutil.copytree(finished_run, tmp_path / "runs" / name)
    return tmp_path / "runs"


def _report(capsys, root) -> tuple[int, list[str], str]:
    """Exit code, stderr lines and report.md of ``peerkd report root``."""
    code = main(["report", str(root)])
    err = capsys.readouterr().err.strip().splitlines()
    md = (root / "report.md").read_text() if (root / "report.md").is_file() else ""
    return code, err, md


def _set(key, value):
    def damage(path):
        summary = json.loads(path.read_text())
        path.write_text(json.dumps({**summary, key: value}))

    return damage


# (file, damage, the reason the skip line gives)
SUMMARY_DAMAGE = {
    "truncated": ("summary.json", lambda p: p.write_bytes(p.read_bytes()[:5]), "does not parse (line 2 col 3)"),
    "empty": ("summary.json", lambda p: p.write_bytes(b""), "is empty"),
    "a list": ("summary.json", lambda p: p.write_text("[1, 2]"), "is a list, not a mapping of keys to values"),
    "binary": ("summary.json", lambda p: p.write_bytes(b"\x89PNG\xff\x00\x01"), "is not UTF-8 text (byte 0)"),
    "a stray {}": (
        "summary.json",
        lambda p: p.write_text("{}"),
        "lacks strategy, dataset, num_clients and 10 more (keys of the summary contract)",
    ),
    "acc_mean a string": (
        "summary.json",
        _set("acc_mean", "0.9"),
        ": acc_mean is a string, not a share (0 to 1) or null",
    ),
    "acc_worst 2": ("summary.json", _set("acc_worst", 2), ": acc_worst is the number 2, not a share (0 to 1) or null"),
    "num_clients 0": ("summary.json", _set("num_clients", 0), ": num_clients is the number 0, not a positive integer"),
    "wall_s NaN": ("summary.json", _set("wall_s", float("nan")), ": wall_s is NaN, not a number"),
    "per_client acc a list": (
        "summary.json",
        _set("per_client", [{"acc": [1]}]),
        ": per_client is a list, not a list of clients",
    ),
    "broken config": (
        "config.yaml",
        lambda p: p.write_text("strategy:\n  name: [peer\n"),
        "does not parse (line 3 col 1)",
    ),
    "config a string": (
        "config.yaml",
        lambda p: p.write_text("just text\n"),
        "is a string, not a mapping of keys to values",
    ),
    "config data.size text": (
        "config.yaml",
        lambda p: p.write_text(p.read_text().replace("  size: 0", "  size: big")),
        ": data.size is a string, not a count or null",
    ),
}


@pytest.mark.parametrize("case", SUMMARY_DAMAGE)
def test_a_damaged_run_is_skipped_with_its_reason(two_runs, case):
    # Prepare
    name, damage, reason = SUMMARY_DAMAGE[case]
    damage(two_runs / "x" / name)
    # Execute
    runs, _, skipped = load_results(two_runs)
    # Assert: the good run read, the damaged one skipped with the reason a user reads.
    assert [r["path"] for r in runs] == [str(two_runs / "good")]
    assert [str(exc) for exc in skipped] == [f"{two_runs / 'x'}: {name}{' ' * (reason[0] != ':')}{reason}"]


def test_report_lists_a_skipped_run_in_one_warning_line_and_in_the_report(two_runs, capsys):
    # Prepare
    (two_runs / "x" / "summary.json").write_bytes(b'{\n  "s')
    # Execute
    code, err, md = _report(capsys, two_runs)
    # Assert
    assert code == 0
    assert err == [f"peerkd: warning: skipped {two_runs / 'x'}: summary.json does not parse (line 2 col 3)"]
    assert "**1 finished runs**" in md
    assert (
        f"**1 damaged run skipped** (in no table or plot):\n\n- `{two_runs / 'x'}`: "
        "summary.json does not parse (line 2 col 3)\n"
    ) in md


def test_the_summary_check_covers_the_contract():
    from peerkd.round.results import SUMMARY_KEYS

    assert tuple(SUMMARY_TYPES) == SUMMARY_KEYS


def test_garbage_lines_of_metrics_are_skipped_with_a_count(two_runs, capsys):
    # Prepare: a torn line, binary bytes, a JSON list and a round row whose accuracy is text.
    path = two_runs / "x" / "metrics.jsonl"
    rows = path.read_text().splitlines()
    rounds = [i for i, r in enumerate(rows) if '"type": "round"' in r]
    rows[rounds[0]] = rows[rounds[0]].replace('"acc_mean": 0', '"acc_mean": "0')  # a string now: 1 round left
    path.write_bytes(("\n".join(rows) + "\n").encode() + b'{"type": "rou\n\xff\xfe\x00garbage\n[1, 2]\n')
    # Execute
    code, err, md = _report(capsys, two_runs)
    # Assert: both runs reported; the four damaged lines counted.
    assert code == 0 and "**2 finished runs**" in md
    assert err == [f"peerkd: warning: {two_runs / 'x'}: 4 damaged lines of metrics.jsonl skipped"]
    runs = {r["path"]: r for r in load_results(two_runs).runs}
    assert len(runs[str(two_runs / "x")]["rounds"]) == len(runs[str(two_runs / "good")]["rounds"]) - 1
    capsys.readouterr()


def test_a_damaged_provenance_leaves_the_numbers(two_runs, capsys):
    (two_runs / "x" / "provenance.json").write_text('{"git_revision": 7}')
    code, err, md = _report(capsys, two_runs)
    assert code == 0 and "**2 finished runs**" in md and "Provenance (1 of 2 runs record it)" in md
    assert err == [
        f"peerkd: warning: {two_runs / 'x'}: provenance.json: git_revision is the number 7, not text or null; "
        "its provenance is left out"
    ]


def test_a_damaged_sweep_json_leaves_out_the_wall_time(two_runs, capsys):
    (two_runs / "sweep.json").write_text('{"wall_s": ')
    code, err, md = _report(capsys, two_runs)
    assert code == 0 and "Wall time of the sweep" not in md
    assert err == [
        f"peerkd: warning: {two_runs}: sweep.json does not parse (line 1 col 12); "
        "the report leaves out the sweep's wall time"
    ]


def test_every_run_damaged_is_one_error_line(finished_run, tmp_path, capsys):
    # Prepare: the only run of the directory, truncated.
    run = tmp_path / "x"
    shutil.copytree(finished_run, run)
    (run / "summary.json").write_bytes(b'{\n  "s')
    # Execute
    code, err, _ = _report(capsys, run)
    # Assert: the skip, then one error line; nothing written.
    assert code == 2
    assert err == [
        f"peerkd: warning: skipped {run}: summary.json does not parse (line 2 col 3)",
        f"peerkd: error: dir: every finished run under '{run}' is damaged (1 skipped)",
    ]
    assert not (run / "report.md").exists()


def test_a_read_only_directory_is_one_line_and_keeps_the_old_report(two_runs, capsys, monkeypatch):
    # Prepare: a report written, then no file can be created in the directory (a read-only mount:
    # as root, chmod would not stop the test).
    assert main(["report", str(two_runs)]) == 0
    before = (two_runs / "report.md").read_bytes()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(two_runs)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    capsys.readouterr()
    # Execute
    code, err, _ = _report(capsys, two_runs)
    # Assert
    assert code == 2
    assert err == [
        f"peerkd: error: dir: cannot write accuracy_vs_round.png in '{two_runs}': Read-only file system "
        "(allowed: a directory you can write: copy the results elsewhere and report the copy)"
    ]
    assert (two_runs / "report.md").read_bytes() == before


def test_report_files_are_replaced_not_written_through_a_link(two_runs, tmp_path, capsys):
    # Prepare: report.md planted as a link to a file elsewhere.
    elsewhere = tmp_path / "precious.txt"
    elsewhere.write_text("keep me")
    (two_runs / "report.md").symlink_to(elsewhere)
    # Execute
    assert main(["report", str(two_runs)]) == 0
    # Assert: the link is replaced by the report (with the umask's permissions); the file it pointed to is untouched.
    assert not (two_runs / "report.md").is_symlink() and (two_runs / "report.md").read_text().startswith("# peerkd")
    assert elsewhere.read_text() == "keep me"
    umask = os.umask(0)
    os.umask(umask)
    assert (two_runs / "report.md").stat().st_mode & 0o777 == 0o666 & ~umask
    assert not list(two_runs.glob(".*.tmp"))


# --- sweep relaunch ---------------------------------------------------------------------

SWEEP = ["sweep", *TINY, "rules=[peer]", "seeds=[0]", "train.epochs=1", "report=false"]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("made") / "sweep"
    assert main([*SWEEP, f"out={out}"]) == 0
    return out


@pytest.fixture
def sweep_copy(finished_sweep, tmp_path):
    shutil.copytree(finished_sweep, tmp_path / "sweep")
    return tmp_path / "sweep"


def _relaunch(capsys, out) -> tuple[int, str, str]:
    code = main([*SWEEP, f"out={out}"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("file", ["summary.json", "config.yaml"])
def test_a_sweep_redoes_a_damaged_run_and_keeps_the_damaged_file(sweep_copy, capsys, file):
    # Prepare: the finished run's summary.json or config.yaml truncated.
    run = sweep_copy / "peer-seed0"
    damaged = (run / file).read_bytes()[:5]
    (run / file).write_bytes(damaged)
    # Execute
    code, out, err = _relaunch(capsys, sweep_copy)
    # Assert: one warning naming the run, why and where the damaged files went; the run redone.
    assert code == 0 and "1 runs (0 already finished, 1 run now)" in out
    reason, aside = {
        "summary.json": ("summary.json does not parse (line 2 col 3)", "summary.json.damaged"),
        "config.yaml": (
            "config.yaml is a string, not a mapping of keys to values",
            "summary.json.damaged, config.yaml.damaged",
        ),
    }[file]
    assert f"redoing {run}: {reason}; set aside as {aside}\n" in err
    assert (run / f"{file}.damaged").read_bytes() == damaged
    assert load_results(run).runs[0]["summary"]["strategy"] == "peer"
    assert [s["ran"] for s in json.loads((sweep_copy / "sweep.json").read_text())["sessions"]] == [1, 1]


def test_a_sweep_sets_a_damaged_sweep_json_aside(sweep_copy, capsys):
    (sweep_copy / "sweep.json").write_bytes(b"\x00\x01")
    code, out, err = _relaunch(capsys, sweep_copy)
    assert code == 0 and "1 runs (1 already finished, 0 run now)" in out
    assert "sweep.json does not parse" in err and "set aside as sweep.json.damaged" in err
    assert len(json.loads((sweep_copy / "sweep.json").read_text())["sessions"]) == 1


def test_a_sweep_starts_over_a_run_whose_checkpoint_is_refused(sweep_copy, capsys):
    # Prepare: the run unfinished, with a checkpoint that is refused unread (an old pickle: CheckpointError).
    run = sweep_copy / "peer-seed0"
    (run / "summary.json").unlink()
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "server.pkl").write_bytes(b"\x80\x05garbage")
    # Execute
    code, out, err = _relaunch(capsys, sweep_copy)
    # Assert: one warning, the checkpoint gone, the run finished from round 1.
    assert code == 0 and "1 runs (0 already finished, 1 run now)" in out
    assert f"{run}: resume: cannot resume from {run / 'checkpoint' / 'server.pkl'}: it is a pickle" in err
    assert "removed its checkpoint, starting it over from round 1" in err
    assert not (run / "checkpoint").exists() and (run / "summary.json").is_file()


def test_a_sweep_refuses_a_checkpoint_made_with_other_settings_before_any_run(sweep_copy, capsys):
    run = sweep_copy / "peer-seed0"
    (run / "summary.json").unlink()
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "server.pkl").write_bytes(b"")
    code = main([*SWEEP, f"out={sweep_copy}", "train.lr=0.5"])
    err = capsys.readouterr().err
    assert code == 2 and f"out: {run} holds a checkpointed run made with other settings (train.lr: " in err
