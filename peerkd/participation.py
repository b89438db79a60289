"""Partial participation: which clients take part in a round.

The sample is drawn from the run's seed and the round alone, so at a given seed every rule
(and every engine) trains the same clients in the same round: comparisons stay paired.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


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
