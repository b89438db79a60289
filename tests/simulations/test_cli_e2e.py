"""The `peerkd` command end to end: real simulations through the CLI entry point."""

import csv
import json

from simulations.cli import main

TINY = ["data=digits", "num_clients=3", "rounds=2", "train.epochs=1"]


def test_run_is_reproducible_for_a_seed(tmp_path, capsys):
    # Execute: the same command twice.
    for name in ("a", "b"):
        assert main(["run", "strategy=peer", *TINY, "seed=1", f"out={tmp_path / name}"]) == 0
    # Assert: identical per-client accuracies (paired comparisons rely on this).
    a, b = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("a", "b"))
    assert [c["acc"] for c in a["per_client"]] == [c["acc"] for c in b["per_client"]]
    assert a["acc_mean"] == b["acc_mean"] and a["bytes_up"] == b["bytes_up"]
    assert "peer: accuracy mean" in capsys.readouterr().out


def test_compare_writes_tables(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "rules=[local,peer]", "seeds=[0,1]", *TINY, f"out={out}"]) == 0
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert [r["rule"] for r in rows] == ["local", "peer"]
    assert all(r["runs"] == "2" for r in rows)
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["strategy"], r["seed"]) for r in runs] == [("local", "0"), ("peer", "0"), ("local", "1"), ("peer", "1")]
    # The table's mean is the mean of the runs' means.
    peer_means = [float(r["acc_mean"]) for r in runs if r["strategy"] == "peer"]
    assert abs(float(rows[1]["acc_mean"]) - sum(peer_means) / 2) < 1e-9
    md = (out / "comparison.md").read_text()
    assert "| peer |" in md and "seeds [0, 1]" in md
    for run_dir in ("local-seed0", "peer-seed1"):
        assert (out / run_dir / "summary.json").is_file()
    assert "4 runs in" in capsys.readouterr().out


def test_own_csv_prints_its_splits_and_warns_when_small(tmp_path, capsys):
    # Prepare: 60 rows, 3 string classes, features on very different scales.
    kinds = ("ant", "bee", "cat")
    rows = ["height,weight,kind"] + [f"{150 + i},{60_000 + 997 * (i % 7)},{kinds[i % 3]}" for i in range(60)]
    (tmp_path / "tiny.csv").write_text("\n".join(rows) + "\n")
    # Execute
    code = main(
        [
            "run",
            "data=file",
            f"data.path={tmp_path / 'tiny.csv'}",
            "data.label=kind",
            "num_clients=2",
            "partition=iid",
            "partition.min_size=5",
            "rounds=1",
            "train.epochs=1",
            "strategy=local",
            f"out={tmp_path / 'run'}",
        ]
    )
    out, err = capsys.readouterr()
    # Assert: the split sizes (a 60-row, 3-class file gets the capped fractions 0.3 / 0.2 / 0.2) and the warnings.
    assert code == 0
    assert "tiny: 60 rows, input shape (2,), 3 classes; splits of seed 0:" in out
    assert "test          18 rows" in out and "transfer      12 inputs" in out and "server        12 rows" in out
    assert "standardised with the mean and std of the 24 public+server rows" in out
    assert "peerkd: warning: the test split has 18 rows (< 50)" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "tiny"
