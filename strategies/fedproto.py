"""FedProto: Tan et al. AAAI 2022, "FedProto: Federated Prototype Learning across Heterogeneous
Clients".

No transfer set and no logits: each client sends, per class, the mean embedding of its private
samples (its *prototype*, C×D) and its label counts; the server sends back the global prototype
of every class, the count-weighted mean of the clients' (``weighted_prototypes``). A client trains
CE + α·‖embedding − prototype of its label‖² (mean over dimensions; ``prototype_loss``).
Students of different widths meet in one space of ``proto_dim`` (``peerkd.student.prototypes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from peerkd.errors import check_range
from peerkd.round.contract import ServerContext
from peerkd.student.models import build_model
from peerkd.student.prototypes import embedding_width, weighted_prototypes
from peerkd.wire.protocol import CFG_PROTO_DIM, MSG_PROTO
from peerkd.world.data import Dataset
from strategies.fd import FederatedDistillation
from strategies.robust import Aggregator


class FedProto(FederatedDistillation):
    """Class-mean embeddings up, their count-weighted mean down; no transfer set."""

    name = "fedproto"
    min_clients = 1
    message_type = MSG_PROTO

    def __init__(self, alpha: float = 1.0, proto_dim: int = 0):
        super().__init__(alpha)
        self.aggregator = Aggregator("mean")
        self.requested_dim = int(check_range("strategy.proto_dim", proto_dim, 0, 4096))

    def check_data(self, text: bool) -> None:
        """Any data: for text a class is the next token, and its prototype the mean embedding before it."""

    def setup(self, ctx: ServerContext) -> dict[str, float]:
        out = super().setup(ctx)
        self.dim = self.prototype_width(ctx.students, ctx.world.data)
        return {**out, "proto_dim": self.dim}

    def prototype_width(self, students: Sequence[str], data: Dataset) -> int:
        """``proto_dim``, or for 0 the widest embedding of ``students`` on ``data`` (the width of every
        table the clients send; preflight's memory estimate asks too)."""
        if self.requested_dim:
            return self.requested_dim
        return max(embedding_width(build_model(s, data.input_shape, data.num_classes, 0)) for s in set(students))

    def round_config(self) -> dict[str, Any]:
        return {**super().round_config(), CFG_PROTO_DIM: self.dim}

    def reply_shape(self) -> tuple[int, int]:
        return (self.ctx.world.num_classes, self.dim)

    def global_prototypes(self) -> np.ndarray | None:
        """``(C, D)`` prototypes, NaN rows for classes no client holds; None before any reply."""
        if not self.means:
            return None
        nodes = sorted(self.means)
        protos, valid = weighted_prototypes(
            torch.as_tensor(np.stack([self.means[n] for n in nodes]), dtype=torch.float64),
            torch.as_tensor(np.stack([self.counts[n] for n in nodes]), dtype=torch.float64),
        )
        return np.where(valid[:, None].numpy(), protos.numpy(), np.nan).astype(np.float32)

    def targets_for(self, node_ids: list[int]) -> dict[int, np.ndarray | None]:
        table = self.global_prototypes()
        return {n: table for n in node_ids}
