"""Defence tables of attack sweeps (simulations/report_defence.py), with values worked out by hand."""

from simulations.report import report_markdown
from simulations.report_defence import defence_rows, defence_tables, is_defence_sweep

ACC = {  # (aggregator, fraction, kind) -> acc_mean by seed 0, 1
    ("mean", 0, "lma"): (0.80, 0.70),
    ("mean", 0, "cpa"): (0.80, 0.70),
    ("mean", 0.2, "lma"): (0.60, 0.56),
    ("mean", 0.2, "cpa"): (0.70, 0.60),
    ("consensus", 0, "lma"): (0.79, 0.69),
    ("consensus", 0, "cpa"): (0.79, 0.69),
    ("consensus", 0.2, "lma"): (0.75, 0.66),
    ("consensus", 0.2, "cpa"): (0.78, 0.68),
}


def runs() -> list[dict]:
    return [
        {
            "config": {"attack.fraction": f, "attack.kind": k, "strategy.aggregator": a, "rounds": 5},
            "summary": {
                **{"strategy": "peer", "seed": seed, "acc_mean": acc, "acc_worst": acc, "acc_std": 0.0},
                **{"dataset": "digits", "num_clients": 10, "rounds": 5, "bytes_up": 1, "bytes_down": 1, "wall_s": 1.0},
            },
        }
        for (a, f, k), accs in ACC.items()
        for seed, acc in enumerate(accs)
    ]


def test_each_cell_is_points_from_the_undefended_run_without_attackers_paired_by_seed():
    header, rows = defence_rows(runs(), "peer", 0.2)
    assert header == ["defence", "no attacker", "lma", "cpa"]
    # mean under lma: -20 and -14 -> -17, std 4.243, t(0.975, 1) = 12.706: half width 38.1
    assert rows[0] == ["mean", "+0.0 [+0.0, +0.0]", "-17.0 [-55.1, +21.1]", "-10.0 [-10.0, -10.0]"]
    # consensus: -1 with no attacker; under lma -5 and -4 -> -4.5, half width 12.706 * 0.7071 / 1.4142 = 6.35
    assert rows[1] == ["consensus", "-1.0 [-1.0, -1.0]", "-4.5 [-10.9, +1.9]", "-2.0 [-2.0, -2.0]"]
    assert defence_rows([r for r in runs() if r["config"]["strategy.aggregator"] != "mean"], "peer", 0.2) is None


def test_the_report_shows_one_table_per_share_for_sweeps_of_share_and_defence():
    assert is_defence_sweep(["attack.fraction", "attack.kind", "strategy.aggregator"])
    assert not is_defence_sweep(["attack.fraction", "attack.kind"])
    assert [t[0] for t in defence_tables(runs(), ["peer"])] == [
        "peer: 20 % attackers, points vs undefended without attackers"
    ]
    text = report_markdown(runs())
    assert "## Defences" in text and "| consensus | -1.0 [-1.0, -1.0] | -4.5 [-10.9, +1.9] |" in text
