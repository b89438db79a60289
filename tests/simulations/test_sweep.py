"""`peerkd sweep`: grids from config and command line, named studies, and resuming."""

import csv
import json

import pytest

from peerkd.errors import ConfigError
from simulations import sweep
from simulations.cli import _compose, main
from simulations.resume import config_change
from simulations.sweep import eta_s, expand, grid_axes, plan, point_dir, split_overrides

TINY = ["data=digits", "rounds=2", "train.epochs=1"]


def test_split_overrides_finds_sweeps():
    plain, axes = split_overrides(["rules=[local,peer]", "num_clients=2,4", "seed=range(0,3)", "data=digits"])
    assert plain == ["rules=[local,peer]", "data=digits"]
    assert axes == {"num_clients": ["2", "4"], "seed": ["0", "1", "2"]}


def test_grid_axes_command_line_replaces_adds_and_fixes():
    grid = ["partition.samples_per_client=25,50", "num_clients=2,4"]
    # Execute: replace one axis, add another, fix one to a single value.
    axes = grid_axes(grid, {"num_clients": ["8", "16"], "partition.alpha": ["0.1", "1"]}, set())
    fixed = grid_axes(grid, {}, {"num_clients"})
    # Assert: config order first, then new axes.
    assert axes == {
        "partition.samples_per_client": ["25", "50"],
        "num_clients": ["8", "16"],
        "partition.alpha": ["0.1", "1"],
    }
    assert fixed == {"partition.samples_per_client": ["25", "50"]}
    with pytest.raises(ConfigError, match="grid: 'rounds=3' is not a sweep"):
        grid_axes(["rounds=3"], {}, set())


def test_expand_is_a_product_first_axis_outermost():
    points = expand({"a": ["1", "2"], "b": ["x", "y"]})
    assert points == [
        (("a", "1"), ("b", "x")),
        (("a", "1"), ("b", "y")),
        (("a", "2"), ("b", "x")),
        (("a", "2"), ("b", "y")),
    ]
    assert expand({}) == [()]
    assert (
        point_dir((("partition.samples_per_client", "25"), ("num_clients", "2")))
        == "partition.samples_per_client=25,num_clients=2"
    )


def test_eta_from_the_pace_so_far():
    assert eta_s(0, 10, 5.0) is None
    assert eta_s(2, 10, 60.0) == pytest.approx(240.0)  # 30 s a run, 8 left


def test_config_change_names_the_first_setting_that_matters():
    old = {"rounds": 2, "train": {"epochs": 1}, "out": "a", "resources": {"num_cpus": 1.0}}
    assert config_change(old, {**old, "out": "b", "resources": {"num_cpus": 2.0}}) is None
    assert config_change(old, {**old, "data": {"transfer": "public"}}) is None  # a setting added since
    assert config_change(old, {**old, "train": {"epochs": 2}}) == "train.epochs: 1, now 2"


def test_scarcity_study_plans_paired_runs(tmp_path):
    # Execute: plan the named study (nothing runs).
    runs = plan(
        lambda o: _compose("sweep", o),
        ["experiment=scarcity"],
        grid_axes(list(_compose("sweep", ["experiment=scarcity"]).grid), {}, set()),
        tmp_path,
    )
    # Assert: 4 shard sizes × 4 client counts × 3 rules × 3 seeds, IID shards capped.
    assert len(runs) == 144
    assert {r.rule for r in runs} == {"local", "teacher", "peer"}
    biggest = [r for r in runs if r.spec.world.num_clients == 16 and r.spec.world.samples_per_client == 200]
    assert len(biggest) == 9 and all(r.spec.world.partition == "iid" for r in biggest)
    # Paired: every rule of one seed at one point has the same world.
    same = [r.spec.world for r in biggest if r.seed == 1]
    assert len(same) == 3 and len(set(same)) == 1
    assert biggest[0].out == tmp_path / "partition.samples_per_client=200,num_clients=16" / "local-seed0"


def test_heterogeneity_study_sweeps_alpha():
    cfg = _compose("sweep", ["experiment=heterogeneity"])
    assert list(cfg.grid) == ["partition.alpha=0.05,0.3,1,100"] and cfg.partition.name == "dirichlet"


def test_bad_sweep_input_is_one_line(capsys, tmp_path):
    assert main(["sweep", "experiment=nope"]) == 2
    assert "experiment: unknown value 'nope'" in capsys.readouterr().err
    assert main(["sweep", *TINY, "num_clients=2,500", f"out={tmp_path / 'a'}"]) == 2
    assert "num_clients: 500 clients" in capsys.readouterr().err
    assert main(["sweep", *TINY, "parallel=-1", f"out={tmp_path / 'b'}"]) == 2
    assert "parallel: -1 is out of range" in capsys.readouterr().err
    # A refused sweep leaves no results folder behind (it made one to hold it); one that existed stays.
    (tmp_path / "c").mkdir()
    assert main(["sweep", *TINY, "parallel=-1", f"out={tmp_path / 'c'}"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_sweep_resumes_without_redoing_finished_runs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    args = ["sweep", *TINY, "rules=[local,peer]", "seeds=[0]", "num_clients=3", f"out={out}"]
    real_execute = sweep.execute

    def killed_during_second_run(runs, *rest, **options):
        real_execute(runs[:1], *rest, **options)
        (runs[1].out).mkdir(parents=True)
        (runs[1].out / "metrics.jsonl").write_text('{"type": "round", "round": 1, "acc')  # torn by the kill
        raise KeyboardInterrupt

    # Prepare: a sweep killed while its second run was going.
    monkeypatch.setattr(sweep, "execute", killed_during_second_run)
    assert main(args) == 130
    monkeypatch.undo()
    finished = (out / "local-seed0" / "summary.json").stat().st_mtime_ns
    # Execute: the same command again.
    assert main(args) == 0
    # Assert: the finished run was kept as it was, the killed one was run again, both are reported.
    assert (out / "local-seed0" / "summary.json").stat().st_mtime_ns == finished
    assert json.loads((out / "peer-seed0" / "summary.json").read_text())["strategy"] == "peer"
    sessions = json.loads((out / "sweep.json").read_text())["sessions"]
    assert [(s["ran"], s["skipped"]) for s in sessions] == [(1, 0), (1, 1)]
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["strategy"], r["seed"]) for r in rows] == [("local", "0"), ("peer", "0")]
    assert "2 runs (1 already finished, 1 run now)" in capsys.readouterr().out
    assert "| local | 0." in (out / "report.md").read_text()
    # A changed setting in the same directory is refused before anything runs.
    assert main([*args, "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("peerkd: error: out: ") and "(train.epochs: 1, now 2)" in err


def test_seed_means_seeds_in_compare_and_sweep(capsys):
    from simulations.sweep import seeds_from_seed

    # Pure rewrite: one seed, a sweep list and a range all become the seeds list; other tokens pass.
    assert seeds_from_seed(["seed=3", "--cfg", "job", "rounds=2"]) == ["seeds=[3]", "--cfg", "job", "rounds=2"]
    assert seeds_from_seed(["seed=0,2"]) == seeds_from_seed(["seed=range(0,3,2)"]) == ["seeds=[0,2]"]
    # Through the command line: the config shows the one seed, and the sweep's axes line says so.
    assert main(["sweep", *TINY, "seed=0", "num_clients=2,4", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "seeds:\n- 0\n" in out and "× seeds [0]" in out and "'num_clients': ['2', '4']" in out
    assert main(["compare", *TINY, "seed=5", "--cfg", "job"]) == 0
    assert "seeds:\n- 5\n" in capsys.readouterr().out
    # Both at once is refused with one line.
    for command in ("compare", "sweep"):
        assert main([command, *TINY, "seed=1", "seeds=[2]"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("peerkd: error: seed: given with seeds=") and len(err.strip().splitlines()) == 1


def test_babylm_study_plans_families_of_decreasing_size(tmp_path, caplog):
    # Execute: plan the named study (nothing runs).
    runs = plan(
        lambda o: _compose("sweep", o),
        ["experiment=babylm"],
        grid_axes(list(_compose("sweep", ["experiment=babylm"]).grid), {}, set()),
        tmp_path,
    )
    # Assert: k = 1, 2, 4, 8 clients, one family member each; peers left out at k = 1, and said so.
    assert len(runs) == 3 * (3 + 5 + 5 + 5)
    eight = next(r for r in runs if r.spec.world.num_clients == 8)
    assert eight.spec.students == tuple(f"tlm@tlm:{d}" for d in range(2, 10))
    assert not [r for r in runs if r.spec.world.num_clients == 1 and r.rule in ("peer", "wml")]
    assert "skip_unfit: left out peer seed 0 at num_clients=1" in caplog.text
    # Without skip_unfit a rule that refuses a point stops the sweep before any run, naming the field.
    with pytest.raises(ConfigError, match="num_clients: peer needs at least 2 clients"):
        overrides = ["experiment=babylm", "skip_unfit=false"]
        plan(lambda o: _compose("sweep", o), overrides, {"num_clients": ["1"]}, tmp_path)
