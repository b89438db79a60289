"""FedMD: Li & Wang 2019, "FedMD: Heterogenous Federated Learning via Model Distillation".

Clients send logits on the transfer set; the server averages them into a consensus. Each
round a client first "digests" (fits the consensus on the transfer set; here with T²·KL at
temperature T where the paper regresses logits) and then "revisits" (CE epochs on its
private shard), then sends fresh logits. The paper's initial transfer-learning phase on a
labelled public set is left out: peerkd's transfer set is unlabelled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Message

from peerkd.errors import check_range
from peerkd.round.contract import ServerContext
from peerkd.round.stacked import StackedReplies
from peerkd.wire.codec import decode_logits
from peerkd.wire.protocol import CFG_DIGEST_EPOCHS, KEY_LOGITS, MSG_DIGEST
from peerkd.wire.rows import stack_rows
from strategies.base import LogitDistillation
from strategies.robust import Aggregator


class FedMD(LogitDistillation):
    """Consensus of all peers' logits; digest then revisit."""

    name = "fedmd"
    message_type = MSG_DIGEST
    stacks = True

    def __init__(
        self,
        temperature: float = 0.0,
        digest_epochs: int = 2,
        aggregator: str = "mean",
        trim: float = 0.2,
        clip_norm: float = 0.0,
    ):
        super().__init__(alpha=1.0, temperature=temperature)
        self.aggregator = Aggregator(aggregator, trim, clip_norm)  # strategies.robust: mean or a robust rule
        self.digest_epochs = int(check_range("strategy.digest_epochs", digest_epochs, 0))

    def setup(self, ctx: ServerContext) -> dict[str, float]:
        self.consensus: np.ndarray | None = None
        return super().setup(ctx)

    def round_config(self) -> dict[str, Any]:
        return {**super().round_config(), CFG_DIGEST_EPOCHS: self.digest_epochs}

    def targets_for(self, node_ids: list[int]) -> dict[int, np.ndarray | None]:
        return {n: self.consensus for n in node_ids}

    def aggregate_round(self, server_round: int, replies: list[Message]) -> dict[str, Any]:
        logits = [decode_logits(m.content[KEY_LOGITS], self.transfer_shape) for m in replies]
        return self._agree(stack_rows(logits) if logits else None)

    def aggregate_stacked(self, server_round: int, replies: StackedReplies) -> dict[str, Any]:
        return self._agree(replies.logits)

    def _agree(self, logits: np.ndarray | None) -> dict[str, Any]:
        """The consensus of this round's logits ``(n, P, C)``: their mean, or the robust aggregate."""
        if logits is not None and len(logits):
            self.consensus = (
                np.mean(logits, axis=0).astype(np.float32) if self.aggregator.plain else self.aggregator(logits)
            )
        return {}
