"""The common base of every exchange rule.

A rule turns a round into one Message per node (``configure_round``), checks each reply
(``check_reply``) and folds the accepted replies into its state (``aggregate_round``).
The ServerApp owns the Grid loop, the clock, byte counts and results files; rules own
only their maths and their state, like Flower's own strategies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from peerkd.codec import decode_logits
from peerkd.protocol import CFG_ALPHA, CFG_REPLY_LOGITS, CFG_TEMPERATURE, KEY_CONFIG, KEY_LOGITS, KEY_TARGETS, MSG_DISTILL
from peerkd.world import World


@dataclass(frozen=True)
class ServerContext:
    """What the server knows when a rule is set up."""

    world: World
    students: tuple[str, ...]
    seed: int
    device: torch.device
    epochs: int
    lr: float
    batch_size: int


class DistillationStrategy(ABC):
    """Base of all exchange rules (one subclass per file in ``strategies/``)."""

    name: ClassVar[str]

    def check(self, students: tuple[str, ...], num_clients: int) -> None:
        """Raise ConfigError if this rule cannot run with these students and clients."""

    def setup(self, ctx: ServerContext) -> dict[str, float]:
        """Prepare state before round 1; return run-level metrics (e.g. teacher accuracy)."""
        self.check(ctx.students, ctx.world.spec.num_clients)
        self.ctx = ctx
        self.transfer_shape = (len(ctx.world.transfer_x), ctx.world.num_classes)
        return {}

    @abstractmethod
    def configure_round(self, server_round: int, node_ids: list[int], config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Messages for this round, at most one per node."""

    def check_reply(self, content: RecordDict) -> None:
        """Raise ``peerkd.codec.CodecError`` if a reply lacks what this rule needs."""

    def aggregate_round(self, server_round: int, replies: list[Message]) -> dict[str, float]:
        """Fold accepted replies into the rule's state; return round-level metrics."""
        return {}

    def client_accuracy(self, metrics: dict[str, float]) -> tuple[float, float] | None:
        """Accuracy and loss to record for a client; None keeps what the client measured."""
        return None


class LogitDistillation(DistillationStrategy):
    """Shared shape of the rules that send each node target logits on the transfer set.

    Subclasses say what each node's target is (``targets_for``) and whether nodes
    send their own logits back (``wants_logits``).
    """

    wants_logits: ClassVar[bool] = True

    def __init__(self, alpha: float = 1.0, temperature: float = 4.0):
        self.alpha = alpha
        self.temperature = temperature

    @abstractmethod
    def targets_for(self, node_ids: list[int]) -> dict[int, np.ndarray | None]:
        """Target logits for each node (None: train on CE alone this round)."""

    def configure_round(self, server_round: int, node_ids: list[int], config: ConfigRecord, grid: Grid) -> list[Message]:
        from peerkd.codec import encode_logits

        config = ConfigRecord({**config, CFG_ALPHA: float(self.alpha), CFG_TEMPERATURE: float(self.temperature), CFG_REPLY_LOGITS: self.wants_logits})
        messages = []
        for node_id, target in self.targets_for(node_ids).items():
            content = RecordDict({KEY_CONFIG: config})
            if target is not None:
                content[KEY_TARGETS] = encode_logits(target)
            messages.append(Message(content, dst_node_id=node_id, message_type=MSG_DISTILL))
        return messages

    def check_reply(self, content: RecordDict) -> None:
        if self.wants_logits:
            decode_logits(content.get(KEY_LOGITS, ArrayRecord()), self.transfer_shape)
