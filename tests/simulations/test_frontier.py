"""The frontier tables: bytes per round and accuracy over seeds by hand, the targets' verdict."""

import math

import pytest

from simulations.frontier import codec_table, epsilon_table, frontier_rows, main


def run(rule, acc, up, down, codec="fp32", k=3, epsilon=None, spent=None, seed=0, unit="client"):
    config = {"codec.name": codec, "codec.k": k, "privacy.epsilon": epsilon, "privacy.unit": unit}
    summary = {"strategy": rule, "acc_mean": acc, "bytes_up": up, "bytes_down": down, "rounds": 2, "num_clients": 2}
    return {"config": config, "summary": {**summary, "seed": seed, "dp_epsilon_spent": spent}}


def test_rows_average_seeds_and_count_bytes_per_client_per_round():
    # Two seeds of peer at 0.8 and 0.9; 400 B up + 400 B down over 2 clients x 2 rounds = 200 B.
    (row,) = frontier_rows([run("peer", 0.8, 400, 400), run("peer", 0.9, 400, 400, seed=1)])
    assert (row["rule"], row["codec"], row["epsilon"], row["seeds"]) == ("peer", "fp32", math.inf, 2)
    assert row["acc"] == pytest.approx(0.85) and row["acc_std"] == pytest.approx(0.0707107, abs=1e-6)
    assert row["bytes_round"] == 200


def test_the_codec_table_checks_both_targets():
    # fedavg: 8,000 B/round; peer fp32: 0.900 at 800 B; int8 at 0.896 with 400 B (20x, -0.4 points)
    # meets both; topk1 at 200 B (40x) but 0.880 (-2.0 points) does not.
    rows = frontier_rows(
        [
            run("fedavg", 0.91, 16000, 16000),
            run("peer", 0.9, 1600, 1600),
            run("peer", 0.896, 800, 800, codec="int8"),
            run("peer", 0.88, 400, 400, codec="topk", k=1),
        ]
    )
    table = codec_table(rows)
    assert "| peer | int8 | 0.896 | 0.4 | 20.0× | -0.4 | yes |" in table
    assert "| peer | topk1 | 0.880 | 0.2 | 40.0× | -2.0 | no |" in table


def test_the_codec_tables_baseline_is_the_non_private_run():
    # Prepare: a private float32 peer run (0.5, eps 4) listed before the non-private one (0.9).
    rows = frontier_rows(
        [
            run("fedavg", 0.91, 16000, 16000),
            run("peer", 0.5, 1600, 1600, epsilon=4.0, spent=3.99),
            run("peer", 0.9, 1600, 1600),
            run("peer", 0.896, 800, 800, codec="int8"),
        ]
    )
    # Assert: int8 is compared with 0.900, not with the private 0.500.
    assert "| peer | int8 | 0.896 | 0.4 | 20.0× | -0.4 | yes |" in codec_table(rows)


def test_the_epsilon_table_reports_spent_budget_against_local():
    rows = frontier_rows([run("local", 0.5, 0, 0), run("peer", 0.6, 10, 10, epsilon=4.0, spent=3.99)])
    assert "| peer | client | 4 | 3.990 | 0.600 | +10.0 | – |" in epsilon_table(rows)


def test_under_dp_sgd_every_rule_also_meets_local_only_at_the_same_epsilon():
    # Prepare: local 0.5 without privacy; under DP-SGD at ε 8 local 0.2, fedavg 0.45, peer 0.55.
    runs = [run("local", 0.5, 0, 0)] + [
        run(rule, acc, 10, 10, epsilon=8.0, spent=7.99, unit="example")
        for rule, acc in (("local", 0.2), ("fedavg", 0.45), ("peer", 0.55))
    ]
    table = epsilon_table(frontier_rows(runs))
    # Assert: peer +5 over local without privacy, +35 over local with DP-SGD; local and fedavg shown too.
    assert "| peer | example | 8 | 7.990 | 0.550 | +5.0 | +35.0 |" in table
    assert "| local | example | 8 | 7.990 | 0.200 | -30.0 | +0.0 |" in table
    assert "| fedavg | example | 8 | 7.990 | 0.450 | -5.0 | +25.0 |" in table


def test_a_runs_csv_adds_the_rules_the_directories_lack(tmp_path):
    # Prepare: a runs.csv with one fedavg and one peer run; the directories hold no run at all.
    table = tmp_path / "runs.csv"
    header = "strategy,seed,num_clients,rounds,acc_mean,bytes_up,bytes_down\n"
    table.write_text(header + "fedavg,0,2,2,0.9,800,800\npeer,0,2,2,0.8,80,80\n")
    # Execute
    main([str(tmp_path / "out"), str(table)])
    # Assert: 400 B/round for fedavg, 40 for peer: 10x.
    text = (tmp_path / "out" / "frontier.md").read_text()
    assert "| peer | fp32 | 0.800 | 0.0 | 10.0× | +0.0 | no |" in text
    assert (tmp_path / "out" / "accuracy_vs_bytes_per_round.png").stat().st_size > 0
