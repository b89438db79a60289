"""Weighted mutual learning: Iyer et al. 2024, "When Babies Teach Babies: Can Student
Knowledge Sharing Outperform Teacher-Guided Distillation on Small Datasets?" (after
Zhang et al. 2022's weighted DML).

Peers teach each other as in DML, but peer j's voice has a weight ω_j on the simplex,
learned by mirror descent: each round the server takes an exponentiated-gradient step on
the weighted ensemble's NLL over the labelled ``server`` split (clients send logits on its
inputs; its labels stay at the server). Client i distills toward the ω-weighted mixture of
the *other* peers' softened outputs, which gives the loss CE + α·Σ_j ω̃_j·T²·KL(p_j ‖ p_i).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict

from peerkd.errors import check_range
from peerkd.round.contract import ServerContext
from peerkd.round.stacked import StackedReplies
from peerkd.wire.codec import decode_logits
from peerkd.wire.protocol import CFG_REPLY_PROBE, KEY_LOGITS, KEY_PROBE, METRIC_PARTITION
from strategies.aggregation import _softmax, ensemble_nll_grad, mirror_descent_step, weighted_peer_targets
from strategies.base import RobustLogitDistillation, client_of


class WeightedMutualLearning(RobustLogitDistillation):
    """DML with peer weights learned by mirror descent on the server split."""

    name = "wml"
    min_clients = 2
    stacks = True

    def __init__(
        self,
        alpha: float = 1.0,
        temperature: float = 0.0,
        weight_lr: float = 1.0,
        weight_steps: int = 5,
        aggregator: str = "mean",
        trim: float = 0.2,
        clip_norm: float = 0.0,
    ):
        super().__init__(alpha, temperature, aggregator, trim, clip_norm)
        self.weight_lr = check_range("strategy.weight_lr", weight_lr, 0.0)
        self.weight_steps = int(check_range("strategy.weight_steps", weight_steps, 0))

    def setup(self, ctx: ServerContext) -> dict[str, float]:
        out = super().setup(ctx)
        self.y_server = ctx.world.split("server")[1].reshape(-1)  # text: a label per position
        self.logits: dict[int, np.ndarray] = {}
        self.weights: dict[int, float] = {}  # by client id
        self.node_client: dict[int, int] = {}
        return out

    def round_config(self) -> dict[str, Any]:
        return {**super().round_config(), CFG_REPLY_PROBE: len(self.y_server) > 0}

    def targets_for(self, node_ids: list[int]) -> dict[int, np.ndarray | None]:
        by_node = {n: self.weights.get(c, 0.0) for n, c in self.node_client.items()}
        return weighted_peer_targets(self.logits, by_node, node_ids, self.kd_temperature, self.aggregator)

    def check_reply(self, content: RecordDict) -> None:
        super().check_reply(content)
        if len(self.y_server):
            decode_logits(content.get(KEY_PROBE, ArrayRecord()), (len(self.y_server), self.transfer_shape[1]))

    def aggregate_round(self, server_round: int, replies: list[Message]) -> dict[str, Any]:
        senders = [m.metadata.src_node_id for m in replies]
        logits = [decode_logits(m.content[KEY_LOGITS], self.transfer_shape) for m in replies]
        probes = None
        if len(self.y_server):
            shape = (len(self.y_server), self.transfer_shape[1])
            probes = [decode_logits(m.content[KEY_PROBE], shape) for m in replies]
        return self._learn(senders, logits, [client_of(m) for m in replies], probes)

    def aggregate_stacked(self, server_round: int, replies: StackedReplies) -> dict[str, Any]:
        senders, clients = replies.nodes.tolist(), replies.metrics[METRIC_PARTITION].tolist()
        probes = replies.probe if len(self.y_server) else None
        return self._learn(senders, [] if replies.logits is None else replies.logits, clients, probes)

    def _learn(self, senders: list[int], logits, clients: list[int], probes) -> dict[str, Any]:
        """Keep each sender's transfer-set logits (``(P, C)`` each) and learn the peers' weights by
        mirror descent on their server-split probes (``(R, C)`` each), the senders' clients in order."""
        self.logits = dict(zip(senders, logits))
        self.node_client = dict(zip(senders, clients))
        if not clients:
            return {}
        # Newcomers start at the mean weight of the peers already known; leavers drop out.
        prior = np.mean(list(self.weights.values())) if self.weights else 1.0
        w = np.array([self.weights.get(c, prior) for c in clients], dtype=np.float64)
        w /= w.sum()
        loss = None
        if len(self.y_server):
            rows = np.arange(len(self.y_server))
            true_p = np.stack([_softmax(probe)[rows, self.y_server] for probe in probes])
            for _ in range(self.weight_steps):
                loss, grad = ensemble_nll_grad(w, true_p)
                w = mirror_descent_step(w, grad, self.weight_lr)
        self.weights = dict(zip(clients, w.tolist()))
        return {"wml_weights": {str(c): self.weights[c] for c in sorted(self.weights)}, "ensemble_nll": loss}
