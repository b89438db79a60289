"""Central teacher-guided distillation (Hinton et al. 2015, "Distilling the Knowledge in a
Neural Network"), federated.

A larger teacher trains at the server on the labelled ``server`` split only (never on
client data). Each round every client receives the teacher's logits on the transfer set
and trains on CE + α·T²·KL(teacher ‖ student). Clients send back only metrics.
"""

from __future__ import annotations

import numpy as np

from peerkd.errors import check_choice
from peerkd.models import MODELS, build_model
from peerkd.training import evaluate, predict_logits, train_model
from strategies.base import LogitDistillation, ServerContext


def default_teacher(input_shape: tuple[int, ...]) -> str:
    """``cnn_large`` for images and sequences, ``mlp256x2`` for flat features."""
    return "cnn_large" if len(input_shape) in (2, 3) else "mlp256x2"


class TeacherDistillation(LogitDistillation):
    """Every client distills from one server-trained teacher's soft labels."""

    name = "teacher"
    wants_logits = False

    def __init__(self, alpha: float = 1.0, temperature: float = 4.0, model: str = "auto", epochs: int = 30):
        super().__init__(alpha, temperature)
        check_choice("strategy.teacher", model, ("auto", *MODELS))
        self.model_name = model
        self.epochs = epochs

    def setup(self, ctx: ServerContext) -> dict[str, float]:
        super().setup(ctx)
        world = ctx.world
        name = default_teacher(world.data.input_shape) if self.model_name == "auto" else self.model_name
        teacher = build_model(name, world.data.input_shape, world.num_classes, seed=ctx.seed, field="strategy.teacher")
        x, y = world.split("server")
        train_model(teacher, x, y, epochs=self.epochs, lr=ctx.lr, batch_size=ctx.batch_size, seed=ctx.seed, device=ctx.device)
        acc, _ = evaluate(teacher, *world.split("test"), device=ctx.device)
        self.targets = predict_logits(teacher, world.transfer_x, device=ctx.device)
        self.resolved_model = name
        return {"teacher_acc": acc}

    def targets_for(self, node_ids: list[int]) -> dict[int, np.ndarray | None]:
        return {n: self.targets for n in node_ids}
