"""FedDF: Lin et al. 2020, "Ensemble Distillation for Robust Model Fusion in Federated
Learning" (NeurIPS).

Clients train CE locally and send weights, as in FedAvg. The server averages them
(Flower's FedAvg), then fuses: it fine-tunes the average toward the ensemble (mean logits)
of the client models on the unlabelled transfer set, and sends the fused model back.
Homogeneous students only, like FedAvg.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Message

from peerkd.errors import check_range
from peerkd.student.models import build_model
from peerkd.student.training import distill_only, evaluate, predict_logits
from peerkd.wire.protocol import KEY_ARRAYS
from strategies.base import default_temperature
from strategies.fedavg import FederatedAveraging
from strategies.robust import Aggregator


class FedDF(FederatedAveraging):
    """FedAvg followed by server-side ensemble distillation on the transfer set."""

    name = "feddf"
    needs_transfer = True

    # T = 4 (images; 0 picks it) is what every measured FedDF run used (README); Lin et al. tune T per task.
    def __init__(
        self,
        temperature: float = 0.0,
        server_epochs: int = 2,
        aggregator: str = "mean",
        trim: float = 0.2,
        clip_norm: float = 0.0,
    ):
        super().__init__()
        self.aggregator = Aggregator(aggregator, trim, clip_norm)  # strategies.robust: mean or a robust rule
        self.temperature = check_range("strategy.temperature", temperature, 0.0, 100.0)  # 0: default_temperature
        self.server_epochs = int(check_range("strategy.server_epochs", server_epochs, 0))

    def aggregate_round(self, server_round: int, replies: list[Message]) -> dict[str, Any]:
        ctx, world = self.ctx, self.ctx.world
        member = build_model(ctx.students[0], world.data.input_shape, world.num_classes, seed=0)
        ensemble = []
        for m in replies:
            member.load_state_dict(m.content[KEY_ARRAYS].to_torch_state_dict())
            ensemble.append(predict_logits(member, world.transfer_x, ctx.device))
        out = super().aggregate_round(server_round, replies)
        if not ensemble:
            return out
        before = self.acc
        distill_only(
            self.model,
            world.transfer_x,
            np.mean(ensemble, axis=0) if self.aggregator.plain else self.aggregator(np.stack(ensemble)),
            epochs=self.server_epochs,
            lr=ctx.lr,
            batch_size=ctx.batch_size,
            seed=ctx.seed + server_round,
            temperature=self.temperature or default_temperature(world.data.text),
            device=ctx.device,
        )
        self.arrays = type(self.arrays)(self.model.state_dict())
        self.acc, self.loss = evaluate(self.model, *world.split("test"), device=ctx.device)
        return {**out, "global_acc": self.acc, "avg_acc": before}
