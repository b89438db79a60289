"""Local-only training: the no-communication baseline.

Each client trains its student on its own shard with cross-entropy and sends nothing but
its metrics; the lower bound every exchange rule must beat.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from peerkd.protocol import KEY_CONFIG, MSG_TRAIN
from strategies.base import DistillationStrategy


class LocalOnly(DistillationStrategy):
    """Local-only CE training; no logits or weights move."""

    name = "local"

    def configure_round(self, server_round: int, node_ids: list[int], config: ConfigRecord, grid: Grid) -> list[Message]:
        return [Message(RecordDict({KEY_CONFIG: config}), dst_node_id=n, message_type=MSG_TRAIN) for n in node_ids]
