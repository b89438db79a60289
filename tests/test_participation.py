"""Partial participation: a seeded sample of clients per round, the same for every rule."""

import numpy as np
import pytest

from peerkd.errors import ConfigError
from peerkd.participation import Roster, sample_clients
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
