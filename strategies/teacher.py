"""Central teacher-guided distillation (Hinton et al. 2015, "Distilling the Knowledge in a
Neural Network"), federated.

A larger teacher trains at the server on labelled data no client holds: the ``server`` split
(``teacher_data=server``, the default), or with ``teacher_data=pool`` the labelled non-test rows
but the clients' shards (the server split and every private row that no client was given, e.g.
the rows ``partition.samples_per_client`` leaves over; the transfer set's labels stay unused): a
teacher pretrained on far more text than any student sees, as in Iyer 2024. It never trains on
client data (``oracle`` does). Each round every client receives the teacher's logits on the
transfer set and trains on CE + α·T²·KL(teacher ‖ student). Clients send back only metrics.
"""

from __future__ import annotations

import math

import numpy as np

from peerkd.errors import ConfigError, check_choice, check_range
from peerkd.round.contract import ServerContext
from peerkd.student.models import MODELS, build_model, check_modality
from peerkd.student.training import predict_logits, score_logits, train_model
from peerkd.world.build import World
from strategies.base import LogitDistillation

TEACHER_DATA = ("server", "pool")  # strategy.teacher_data


def default_teacher(input_shape: tuple[int, ...], text: bool = False) -> str:
    """``cnn_large`` for images and sequences, ``mlp256x2`` for flat features, ``tlm_large`` for text."""
    if text:
        return "tlm_large"
    return "cnn_large" if len(input_shape) in (2, 3) else "mlp256x2"


class TeacherDistillation(LogitDistillation):
    """Every client distills from one server-trained teacher's soft labels."""

    name = "teacher"
    wants_logits = False
    stacks = True

    def __init__(
        self,
        alpha: float = 1.0,
        temperature: float = 0.0,
        teacher: str = "auto",
        teacher_epochs: int = 30,
        teacher_data: str = "server",
    ):
        super().__init__(alpha, temperature)
        self.model_name = check_choice("strategy.teacher", teacher, ("auto", *MODELS))
        self.epochs = int(check_range("strategy.teacher_epochs", teacher_epochs, 1))
        self.data_source = check_choice("strategy.teacher_data", teacher_data, TEACHER_DATA)

    def teacher_data(self, world: World) -> tuple[np.ndarray, np.ndarray]:
        """What the teacher trains on: the labelled ``server`` split, or ``pool`` (it and the
        private rows no client holds); never client data, never the transfer set's labels."""
        if self.data_source == "server":
            return world.split("server")
        held = world.splits.pool[np.concatenate(world.partitions)]
        spare = np.setdiff1d(world.splits.pool, held)
        idx = np.concatenate([world.splits.server, spare])
        return world.data.x[idx], world.data.y[idx]

    def members(self) -> int:
        """How many teachers are trained (seeds seed, seed+1, ...); their logits are averaged."""
        return 1

    def setup(self, ctx: ServerContext) -> dict[str, float]:
        super().setup(ctx)
        world = ctx.world
        name = self.model_name
        if name == "auto":
            name = default_teacher(world.data.input_shape, world.data.text)
        check_modality(name, world.data.text, field="strategy.teacher")
        x, y = self.teacher_data(world)
        if len(x) == 0:
            raise ConfigError(
                "data.server_frac",
                f"the {self.name} rule needs labelled teacher data, but the split is empty",
                "a fraction > 0",
            )
        test_logits, transfer_logits = [], []
        for k in range(self.members()):
            teacher = build_model(
                name, world.data.input_shape, world.num_classes, seed=ctx.seed + k, field="strategy.teacher"
            )
            train_model(
                teacher,
                x,
                y,
                epochs=self.epochs,
                lr=ctx.lr,
                batch_size=ctx.batch_size,
                seed=ctx.seed + k,
                device=ctx.device,
            )
            test_logits.append(predict_logits(teacher, world.split("test")[0], device=ctx.device))
            transfer_logits.append(predict_logits(teacher, world.transfer_x, device=ctx.device))
        self.targets = np.mean(transfer_logits, axis=0).astype(np.float32)
        mean_logits, test_y = np.mean(test_logits, axis=0), world.split("test")[1]
        acc = float((mean_logits.argmax(axis=1) == test_y.reshape(-1)).mean())
        self.resolved_model = name
        return {
            "teacher_acc": acc,
            **({"teacher_ppl": math.exp(score_logits(mean_logits, test_y)[1])} if world.data.text else {}),
            "teacher_model": name,
            "teacher_members": self.members(),
            "teacher_train_size": len(x),
            "teacher_data": self.data_source,
        }

    def targets_for(self, node_ids: list[int]) -> dict[int, np.ndarray | None]:
        return {n: self.targets for n in node_ids}
