"""The contract between the round loop and an exchange rule: what a rule is told when it is
set up (``ServerContext``) and what the loop asks of it (``ExchangeRule``).

Rules (``strategies/``) import these types from here, never from the loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from peerkd.wire.codec import FP32, Codec
from peerkd.world.build import World

if TYPE_CHECKING:
    from peerkd.round.stacked import StackedReplies


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
    measure_agreement: bool = True  # ask clients for transfer-set logits even if the rule needs none
    codec: Codec = FP32  # how the rule packs the targets it sends


class ExchangeRule(Protocol):
    """What the round loop needs of a rule (``strategies.base.DistillationStrategy`` provides it)."""

    name: str
    private: bool

    def setup(self, ctx: ServerContext) -> dict[str, Any]: ...
    def configure_round(
        self, server_round: int, node_ids: list[int], config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]: ...
    def check_reply(self, content: RecordDict) -> None: ...
    def aggregate_round(self, server_round: int, replies: list[Message]) -> dict[str, Any]: ...
    def client_accuracy(self, metrics: dict[str, Any]) -> tuple[float, float] | None: ...
    def measurement_keys(self) -> set[str]: ...
    def agreement_logits(self, replies: list[Message]) -> np.ndarray | None: ...
    def stacked_round(self, config: ConfigRecord) -> tuple[str, ConfigRecord] | None: ...
    def stacked_targets(self, node_ids: list[int]) -> tuple[np.ndarray | None, np.ndarray, int]: ...
    def aggregate_stacked(self, server_round: int, replies: StackedReplies) -> dict[str, Any]: ...
    def agreement_of(self, outputs: np.ndarray | None) -> np.ndarray | None: ...
