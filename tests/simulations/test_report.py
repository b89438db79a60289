"""`peerkd report` on a synthetic results directory: the tables match hand computation."""

import json

import numpy as np
import pytest
import yaml

from simulations.cli import main
from simulations.report import group_runs, swept_keys
from simulations.report_io import load_results, write_report
from simulations.stats import fmt_mean_std, paired_difference, verdict

# t(0.975, 2) = 4.302653: the 95% quantile with three seeds.
T2 = 4.302653


def test_paired_difference_by_hand():
    # Prepare: differences 0.1, 0.05, 0.0; mean 0.05; sample std 0.05; se 0.05 / √3 = 0.028868.
    # Execute
    d = paired_difference([0.8, 0.9, 0.7], [0.7, 0.85, 0.7])
    # Assert: 0.05 ± 4.302653 · 0.028868 = 0.05 ± 0.124207
    assert d["n"] == 3
    assert d["mean"] == pytest.approx(0.05)
    assert d["std"] == pytest.approx(0.05)
    assert d["lo"] == pytest.approx(0.05 - 0.124207, abs=1e-6)
    assert d["hi"] == pytest.approx(0.05 + 0.124207, abs=1e-6)
    assert verdict(d, "peer", "teacher") == "no clear difference"
    assert verdict(paired_difference([0.9, 0.8, 0.85], [0.5, 0.5, 0.5]), "peer", "local") == "peer better"
    # Two seeds: 0.35 ± t(0.975, 1) · 0.05 = 0.35 ± 12.706 · 0.05 covers 0.
    assert verdict(paired_difference([0.9, 0.8], [0.5, 0.5]), "peer", "local") == "no clear difference"


def test_paired_difference_with_too_few_seeds():
    assert paired_difference([0.8], [0.7])["lo"] is None
    assert paired_difference([0.8], [0.7])["mean"] == pytest.approx(0.1)
    assert paired_difference([], [])["n"] == 0
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.1])


def test_mean_and_std_cells_tell_one_seed_from_no_spread():
    # report.md marks one seed as "± –" (no spread measured, not a spread of 0); the frontier's
    # tables show the mean alone; neither has a mean for no runs.
    assert fmt_mean_std(0.87, 0.0031) == "0.870 ± 0.003"
    assert fmt_mean_std(0.87, 0.0) == "0.870 ± 0.000"
    assert fmt_mean_std(0.87, None) == "0.870 ± –"
    assert fmt_mean_std(0.87, None, no_spread="") == "0.870"
    assert fmt_mean_std(None, None) == "–"


def test_swept_keys_ignore_run_identity_and_missing_keys():
    configs = [
        {"num_clients": 2, "seed": 0, "out": "a", "strategy.name": "peer", "rounds": 5, "data.transfer": "public"},
        {"num_clients": 4, "seed": 1, "out": "b", "strategy.name": "local", "rounds": 5},
    ]
    assert swept_keys(configs) == ["num_clients"]  # data.transfer: missing in an older run


def test_points_sort_numerically():
    runs = [{"config": {"num_clients": n}} for n in (10, 2, 4)]
    assert [p for p in group_runs(runs, ["num_clients"])] == [
        (("num_clients", 2),),
        (("num_clients", 4),),
        (("num_clients", 10),),
    ]


# Accuracies per (num_clients, rule) over seeds 0, 1, 2.
ACC = {
    (2, "local"): [0.4, 0.5, 0.6],
    (2, "teacher"): [0.8, 0.85, 0.9],
    (2, "peer"): [0.7, 0.9, 0.8],
    (4, "local"): [0.5, 0.5, 0.5],
    (4, "teacher"): [0.8, 0.8, 0.8],
    (4, "peer"): [0.9, 0.9, 0.9],
}


def _write_run(path, clients, rule, seed, acc, data="digits"):
    path.mkdir(parents=True)
    config = {
        "strategy": {"name": rule, "alpha": 1.0},
        "data": {"name": data},
        "partition": {"name": "iid"},
        "num_clients": clients,
        "rounds": 2,
        "seed": seed,
        "out": str(path),
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    per_client = [{"client": c, "arch": "mlp64", "acc": acc, "loss": 1.0, "round": 2} for c in range(clients)]
    up = 0 if rule in ("local", "teacher") else 1000 * clients
    summary = {
        "strategy": rule,
        "dataset": "digits",
        "num_clients": clients,
        "rounds": 2,
        "seed": seed,
        "acc_mean": acc,
        "acc_worst": acc - 0.1,
        "acc_std": 0.0,
        "teacher_acc": 0.95 if rule == "teacher" else None,
        "bytes_up": 2 * up,
        "bytes_down": 0 if rule == "local" else 2 * 1000 * clients,
        "wall_s": 10.0,
        "per_client": per_client,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    rounds = [
        {"type": "round", "round": r, "acc_mean": acc * r / 2, "bytes_up": up, "bytes_down": summary["bytes_down"] // 2}
        for r in (1, 2)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (path / "provenance.json").write_text(
        json.dumps(
            {"git_revision": "0123456789abcdef", "git_dirty": False, "packages": {"flwr": "1.39.0", "torch": "2.13.0"}}
        )
    )


@pytest.fixture
def sweep_dir(tmp_path):
    for (clients, rule), accs in ACC.items():
        for seed, acc in enumerate(accs):
            _write_run(tmp_path / f"num_clients={clients}" / f"{rule}-seed{seed}", clients, rule, seed, acc)
    unfinished = tmp_path / "num_clients=8" / "peer-seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "metrics.jsonl").write_text('{"type": "round", "round": 1, "acc_mean": 0.1}\n')
    return tmp_path


def test_report_tables_match_hand_computation(sweep_dir):
    # Execute: from the files alone.
    md = write_report(sweep_dir).read_text()
    # Assert: mean ± sample std over seeds.
    # n=2: local 0.5 ± 0.1, teacher 0.85 ± 0.05, peer 0.8 ± 0.1.
    # peer − teacher: differences -0.1, 0.05, -0.1 -> mean -0.05, std 0.0866, se 0.05, ± 4.302653 · 0.05 = 0.2151
    # teacher − local: 0.4, 0.35, 0.3 -> 0.35 ± 4.302653 · 0.05/√3 = 0.35 ± 0.1242
    # peer − local: 0.3, 0.4, 0.2 -> 0.3 ± 4.302653 · 0.1/√3 = 0.3 ± 0.2484
    assert (
        "| 2 | 0.500 ± 0.100 | 0.850 ± 0.050 | 0.800 ± 0.100 "
        "| -0.050 [-0.265, +0.165] | +0.350 [+0.226, +0.474] | +0.300 [+0.052, +0.548] |"
    ) in md
    assert "| 2 | peer − teacher | 3 | -0.050 | [-0.265, +0.165] | no clear difference |" in md
    assert "| 2 | peer − local | 3 | +0.300 | [+0.052, +0.548] | peer better |" in md
    # n=4: constant differences, so a zero-width interval.
    assert "| 4 | peer − teacher | 3 | +0.100 | [+0.100, +0.100] | peer better |" in md
    # Per-rule table: traffic per client per round, (2 · 1000 · 4) / (2 rounds · 4 clients) / 1000 = 1.0 KB.
    assert "| 4 | peer | 0.900 ± 0.000 | 0.800 ± 0.000 | – | 1.0 / 1.0 | 10 |" in md
    assert "| 2 | teacher | 0.850 ± 0.050 | 0.750 ± 0.050 | 0.950 | 0.0 / 1.0 | 10 |" in md
    assert "**18 finished runs**" in md and "1 unfinished run directories" in md
    assert "Swept: `num_clients` ∈ {2, 4}" in md and "`0123456789`" in md


def test_report_writes_small_linked_plots(sweep_dir):
    md = write_report(sweep_dir).read_text()
    for name in (
        "accuracy_vs_round.png",
        "accuracy_vs_bytes.png",
        "client_accuracy.png",
        "accuracy_vs_num_clients.png",
    ):
        png = sweep_dir / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size < 200_000
        assert f"]({name})" in md


def test_report_of_a_single_run(sweep_dir):
    run = sweep_dir / "num_clients=2" / "peer-seed1"
    md = write_report(run).read_text()
    # One seed: no spread was measured, so none is shown (issue 14: not "± 0.000").
    assert "**1 finished runs**" in md and "| peer | 0.900 ± – |" in md
    assert "Swept" not in md and "Paired" not in md


def test_report_of_a_sweep_over_datasets(tmp_path):
    # Prepare: a swept group (data=digits,mnist1d): values that are not numbers.
    for data, acc in (("digits", 0.8), ("mnist1d", 0.6)):
        for seed in (0, 1):
            _write_run(tmp_path / f"data={data}" / f"peer-seed{seed}", 4, "peer", seed, acc + seed / 10, data=data)
    # Execute
    md = write_report(tmp_path).read_text()
    # Assert: digits 0.85 ± 0.0707 (0.8, 0.9); mnist1d 0.65 ± 0.0707.
    assert "| data | peer |" in md and "| mnist1d | 0.650 ± 0.071 |" in md
    assert (tmp_path / "accuracy_vs_data.png").stat().st_size < 200_000


def test_load_results_reads_rounds_and_flattens_config(sweep_dir):
    runs, unfinished, skipped = load_results(sweep_dir / "num_clients=4")
    assert unfinished == 0 and len(runs) == 9 and skipped == []
    assert runs[0]["config"]["strategy.name"] in ("local", "teacher", "peer")
    assert [r["round"] for r in runs[0]["rounds"]] == [1, 2]


def test_report_command(sweep_dir, tmp_path_factory, capsys):
    assert main(["report", str(sweep_dir)]) == 0
    assert "report.md" in capsys.readouterr().out
    empty = tmp_path_factory.mktemp("empty")
    assert main(["report", str(empty)]) == 2
    assert "peerkd: error: dir: no finished runs" in capsys.readouterr().err
    assert main(["report"]) == 2
    assert "dir: expected one results directory" in capsys.readouterr().err


def test_report_headline_pair_comes_from_the_run_configs(sweep_dir):
    # Prepare: the runs were made with pair=[local,peer] (compare and sweep record it in config.yaml).
    for path in sweep_dir.rglob("config.yaml"):
        config = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**config, "pair": ["local", "peer"]}))
    # Execute
    md = write_report(sweep_dir).read_text()
    # Assert: n=2, local − peer: -0.3, -0.4, -0.2 -> -0.3 ± 4.302653 · 0.1/√3 = -0.3 ± 0.2484; no peer − teacher.
    assert "| 2 | local − peer | 3 | -0.300 | [-0.548, -0.052] | peer better |" in md
    assert "peer − teacher" not in md and "| 2 | teacher − local | 3 |" in md


# --- no traps, readable plots (issue 14) ---------------------------------------------------


def test_keys_are_named_in_full_and_dataset_names_agree():
    from peerkd.world.build import WorldSpec
    from simulations.report import comparison_title
    from simulations.stats import key_names

    assert key_names(["partition.alpha", "data.name", "num_clients"]) == {
        "partition.alpha": "partition.alpha",
        "data.name": "data",
        "num_clients": "num_clients",
    }
    # comparison.md names a user file's dataset as its summaries and report.md do (the file's stem).
    title = comparison_title(WorldSpec(dataset="file", data_path="/data/wine.csv", num_clients=3), 20, [0], 5.0)
    assert title.startswith("# peerkd comparison\n\nwine, 3 clients, dirichlet partition (partition.alpha 0.3)")
    assert "one seed, so no spread" in title


def test_a_sweep_over_partition_alpha_names_the_key_in_full(tmp_path):
    for alpha in (0.1, 1.0):
        for seed in (0, 1):
            path = tmp_path / f"partition.alpha={alpha}" / f"peer-seed{seed}"
            _write_run(path, 2, "peer", seed, 0.5 + alpha / 10 + seed / 100)
            config = yaml.safe_load((path / "config.yaml").read_text())
            config["partition"]["alpha"] = alpha
            (path / "config.yaml").write_text(yaml.safe_dump(config))
    md = write_report(tmp_path).read_text()
    assert "| partition.alpha | peer |" in md and "`partition.alpha` ∈ {0.1, 1}" in md
    assert (tmp_path / "accuracy_vs_partition_alpha.png").is_file()


def test_teacher_model_and_teacher_rule_are_told_apart(sweep_dir):
    md = write_report(sweep_dir).read_text()
    assert "| worst client | teacher model |" in md
    assert '"teacher model" is the central' in md


def test_each_rule_keeps_its_colour_in_every_plot():
    from simulations.plots import RULE_COLORS, line_figure, rule_color

    curve = (np.array([1, 2, 3]), np.array([0.5, 0.6, 0.7]), np.zeros(3))
    # Execute: two figures with different rule sets (as compare and a sweep would have).
    a = line_figure([("", {"local": curve, "peer": curve})], ["local", "peer"], "t", "round", "acc")
    b = line_figure(
        [("", {"peer": curve, "wml": curve, "teacher": curve})], ["teacher", "peer", "wml"], "t", "round", "acc"
    )
    colour = {fig: {line.get_label(): line.get_color() for line in fig.axes[0].lines} for fig in (a, b)}
    # Assert: peer has one colour in both, and the same again on a later call; unknown rules get a fixed one.
    assert colour[a]["peer"] == colour[b]["peer"] == RULE_COLORS["peer"] == rule_color("peer")
    assert rule_color("my_rule") == rule_color("my_rule")
    assert len(set(RULE_COLORS.values())) == len(RULE_COLORS)


def test_plots_are_print_ready(sweep_dir):
    from PIL import Image

    from simulations.plots import box_figure, line_figure

    curve = (np.array([1, 2, 3]), np.array([0.5, 0.6, 0.7]), np.zeros(3))
    # Rounds get whole-number ticks, and a chance level is drawn.
    fig = line_figure([("", {"peer": curve})], ["peer"], "t", "round", "acc", chance=[0.1], integer_x=True)
    ax = fig.axes[0]
    assert all(float(t).is_integer() for t in ax.xaxis.get_major_locator()())
    assert any(line.get_label() == "chance" and list(line.get_ydata()) == [0.1, 0.1] for line in ax.lines)
    # The box plot's median is a black bar, whatever the rule's colour.
    box = box_figure([("", {"peer": [0.1, 0.5, 0.9]})], ["peer"], "t", "acc")
    medians = [line for line in box.axes[0].lines if list(line.get_ydata()) == [0.5, 0.5]]
    assert medians and medians[0].get_color() == "black"
    # Written at >= 150 dpi and a readable size; the report's runs know their chance level (digits: 183/1797).
    write_report(sweep_dir)
    image = Image.open(sweep_dir / "accuracy_vs_round.png")
    assert image.info["dpi"][0] >= 150 and image.size[0] >= 1000
    runs = load_results(sweep_dir).runs
    assert runs[0]["chance"] == pytest.approx(183 / 1797)


def test_a_swept_rule_setting_gets_one_line_per_value(tmp_path):
    from simulations.plots import setting_figures
    from simulations.report_io import load_results

    # Prepare: peer with two aggregators at two attacker shares, two seeds each.
    acc = {("mean", 0.0): 0.7, ("mean", 0.2): 0.3, ("median", 0.0): 0.65, ("median", 0.2): 0.6}
    for (agg, frac), base in acc.items():
        for seed in (0, 1):
            path = tmp_path / f"attack.fraction={frac},strategy.aggregator={agg}" / f"peer-seed{seed}"
            _write_run(path, 2, "peer", seed, base + seed / 100)
            config = yaml.safe_load((path / "config.yaml").read_text())
            config["strategy"]["aggregator"], config["attack"] = agg, {"fraction": frac}
            (path / "config.yaml").write_text(yaml.safe_dump(config))
    runs = load_results(tmp_path).runs
    # Execute
    [(name, caption, fig)] = setting_figures(runs, ["attack.fraction", "strategy.aggregator"])
    # Assert: one line per aggregator, at the mean over seeds (0.7 + 0.71) / 2 and (0.3 + 0.31) / 2 for mean.
    assert name == "accuracy_vs_attack_fraction_by_strategy_aggregator.png" and "strategy.aggregator" in caption
    lines = {line.get_label(): line for line in fig.axes[0].lines if line.get_label() in ("mean", "median")}
    assert set(lines) == {"mean", "median"}
    np.testing.assert_allclose(lines["mean"].get_ydata(), [0.705, 0.305])
    np.testing.assert_allclose(lines["median"].get_ydata(), [0.655, 0.605])
    assert lines["mean"].get_color() != lines["median"].get_color()
