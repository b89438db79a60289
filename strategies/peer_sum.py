"""Sum-only peer mutual learning: Deep Mutual Learning (Zhang et al., CVPR 2018), federated so
that the server handles only the sum of the peers' logits.

Targets are those of ``peer`` (the leave-one-out mean of the other peers' last logits), but
the server sends every client the same thing: the sum of all senders' logits, their count,
and whether the client is one of them. The client subtracts the logits it sent itself and
divides by the others' count. The server folds replies into the sum in one place
(``sum_logits``), which a secure-aggregation protocol can replace (the server then learns the
sum alone; Flower 1.39's SecAgg+ serves only the legacy fit workflow, so peerkd sums in the
clear today). Agreement metrics, which read each matrix, are off for this rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message

from peerkd.round.contract import ServerContext
from peerkd.round.stacked import StackedReplies
from peerkd.wire.codec import array_bytes, array_record, decode_logits, encode_arrays, to_array
from peerkd.wire.protocol import ARRAY_LOGITS, ARRAY_PEERS, CFG_KEEP_SENT, KEY_LOGITS, KEY_TARGETS
from peerkd.wire.records import record_dict
from peerkd.wire.rows import stack_rows
from strategies.base import LogitDistillation


@dataclass(frozen=True)
class PeersSum:
    """What one node receives: the senders' logit sum, their count, and whether it sent."""

    total: np.ndarray
    count: int
    included: bool


def sum_logits(matrices: list[np.ndarray]) -> np.ndarray:
    """The element-wise sum of ``(P, C)`` matrices, accumulated in float64.

    ``sum_logits([[[1, 3]], [[3, 1]], [[2, 2]]]) == [[6, 6]]``.
    """
    return stack_rows(matrices).sum(axis=0, dtype=np.float64)  # received rows: viewed, not copied


class PeerSumLearning(LogitDistillation):
    """DML where the server sends only the peers' sum and count; each client removes its own."""

    name = "peer_sum"
    wants_logits = True
    stacks = True
    min_clients = 2
    reads_votes = True  # the others' votes summed: a vote histogram
    sums_releases = True  # receivers read only the sum: privacy.noise=distributed may split the noise

    def setup(self, ctx: ServerContext) -> dict[str, float]:
        self.total: np.ndarray | None = None
        self.senders: set[int] = set()
        return super().setup(ctx)

    def round_config(self) -> dict:
        return {**super().round_config(), CFG_KEEP_SENT: True}

    def targets_for(self, node_ids: list[int]) -> dict[int, PeersSum | None]:
        if self.total is None:
            return {n: None for n in node_ids}
        return {n: PeersSum(self.total, len(self.senders), n in self.senders) for n in node_ids}

    def encode_target(self, target: PeersSum) -> ArrayRecord:
        peers = np.array([target.count, float(target.included)], dtype=np.float32)
        return array_record({**encode_arrays(ARRAY_LOGITS, target.total, self.ctx.codec), ARRAY_PEERS: to_array(peers)})

    def sum_logits(self, replies: list[Message]) -> np.ndarray | None:
        """The sum of the replies' logits (None without replies): the one place that reads them."""
        mats = [decode_logits(m.content[KEY_LOGITS], self.transfer_shape) for m in replies]
        return sum_logits(mats) if mats else None

    def aggregate_round(self, server_round: int, replies: list[Message]) -> dict[str, float]:
        return self._keep(self.sum_logits(replies), {m.metadata.src_node_id for m in replies})

    def aggregate_stacked(self, server_round: int, replies: StackedReplies) -> dict[str, float]:
        logits = replies.logits
        total = sum_logits(list(logits)) if logits is not None and len(logits) else None  # rows: viewed
        return self._keep(total, set(replies.nodes.tolist()))

    def _keep(self, total: np.ndarray | None, senders: set[int]) -> dict[str, float]:
        """This round's sum and senders (both paths): only they count, a node that dropped out stops teaching."""
        self.total, self.senders = total, senders
        return {"peers": float(len(senders))}

    def stacked_targets(self, node_ids: list[int]) -> tuple[np.ndarray | None, np.ndarray, int, np.ndarray | None]:
        """The sum every node is sent, as the fp32 codec delivers it, viewed once per node, and each
        node's ``[senders, included]`` (``PeersSum``), which the grid turns into the node's
        leave-one-out mean from the logits it sent last, as the ClientApp does."""
        n = len(node_ids)
        if self.total is None:
            return None, np.zeros(n, dtype=bool), 0, None
        total = self.total.astype(np.float32)
        peers = np.stack([np.full(n, len(self.senders)), np.isin(node_ids, list(self.senders))], axis=1)
        size = array_bytes(record_dict({KEY_TARGETS: self.encode_target(PeersSum(self.total, 1, True))}))
        return np.broadcast_to(total, (n, *total.shape)), np.ones(n, dtype=bool), size, peers.astype(np.float32)

    def agreement_logits(self, replies: list[Message]) -> np.ndarray | None:
        return None  # the server does not read individual matrices

    def agreement_of(self, outputs: np.ndarray | None) -> np.ndarray | None:
        return None  # ... nor, in a stacked round, their stack
