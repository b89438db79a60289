"""Oracle teacher: teacher-guided distillation where the teacher trains on the pooled
private data of all clients. NOT PRIVATE: raw client data would have to leave the
clients. It is an upper bound for what a teacher can give, reported as non-private
everywhere (``"private": false`` in summaries)."""

from __future__ import annotations

import numpy as np

from peerkd.errors import ConfigError
from peerkd.world.build import World
from strategies.teacher import TeacherDistillation


class OracleTeacher(TeacherDistillation):
    """Teacher trained on every client's private shard (a non-private upper bound)."""

    name = "oracle"
    private = False

    def teacher_data(self, world: World) -> tuple[np.ndarray, np.ndarray]:
        if self.data_source != "server":
            raise ConfigError("strategy.teacher_data", "oracle's teacher trains on the clients' shards", ["server"])
        idx = world.splits.pool[np.concatenate(world.partitions)]
        return world.data.x[idx], world.data.y[idx]
