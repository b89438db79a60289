"""FedAvg (McMahan et al., AISTATS 2017): the weight-sharing baseline, on Flower's own FedAvg.

Messages and weighted averaging are Flower's ``flwr.serverapp.strategy.FedAvg``
(``configure_train`` / ``aggregate_train``). Students must share one architecture. Every
client ends the round holding the new global model, so each client's accuracy is the
global model's accuracy on the test split, measured at the server.
"""

from __future__ import annotations

import math
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg

from peerkd.errors import ConfigError
from peerkd.round.contract import ServerContext
from peerkd.student.models import build_model
from peerkd.student.training import evaluate
from peerkd.wire.codec import CodecError, check_weights
from peerkd.wire.protocol import KEY_ARRAYS, KEY_METRICS, METRIC_NUM_EXAMPLES
from strategies.base import DistillationStrategy


class FederatedAveraging(DistillationStrategy):
    """Weights in, averaged weights out; refuses heterogeneous students."""

    name = "fedavg"
    not_saved = DistillationStrategy.not_saved | {"flower"}  # Flower's FedAvg holds settings only

    def __init__(self) -> None:
        self.flower = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=1)

    def check(self, students: tuple[str, ...], num_clients: int, transfer_size: int | None = None) -> None:
        super().check(students, num_clients, transfer_size)
        if len(set(students)) > 1:
            raise ConfigError(
                "students",
                f"{self.name} averages weights, so all clients need one architecture; got {list(students)}",
                "a single model name, e.g. students=[mlp64]",
            )

    def setup(self, ctx: ServerContext) -> dict[str, float]:
        super().setup(ctx)
        world = ctx.world
        self.model = build_model(ctx.students[0], world.data.input_shape, world.num_classes, seed=ctx.seed)
        self.arrays = ArrayRecord(self.model.state_dict())
        self.acc, self.loss = evaluate(self.model, *world.split("test"), device=ctx.device)
        return {}

    def resume(self, ctx: ServerContext) -> None:
        self.setup(ctx)  # the global model the saved weights load into (no training: cheap)

    def state_dict(self) -> dict[str, Any]:  # an ArrayRecord is an object: its arrays are the data
        return {**super().state_dict(), "arrays": {k: a.numpy() for k, a in self.arrays.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if k != "arrays"})
        self.arrays = ArrayRecord({k: Array(v) for k, v in state["arrays"].items()})

    def configure_round(
        self, server_round: int, node_ids: list[int], config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        chosen = set(node_ids)  # Flower's FedAvg samples the grid's nodes itself; keep this round's
        messages = self.flower.configure_train(server_round, self.arrays, ConfigRecord(dict(config)), grid)
        return [m for m in messages if m.metadata.dst_node_id in chosen]

    def check_reply(self, content: RecordDict) -> None:
        check_weights(content.get(KEY_ARRAYS, ArrayRecord()), self.arrays)
        n = content[KEY_METRICS].get(METRIC_NUM_EXAMPLES) if KEY_METRICS in content else None
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not 0 < n < math.inf:
            raise CodecError(f"{METRIC_NUM_EXAMPLES} must be a positive number, got {n!r}")

    def aggregate_round(self, server_round: int, replies: list[Message]) -> dict[str, float]:
        try:
            arrays, _ = self.flower.aggregate_train(server_round, replies)
        except InconsistentMessageReplies as exc:  # keep the last global model
            arrays = None
            self.failure = str(exc)
        if arrays is not None:
            self.arrays = arrays
            self.model.load_state_dict(arrays.to_torch_state_dict())
            self.acc, self.loss = evaluate(self.model, *self.ctx.world.split("test"), device=self.ctx.device)
        return {"global_acc": self.acc}

    def client_accuracy(self, metrics: dict[str, float]) -> tuple[float, float]:
        return self.acc, self.loss
