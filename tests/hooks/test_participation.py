"""Partial participation: a seeded sample of clients per round, the same for every rule."""

import numpy as np
import pytest

from peerkd.errors import ConfigError
from peerkd.hooks.participation import Roster, sample_clients
from simulations.config import clients_per_round


def test_sample_is_seeded_sorted_and_sized():
    a = sample_clients(10, 3, seed=0, server_round=1)
    assert len(a) == 3 and len(set(a.tolist())) == 3 and list(a) == sorted(a)
    assert np.array_equal(a, sample_clients(10, 3, seed=0, server_round=1))  # same for every rule
    rounds = {tuple(sample_clients(10, 3, seed=0, server_round=r)) for r in range(1, 11)}
    assert len(rounds) > 1  # a new sample each round


@pytest.mark.parametrize("per_round", [0, 10, 12])
def test_everyone_takes_part_without_a_sample(per_round):
    assert sample_clients(10, per_round, seed=0, server_round=1).tolist() == list(range(10))


def test_roster_maps_the_sample_to_nodes_and_keeps_unknown_nodes():
    # Prepare: 4 clients on nodes 40..43 (client c on node 40 + c); node 99 not yet known.
    roster = Roster(num_clients=4, per_round=2, seed=0)
    for c in range(4):
        roster.learn(40 + c, c)
    chosen = sample_clients(4, 2, seed=0, server_round=3).tolist()
    # Execute
    nodes = roster.select(3, [43, 42, 41, 40, 99])
    # Assert
    assert nodes == sorted([40 + c for c in chosen] + [99])
    assert Roster(4, 0, 0).select(1, [3, 1, 2]) == [1, 2, 3]


@pytest.mark.parametrize(
    ("participation", "per_round", "expected"), [(1.0, 0, 0), (0.25, 0, 25), (0.001, 0, 1), (1.0, 7, 7), (1.0, 100, 0)]
)
def test_clients_per_round_from_config(participation, per_round, expected):
    assert clients_per_round(participation, per_round, 100) == expected


@pytest.mark.parametrize(
    ("participation", "per_round", "field"),
    [
        (0.0, 0, "participation"),
        (1.5, 0, "participation"),
        (1.0, 101, "clients_per_round"),
        (0.5, 5, "clients_per_round"),
    ],
)
def test_bad_participation_names_the_field(participation, per_round, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        clients_per_round(participation, per_round, 100)


@pytest.mark.parametrize("rule", ["peer", "local", "fedavg"])
def test_each_round_trains_the_sampled_clients_and_the_summary_covers_all(rule, tmp_path):
    # Prepare: 6 clients, 2 per round, on the batched engine (seconds).
    from peerkd.batched import run_batched
    from peerkd.round.results import METRICS_FILE, read_jsonl
    from peerkd.round.spec import RunSpec
    from peerkd.world.build import WorldSpec
    from strategies import build_strategy

    spec = RunSpec(world=WorldSpec(dataset="digits", num_clients=6, seed=3), rounds=3, epochs=1, clients_per_round=2)
    # Execute
    summary = run_batched(spec, build_strategy(rule), tmp_path, {"rule": rule})
    rows = read_jsonl(tmp_path / METRICS_FILE)
    # Assert: round r trained exactly sample_clients(6, 2, 3, r); a final evaluation covers everyone.
    for r in (1, 2, 3):
        trained = sorted(
            x["client"] for x in rows if x["type"] == "client" and x["round"] == r and "final_evaluation" not in x
        )
        assert trained == sample_clients(6, 2, seed=3, server_round=r).tolist()
    assert sorted(c["client"] for c in summary["per_client"]) == list(range(6))
    assert summary["clients_per_round"] == 2 and summary["acc_mean"] is not None
