"""Federated distillation (FD): Jeong et al. 2018, "Communication-Efficient On-Device
Machine Learning: Federated Distillation and Augmentation under Non-IID Private Data".

No transfer set. Each client sends its per-class mean logits (C×C, plus label counts); the
server sends each client, per class, the mean of the *other* clients' per-class means over
the clients that hold the class. A client trains CE + β·T²·KL(F̂_y ‖ student(x)) on its own
samples (x, y), the target row chosen by the sample's label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict

from peerkd.errors import ConfigError
from peerkd.round.contract import ServerContext
from peerkd.round.stacked import StackedReplies
from peerkd.wire.codec import CodecError, array_record, decode_array, decode_logits, encode_arrays, to_array
from peerkd.wire.protocol import ARRAY_COUNTS, ARRAY_LOGITS, ARRAY_MASK, CFG_REPLY_LOGITS, KEY_LOGITS, MSG_CLASS_DISTILL
from strategies.aggregation import class_consensus
from strategies.base import RobustLogitDistillation


class FederatedDistillation(RobustLogitDistillation):
    """Per-class mean logits up, others' per-class means down; works with no transfer set."""

    name = "fd"
    min_clients = 2
    message_type = MSG_CLASS_DISTILL
    needs_transfer = False
    stacks = True
    dp_supported = False  # label counts travel in the clear
    example_dp = False  # ... and the class means are of the private shard, not of a DP model's outputs alone

    def check_data(self, text: bool) -> None:
        if text:
            raise ConfigError(
                "strategy",
                "fd averages logits per class of a sample's label; next-token prediction has no per-sample class "
                "(a per-previous-token table would be a bigram model, not the student's knowledge)",
                ["local", "peer", "wml", "teacher", "dsfl", "fedmd", "fedavg"],
            )

    def setup(self, ctx: ServerContext) -> dict[str, float]:
        out = super().setup(ctx)
        self.means: dict[int, np.ndarray] = {}
        self.counts: dict[int, np.ndarray] = {}
        return out

    def round_config(self) -> dict[str, Any]:
        return {**super().round_config(), CFG_REPLY_LOGITS: False}  # the fd handler always sends class means

    def reply_shape(self) -> tuple[int, int]:
        c = self.ctx.world.num_classes
        return (c, c)

    def targets_for(self, node_ids: list[int]) -> dict[int, np.ndarray | None]:
        return class_consensus(self.means, self.counts, node_ids, self.aggregator)

    def encode_target(self, target: np.ndarray) -> ArrayRecord:
        valid = np.isfinite(target).all(axis=1)
        return array_record(
            {
                **encode_arrays(ARRAY_LOGITS, np.where(valid[:, None], target, 0), self.ctx.codec),
                ARRAY_MASK: to_array(valid.astype(np.float32)),
            }
        )

    def check_reply(self, content: RecordDict) -> None:
        super().check_reply(content)
        record = content[KEY_LOGITS]
        if ARRAY_COUNTS not in record:
            raise CodecError("no class counts in the reply")
        counts = decode_array(record[ARRAY_COUNTS], (self.reply_shape()[0],))
        if (counts < 0).any():
            raise CodecError("negative class counts")

    def aggregate_round(self, server_round: int, replies: list[Message]) -> dict[str, Any]:
        means, counts = {}, {}
        for m in replies:
            record, node = m.content[KEY_LOGITS], m.metadata.src_node_id
            means[node] = decode_logits(record, self.reply_shape())
            counts[node] = record[ARRAY_COUNTS].numpy()
        return self._collect(means, counts)

    def aggregate_stacked(self, server_round: int, replies: StackedReplies) -> dict[str, Any]:
        if replies.counts is None:  # no reply accepted
            return self._collect({}, {})
        nodes = replies.nodes.tolist()
        return self._collect(dict(zip(nodes, replies.logits)), dict(zip(nodes, replies.counts)))

    def _collect(self, means: dict[int, np.ndarray], counts: dict[int, np.ndarray]) -> dict[str, Any]:
        """Keep this round's per-class tables and label counts by node (both paths' replies)."""
        self.means, self.counts = means, counts
        return {}

    def measurement_keys(self) -> set[str]:
        return set()

    def agreement_logits(self, replies: list[Message]) -> np.ndarray | None:
        return None  # clients send class means, not predictions on shared inputs

    def agreement_of(self, outputs: np.ndarray | None) -> np.ndarray | None:
        return None  # a stacked round's outputs are class tables too
