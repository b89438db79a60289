"""Partial participation: which clients take part in a round.

The sample is drawn from the run's seed and the round alone, so at a given seed every rule
(and every engine) trains the same clients in the same round: comparisons stay paired.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.serverapp import Grid

from peerkd.round.hook import RoundHook, RunRecord
from peerkd.wire import protocol as P
from peerkd.wire.grid_io import evaluate_nodes


def sample_clients(num_clients: int, per_round: int, seed: int, server_round: int) -> np.ndarray:
    """Sorted ids of the ``per_round`` clients (of ``0..num_clients-1``) that train in ``server_round``.

    ``per_round`` of 0 or ``>= num_clients`` means everyone.
    """
    if per_round <= 0 or per_round >= num_clients:
        return np.arange(num_clients)
    rng = np.random.default_rng([seed, server_round, 0x5EED])
    return np.sort(rng.choice(num_clients, per_round, replace=False))


class Roster:
    """The nodes of a round: all of them, or those whose client is in the round's sample.

    Node ids are the engine's (random in Flower's simulation); the client (partition) id of
    a node is learnt from its replies (``learn``). A node not yet known takes part, so that
    it becomes known.
    """

    def __init__(self, num_clients: int, per_round: int, seed: int):
        self.num_clients, self.per_round, self.seed = num_clients, per_round, seed
        self.client_of: dict[int, int] = {}

    @property
    def partial(self) -> bool:
        return 0 < self.per_round < self.num_clients

    def learn(self, node_id: int, client: int) -> None:
        """Record that ``node_id`` serves client ``client``."""
        self.client_of[node_id] = client

    def select(self, server_round: int, node_ids: Iterable[int]) -> list[int]:
        """The nodes that take part in ``server_round``, sorted."""
        if not self.partial:
            return sorted(node_ids)
        chosen = set(sample_clients(self.num_clients, self.per_round, self.seed, server_round).tolist())
        return sorted(n for n in node_ids if n not in self.client_of or self.client_of[n] in chosen)


def participation(num_clients: int, rounds: int, latest: dict[int, dict[str, Any]], replies: Counter) -> dict[str, Any]:
    """Who took part: the summary's participation fields.

    ``latest`` holds each heard-from client's last accepted row, ``replies`` its accepted
    replies. The summary's accuracy means are over ``clients_evaluated`` clients only;
    ``partial_mean`` flags a mean that leaves some out (``clients_missing``, never heard
    from) and ``clients_stale`` lists those whose last accepted row is older than the last
    round. ``participation(3, 2, {0: {"round": 2}, 1: {"round": 1}}, Counter({0: 2, 1: 1}))``
    gives ``clients_evaluated`` 2, ``clients_missing`` [2], ``clients_stale`` [1].
    """
    return {
        "clients_evaluated": len(latest),
        "clients_missing": [c for c in range(num_clients) if c not in latest],
        "clients_stale": sorted(c for c, row in latest.items() if row["round"] < rounds),
        "partial_mean": len(latest) < num_clients,
        "replies_per_client": {str(c): replies.get(c, 0) for c in range(num_clients)},
    }


class ParticipationHook(RoundHook):
    """Partial participation (``per_round`` of ``num_clients`` a round, 0: all): the round's
    nodes, every client evaluated once more after the last round, who took part in the summary."""

    def __init__(self, num_clients: int, per_round: int, seed: int, round_timeout: float):
        self.roster, self.round_timeout = Roster(num_clients, per_round, seed), round_timeout

    def setup(self, rule: Any, fresh: bool) -> dict[str, Any]:
        self.rule = rule
        return {}

    def select(self, server_round: int, node_ids: list[int], client_of: dict[int, int]) -> list[int]:
        self.roster.client_of.update(client_of)
        return self.roster.select(server_round, node_ids)

    def finish(self, grid: Grid, config: dict[str, Any], stop: threading.Event | None) -> list[dict[str, Any]]:
        """With partial participation, every client's accuracy after the last round (one evaluate round trip)."""
        if not self.roster.partial:
            return []
        rows, rnd = [], config[P.CFG_ROUND]
        for node, values in evaluate_nodes(grid, sorted(grid.get_node_ids()), config, self.round_timeout, stop).items():
            client = values[P.METRIC_PARTITION]
            if 0 <= client < self.roster.num_clients:
                acc, loss = self.rule.client_accuracy(values) or (
                    values[P.METRIC_TEST_ACC],
                    values.get(P.METRIC_TEST_LOSS),
                )
                info = {k: values[k] for k in ("arch", *P.INFO_PLACEMENT) if k in values}
                row = {"type": "client", "round": rnd, "client": client, "node_id": node, "arch": None}
                rows.append({**row, **info, "acc": acc, "loss": loss, "final_evaluation": True})
        return rows

    def summary(self, record: RunRecord, per_client: list[dict[str, Any]]) -> dict[str, Any]:
        return participation(self.roster.num_clients, record.rounds, record.latest, record.replies)
