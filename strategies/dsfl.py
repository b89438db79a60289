"""DS-FL: Itahara et al. 2021, "Distillation-Based Semi-Supervised Federated Learning for
Communication-Efficient Collaborative Training with Non-IID Private Data" (IEEE TMC).

Clients send softmax outputs on the transfer set; the server aggregates them by
entropy-reduction averaging (ERA): the mean probability, sharpened by softmax(p̄ / T_ERA)
with T_ERA ≈ 0.1. Each round a client first fits the global soft labels on the transfer set
(KL at T = 1), then trains CE on its private shard, then sends fresh probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Message

from peerkd.errors import check_range
from peerkd.round.contract import ServerContext
from peerkd.round.stacked import StackedReplies
from peerkd.wire.codec import decode_logits
from peerkd.wire.protocol import CFG_DIGEST_EPOCHS, CFG_REPLY_PROBS, KEY_LOGITS, MSG_DIGEST
from peerkd.wire.rows import stack_rows
from strategies.aggregation import entropy_reduction_average
from strategies.base import LogitDistillation
from strategies.robust import Aggregator


class DSFL(LogitDistillation):
    """Probabilities up, one ERA-sharpened global soft label down; digest then CE."""

    name = "dsfl"
    message_type = MSG_DIGEST
    sends_probs = True
    stacks = True

    def __init__(
        self,
        era_temperature: float = 0.1,
        digest_epochs: int = 2,
        aggregator: str = "mean",
        trim: float = 0.2,
        clip_norm: float = 0.0,
    ):
        super().__init__(alpha=1.0, temperature=1.0)  # DS-FL distills at T = 1
        self.aggregator = Aggregator(aggregator, trim, clip_norm)  # strategies.robust: mean or a robust rule
        self.era_temperature = check_range("strategy.era_temperature", era_temperature, 0.0, low_open=True)
        self.digest_epochs = int(check_range("strategy.digest_epochs", digest_epochs, 0))

    def setup(self, ctx: ServerContext) -> dict[str, float]:
        self.global_probs: np.ndarray | None = None
        return super().setup(ctx)

    def round_config(self) -> dict[str, Any]:
        return {**super().round_config(), CFG_REPLY_PROBS: True, CFG_DIGEST_EPOCHS: self.digest_epochs}

    def targets_for(self, node_ids: list[int]) -> dict[int, np.ndarray | None]:
        if self.global_probs is None:
            return {n: None for n in node_ids}
        target = np.log(np.clip(self.global_probs, 1e-12, None)) * self.temperature  # softmax(target/T) = ERA
        return {n: target for n in node_ids}

    def aggregate_round(self, server_round: int, replies: list[Message]) -> dict[str, Any]:
        probs = [decode_logits(m.content[KEY_LOGITS], self.transfer_shape, probs=True) for m in replies]
        return self._sharpen(stack_rows(probs) if probs else None)

    def aggregate_stacked(self, server_round: int, replies: StackedReplies) -> dict[str, Any]:
        return self._sharpen(replies.logits)

    def _sharpen(self, probs: np.ndarray | None) -> dict[str, Any]:
        """The global soft label from this round's probabilities ``(n, P, C)`` (ERA), and its entropy."""
        if probs is None or not len(probs):
            return {}
        self.global_probs = entropy_reduction_average(probs, self.era_temperature, self.aggregator)
        entropy = -(self.global_probs * np.log(np.clip(self.global_probs, 1e-12, None))).sum(axis=1).mean()
        return {"global_entropy": float(entropy)}

    def agreement_of(self, outputs: np.ndarray | None) -> np.ndarray | None:
        probs = super().agreement_of(outputs)  # probabilities: their logs are logits
        return None if probs is None else np.log(np.clip(probs, 1e-12, None))
