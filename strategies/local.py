"""Local-only training: the no-communication baseline.

Each client trains its student on its own shard with cross-entropy and sends nothing the
rule needs; the lower bound every exchange rule must beat. (With agreement metrics on,
clients also send transfer-set logits, counted as measurement traffic, not the rule's.)
"""

from __future__ import annotations

import numpy as np

from peerkd.wire.protocol import MSG_TRAIN
from strategies.base import LogitDistillation


class LocalOnly(LogitDistillation):
    """Local-only CE training; no targets, no logits or weights needed."""

    name = "local"
    message_type = MSG_TRAIN
    wants_logits = False
    needs_transfer = False
    stacks = True

    def __init__(self) -> None:
        super().__init__()  # no settings: nothing is distilled

    def targets_for(self, node_ids: list[int]) -> dict[int, np.ndarray | None]:
        return {n: None for n in node_ids}
